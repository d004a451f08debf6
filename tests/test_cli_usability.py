"""What a new user meets first: --version, plain words for counts, where each line goes,
the files written, Ctrl-C, and hints for what is not installed."""

from __future__ import annotations

import json
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
