"""Hostile safetensors files (tests/hostile/make_safetensors.py): one per validation rule.

How errors are asserted: the core's status numbers are the stable codes (csrc/shardscan.h pins
them; this test reads them from that X-macro list). At the C boundary each file must give its
case's exact status. At the Python boundary (scan_paths, the CLI) exceptions do not carry the
number, so each case names a fragment of the message only its failure site writes. The real
`safetensors` library is the oracle that the file really is invalid.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

import shardscan
from shardscan._core import NativeFile, ffi, lib

sys.path.insert(0, str(Path(__file__).parent))
from hostile.make_safetensors import CASES, VALID, write_all  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STATUS = {name: int(num) for name, num in re.findall(r"X\((SS_\w+),\s*(\d+),", (ROOT / "csrc/shardscan.h").read_text())}


def core_parse(path: Path) -> tuple[int, str]:
    """ss_st_parse's status and message for one file, straight from the core."""
    with NativeFile(path) as f:
        listing = ffi.new("ss_st_listing *")
        err = ffi.new("ss_error *")
        status = lib.ss_st_parse(f.handle, listing, err)
        lib.ss_st_listing_free(listing)
        return status, ffi.string(err.message).decode("utf-8", "replace")


def reference_opens(path: Path) -> bool:
    """True when safetensors 0.8 opens the file and hands back every tensor."""
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                f.get_tensor(key)
        return True
    except Exception:  # the reference raises SafetensorError, sometimes other types
        return False


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("hostile")
    write_all(directory)
    return directory


def test_base_file_is_valid(tmp_path):
    # Every case is one edit away from VALID, so VALID itself must pass everywhere.
    path = tmp_path / "valid.safetensors"
    path.write_bytes(VALID)
    assert core_parse(path) == (0, "")
    assert reference_opens(path)
    assert shardscan.scan(path).num_rows == 1


def test_every_safetensors_status_has_a_hostile_file():
    st_statuses = {name for name in STATUS if name.startswith("SS_E_ST_")}
    covered = {case.status for case in CASES}
    assert st_statuses <= covered, f"no hostile file for {sorted(st_statuses - covered)}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_core_reports_its_own_status(case, hostile_dir):
    path = hostile_dir / f"{case.name}.safetensors"
    status, message = core_parse(path)
    assert status == STATUS[case.status], message
    assert str(path) not in message, "the core says what is wrong; the caller names the file"
    assert case.message in message
    assert "\n" not in message


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_reference_agrees_the_file_is_invalid(case, hostile_dir):
    path = hostile_dir / f"{case.name}.safetensors"
    if case.reference == "accepts":
        # safetensors is more lenient here (see the case's note); shardscan still refuses.
        assert reference_opens(path), f"safetensors now rejects {case.name}: drop the exception"
    else:
        assert not reference_opens(path)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_scan_reports_the_file_and_keeps_going(case, hostile_dir, tmp_path):
    # One hostile file beside a good one: the hostile one is a problem with its own
    # message, the good one is still scanned.
    good = tmp_path / "good.safetensors"
    good.write_bytes(VALID)
    bad = hostile_dir / f"{case.name}.safetensors"
    result = shardscan.scan_paths([bad, good])
    assert [p.file for p in result.problems] == [str(bad)]
    assert (case.said or case.message) in result.problems[0].error
    good_rows = [r for r in result.table.to_pylist() if r["file"] == str(good)]
    assert len(good_rows) == 1 and good_rows[0]["checksum"] is not None
    # No row of the bad file may look good, except intact tensors of a truncated file
    # (none here: the only tensor is the one cut short).
    assert all(r["file"] != str(bad) for r in result.table.to_pylist())


def test_strict_scan_raises_format_error(hostile_dir):
    for case in CASES:
        with pytest.raises(shardscan.FormatError):
            shardscan.scan(hostile_dir / f"{case.name}.safetensors")


def test_cli_one_line_per_hostile_file(hostile_dir):
    # The real command over the whole folder: exit 1 (problems found), one FAILED line per
    # file naming it, no traceback.
    run = subprocess.run([sys.executable, "-m", "shardscan", "scan", str(hostile_dir)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    failed = [line for line in run.stdout.splitlines() if ": FAILED " in line]
    assert sorted(line.split(": FAILED ")[0] for line in failed) == sorted(f"{c.name}.safetensors" for c in CASES)
