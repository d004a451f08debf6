"""What a new user meets first: --version, plain words for counts, where each line goes,
the files written, Ctrl-C, and hints for what is not installed."""

from __future__ import annotations

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
