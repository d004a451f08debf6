"""Archives that torch's zip reader resolves differently from a by-the-spec one are refused.

torch.load reads records through miniz, which picks the last end-record signature whatever
its comment length says, matches names ignoring ASCII case, and leaves undecodable names to
fail in Python; torch.load itself only calls a file a zip when it starts with a local header.
Each case (tests/hostile/make_zips.py) is built from real torch.save output. For each, the
first test shows what torch.load(weights_only=True) really does with it: load other tensors
than the directory shardscan checks describes, or refuse the file. The others show that
shardscan refuses it: the core's own status, and `shardscan check` exiting 1 with a line that
names the ambiguity (docs/robustness.md, "Differentials with torch").
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hostile.make_zips import UNREAD, Case, cases, dcp_checkpoint, legacy_then_zip, stored_zip, torch_records
from shardscan._core import NativeFile, ffi, lib
from shardscan.cli import app

ROOT = Path(__file__).resolve().parents[1]
STATUS = {name: int(num) for name, num in re.findall(r"X\((SS_\w+),\s*(\d+),", (ROOT / "csrc/shardscan.h").read_text())}
CASES = cases()
runner = CliRunner()


def by_name(case: Case) -> str:
    return case.name


def torch_outcome(data: bytes) -> dict | Exception:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(io.BytesIO(data), weights_only=True)
        except Exception as e:  # torch refuses with RuntimeError, UnicodeDecodeError, KeyError...
            return e


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def core_parse(path: Path) -> tuple[int, str]:
    """ss_zip_parse's status and message, straight from the core."""
    with NativeFile(path) as f:
        listing = ffi.new("ss_zip_listing *")
        err = ffi.new("ss_error *")
        status = lib.ss_zip_parse(f.handle, listing, err)
        lib.ss_zip_listing_free(listing)
        return status, ffi.string(err.message).decode("utf-8", "replace")


@pytest.mark.parametrize("case", CASES, ids=by_name)
def test_what_torch_does_with_it(case):
    outcome = torch_outcome(case.data)
    if case.torch_loads is None:
        assert isinstance(outcome, Exception), outcome
    elif case.torch_loads == UNREAD:
        assert isinstance(outcome, dict), outcome
        assert not same_tensors(outcome, case.ours), outcome
    else:
        assert isinstance(outcome, dict), outcome
        assert same_tensors(outcome, case.torch_loads), outcome


def test_which_case_twin_torch_loads_depends_on_where_it_sits():
    # The same two records, one place apart in the directory: torch loads the other tensors
    # in one order and ours in the other, so no reader of either name alone can be sure.
    after, before = (next(c for c in CASES if c.name == f"storage_twin_in_capitals_{w}") for w in ("after", "before"))
    loaded_after, loaded_before = torch_outcome(after.data), torch_outcome(before.data)
    assert not same_tensors(loaded_after, after.ours) and same_tensors(loaded_before, before.ours)


@pytest.mark.parametrize("case", CASES, ids=by_name)
def test_core_refuses_with_its_status(case, tmp_path):
    path = tmp_path / f"{case.name}.pt"
    path.write_bytes(case.data)
    status, message = core_parse(path)
    assert status == STATUS[case.status], message
    assert case.message in message
    assert str(tmp_path) not in message  # the core never names the file; callers do


@pytest.mark.parametrize("case", CASES, ids=by_name)
def test_check_names_the_ambiguity(case, tmp_path):
    path = tmp_path / f"{case.name}.pt"
    path.write_bytes(case.data)
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == 1, result.output
    failed = [line for line in result.stdout.splitlines() if line.startswith(f"{path}: FAILED ")]
    assert any((case.cli_message or case.message) in line for line in failed), result.stdout


def test_real_process_one_failed_line_per_file(tmp_path):
    for case in CASES:
        (tmp_path / f"{case.name}.pt").write_bytes(case.data)
    run = subprocess.run([sys.executable, "-m", "shardscan", "scan", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    failed = sorted(line.split(": FAILED ")[0] for line in run.stdout.splitlines() if ": FAILED " in line)
    assert failed == sorted(f"{c.name}.pt" for c in CASES)


def load_with_dcp(directory: Path, like: dict) -> dict:
    import torch.distributed.checkpoint as dcp

    loaded = {k: torch.zeros_like(v) for k, v in like.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one process, no process group
        dcp.load(loaded, checkpoint_id=str(directory))
    return loaded


@pytest.mark.parametrize("legacy_first", [False, True], ids=["zip", "legacy-then-zip"])
def test_dcp_chunk_that_torch_loads_as_a_legacy_file(tmp_path, legacy_first):
    # A DCP chunk is a byte range that torch.load reads on its own, so the CLI's sniffing of
    # a file's first bytes never sees it: only the core's start rule stands between a chunk
    # torch unpickles as a legacy file and a checksum of the zip behind it.
    ours, other = torch.arange(4, dtype=torch.float32), -torch.arange(4, dtype=torch.float32)
    archive = stored_zip(torch_records(ours))
    if legacy_first:
        archive = legacy_then_zip(other, torch_records(ours))
    dcp_checkpoint(tmp_path / "ckpt", "w", ours, archive)
    assert torch.equal(load_with_dcp(tmp_path / "ckpt", {"w": ours})["w"], other if legacy_first else ours)
    result = runner.invoke(app, ["check", str(tmp_path / "ckpt")])
    if legacy_first:
        assert result.exit_code == 1, result.output
        assert "not a zip local header" in result.stdout
    else:
        assert result.exit_code == 0, result.output


def test_the_untouched_rebuild_loads_and_checks_clean(tmp_path):
    # The cases' writer is sound: the unchanged records, rebuilt, are what torch saved and
    # what shardscan passes, so each refusal above comes from the one change.
    state = {"w": torch.arange(4, dtype=torch.float32)}
    data = stored_zip(torch_records(state))
    assert same_tensors(torch_outcome(data), state)
    path = tmp_path / "plain.pt"
    path.write_bytes(data)
    assert core_parse(path)[0] == 0
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == 0, result.output
