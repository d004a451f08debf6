"""What a new user trips over, each held to its decision: scans of several directories name
files by directory, a text file is no layout source, a truncated DCP file is one problem,
one side of a diff can lose its prefix, and a path that holds no checkpoint is one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import producers
import shardscan
from shardscan.cli import app

runner = CliRunner()


def two_checkpoints(tmp_path: Path) -> tuple[Path, Path]:
    out = []
    for name in ("a", "b"):
        directory = tmp_path / name
        directory.mkdir()
        save_file({"w": torch.ones(2, 2), "v": torch.zeros(3)}, directory / "model.safetensors")
        out.append(directory)
    return out[0], out[1]


def test_scanning_two_directories_names_files_under_their_directory(tmp_path: Path) -> None:
    a, b = two_checkpoints(tmp_path)
    table = shardscan.scan([a, b])
    pairs = list(zip(table.column("file").to_pylist(), table.column("key").to_pylist()))
    assert len(set(pairs)) == len(pairs) == 4
    assert {f for f, _ in pairs} == {f"{a}/model.safetensors", f"{b}/model.safetensors"}
    assert set(shardscan.scan(a).column("file").to_pylist()) == {"model.safetensors"}  # one: relative


def test_a_text_file_is_no_layout_source(tmp_path: Path) -> None:
    a, _ = two_checkpoints(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("remember to save\n")
    run = subprocess.run([sys.executable, "-m", "shardscan", "check", str(a), "--against", str(notes)],
                         capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and "not a layout source" in run.stderr and not run.stdout


def test_a_file_that_is_no_checkpoint_is_one_line(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    for path, why in ((notes, "not a safetensors"), (empty, "no tensor files found")):
        result = runner.invoke(app, ["check", str(path)])
        assert result.exit_code == 1
        assert result.output.splitlines() == [f"{path}: FAILED {result.output.split('FAILED ', 1)[1].strip()}"]
        assert why in result.output


def test_one_side_of_a_diff_loses_its_prefix(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    torch.save({"model": model.state_dict()}, tmp_path / "wrapped.pt")
    save_file(model.state_dict(), tmp_path / "bare.safetensors")
    assert not shardscan.diff(tmp_path / "wrapped.pt", tmp_path / "bare.safetensors").ok
    same = shardscan.diff(tmp_path / "wrapped.pt", tmp_path / "bare.safetensors", strip_prefix_a="model.")
    assert same.ok and same.unchanged == 2
    result = runner.invoke(app, ["diff", str(tmp_path / "bare.safetensors"), str(tmp_path / "wrapped.pt"),
                                 "--strip-prefix-b", "model."])
    assert result.exit_code == 0, result.output


def test_a_truncated_dcp_file_is_one_problem(dcp_two_rank_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = producers.copy_checkpoint(dcp_two_rank_checkpoint, tmp_path / "step_2")
    producers.truncate_at(checkpoint / "__1_0.distcp", 0.3)
    report = shardscan.check(checkpoint)
    assert len(report.errors) == 1, [e.error for e in report.errors]
    [error] = report.errors
    assert error.error.startswith("__1_0.distcp is truncated") and len(error.lost) > 1
    assert set(error.lost) <= set(report.missing)
    # the framework agrees the checkpoint is damaged
    outcome = producers.dcp_two_rank_resume([checkpoint])
    assert outcome.failed == checkpoint


@pytest.mark.parametrize("flag", ["--version"])
def test_version(flag: str) -> None:
    result = runner.invoke(app, [flag])
    assert result.exit_code == 0 and result.output.strip().endswith(shardscan.__version__)
