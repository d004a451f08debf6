"""What a new user meets first: --version, plain words for counts, where each line goes,
the files written, Ctrl-C, and hints for what is not installed."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from typer.testing import CliRunner

import shardscan
from shardscan.cli import app

ROOT = Path(__file__).resolve().parents[1]
PROJECT_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
runner = CliRunner()


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shardscan", *args], capture_output=True, text=True, timeout=120, **kwargs)


@pytest.fixture()
def one_file(tmp_path: Path) -> Path:
    save_file({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, tmp_path / "model.safetensors")
    return tmp_path / "model.safetensors"


def test_version_is_the_project_version():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout == f"shardscan {PROJECT_VERSION}\n" and proc.stderr == ""
    assert shardscan.__version__ == PROJECT_VERSION


def test_latest_json_names_the_pick_and_what_was_passed_over(tmp_path):
    import checkpoint_trees as trees

    out = tmp_path / "out"
    trees.trainer_checkpoint(out, 1, trees.state_dict(1))
    newest = trees.trainer_checkpoint(out, 2, trees.state_dict(2))
    trees.truncate(newest / "model-00001-of-00002.safetensors", 100)
    proc = run_cli("latest", str(out), "--json")
    assert proc.returncode == 0 and proc.stderr == ""
    payload = json.loads(proc.stdout)
    assert payload["ok"] is True and payload["path"] == str(out / "checkpoint-1") and payload["reason"] is None
    [rejected] = payload["rejected"]
    assert rejected["path"] == str(newest) and rejected["problem"].startswith("model-00001-of-00002.safetensors: ")


def test_latest_json_without_a_clean_checkpoint_is_exit_1_and_still_one_object(tmp_path):
    result = runner.invoke(app, ["latest", str(tmp_path), "--json"])
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload == {"ok": False, "root": str(tmp_path), "path": None, "reason": f"{tmp_path}: no checkpoints found", "rejected": []}


def test_scan_list_keeps_stdout_for_the_rows(one_file):
    proc = run_cli("scan", str(one_file), "--list")
    assert proc.returncode == 0
    [row] = proc.stdout.splitlines()
    assert row.endswith("model.safetensors:w") and row.split()[1:3] == ["float32", "[2,3]"]
    assert re.match(r"1 files?, 1 tensors?, 24 B", proc.stderr)


def test_output_dash_writes_csv_on_stdout_and_everything_else_on_stderr(one_file, tmp_path):
    import pyarrow.csv as csv
    import pyarrow.parquet as pq

    proc = subprocess.run([sys.executable, "-m", "shardscan", "scan", str(one_file), "-o", "-"], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    streamed = csv.read_csv(pa_buffer(proc.stdout))
    run_cli("scan", str(one_file), "-o", str(tmp_path / "t.parquet"))
    written = pq.read_table(tmp_path / "t.parquet")
    assert streamed.column("key").to_pylist() == written.column("key").to_pylist() == ["w"]
    assert streamed.column("checksum").to_pylist() == written.column("checksum").to_pylist()
    assert re.match(r"1 files?, 1 tensors?", proc.stderr.decode())
    assert not (tmp_path / "-").exists()


def pa_buffer(data: bytes):
    import pyarrow as pa

    return pa.BufferReader(data)


@pytest.mark.parametrize("other", ["--json", "--list"])
def test_output_dash_with_another_stdout_writer_is_a_usage_error(one_file, other):
    result = runner.invoke(app, ["scan", str(one_file), "-o", "-", other])
    assert result.exit_code == 2 and "cannot go with --json or --list" in result.output


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_honour_the_umask(one_file, tmp_path, umask, mode):
    out = tmp_path / "manifest.parquet"
    proc = subprocess.run([sys.executable, "-m", "shardscan", "scan", str(one_file), "-o", str(out)],
                          capture_output=True, text=True, timeout=120, preexec_fn=lambda: os.umask(umask))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(out.stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_a_replaced_file_keeps_its_mode_and_is_swapped_whole(one_file, tmp_path):
    out = tmp_path / "manifest.csv"
    out.write_text("old\n")
    out.chmod(0o640)
    with open(out) as old_reader:  # a reader of the old file keeps it: the new one is renamed over
        result = runner.invoke(app, ["scan", str(one_file), "-o", str(out)])
        assert result.exit_code == 0
        assert old_reader.read() == "old\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert out.read_text().startswith('"file","key"')


def test_plural_agrees_with_the_count():
    from shardscan.report import plural

    assert [plural(n, "file") for n in (0, 1, 2)] == ["0 files", "1 file", "2 files"]
    assert plural(1, "match", "matches") == "1 match" and plural(3, "match", "matches") == "3 matches"


def test_one_of_everything_reads_in_the_singular(one_file, tmp_path):
    proc = run_cli("scan", str(one_file))
    # A tiny scan shows its time but no rate: at this size the rate would be start-up noise.
    assert re.fullmatch(r"1 file, 1 tensor, 24 B in \d+\.\d\d s\n", proc.stdout), proc.stdout

    other = tmp_path / "other"
    other.mkdir()
    save_file({"w": np.ones((2, 3), np.float32)}, other / "model.safetensors")
    diff = run_cli("diff", str(one_file), str(other / "model.safetensors"))
    assert diff.returncode == 1
    assert "DIFFERENT 1 difference (0 tensors unchanged)" in diff.stdout.splitlines()[-1]

    check = run_cli("check", str(one_file))
    assert "(1 file, 1 tensor, 24 B" in check.stdout

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(one_file.read_bytes()[:-4])
    proc = run_cli("scan", str(broken))
    assert proc.returncode == 1 and proc.stdout.splitlines()[-1].endswith("; 1 file with problems")


def test_a_long_enough_scan_shows_its_rate(one_file):
    import dataclasses

    from shardscan.cli import _summary
    from shardscan.scanner import scan_paths

    result = scan_paths([one_file])
    assert "GB/s" not in _summary(dataclasses.replace(result, elapsed=0.01))
    # 24 bytes in 2 s, as if the disk were that slow: the time now means something.
    assert _summary(dataclasses.replace(result, elapsed=2.0)).endswith("in 2.00 s, 0.00 GB/s")


def test_dir_shows_the_lazily_loaded_api_without_loading_it():
    code = ("import sys, shardscan; names = dir(shardscan); "
            "print(sorted(set(shardscan.__all__) - set(names)), 'shardscan.scanner' in sys.modules, 'pyarrow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["[]", "False", "False"], proc.stdout + proc.stderr
    assert all(getattr(shardscan, name) is not None for name in shardscan.__all__)


def interrupted_at_import_of(module: str, *args: str) -> subprocess.CompletedProcess:
    """The console script (`from shardscan.cli import run; run()`) with a real SIGINT
    delivered the moment `module` starts loading, as a Ctrl-C at that instant would."""
    code = (
        "import signal, sys\n"
        "class CtrlC:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name == {module!r}:\n"
        "            sys.meta_path.remove(self)\n"
        "            signal.raise_signal(signal.SIGINT)\n"
        "sys.meta_path.insert(0, CtrlC())\n"
        f"sys.argv = ['shardscan', *{list(args)!r}]\n"
        "from shardscan.cli import run\n"
        "run()\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_ctrl_c_during_start_up_is_one_line_and_exit_130(one_file):
    proc = interrupted_at_import_of("typer", "scan", str(one_file))
    assert (proc.returncode, proc.stderr, proc.stdout) == (130, "shardscan: interrupted\n", "")


def test_ctrl_c_during_a_command_is_exit_130_not_typers_abort(one_file, tmp_path):
    (tmp_path / "out").mkdir()
    proc = interrupted_at_import_of("shardscan.output", "scan", str(one_file), "-o", str(tmp_path / "out" / "m.parquet"))
    assert (proc.returncode, proc.stderr, proc.stdout) == (130, "shardscan: interrupted\n", "")
    assert list((tmp_path / "out").iterdir()) == []


def test_check_model_without_torch_names_the_extra(one_file):
    # torch made unimportable in this process only, as on a machine without the extra.
    code = ("import sys; sys.modules['torch'] = None\n"
            f"sys.argv = ['shardscan', 'check', {str(one_file)!r}, '--model', 'mymodels:build']\n"
            "from shardscan.cli import main\nmain()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == "shardscan: torch is not installed: pip install 'shardscan[torch]' (or drop --model)\n"
