"""The C core compiles warning-free: every csrc/*.c with -Wall -Wextra -Werror."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"
SOURCES = sorted(CSRC.glob("*.c"))


def test_sources_found():
    assert {"file.c", "safetensors.c", "hash.c"} <= {p.name for p in SOURCES}


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_compiles_without_warnings(source):
    # build.py's flags (-std=c11 -pthread -O2), compiled for real: the warnings that need the
    # optimizer (maybe-uninitialized, array bounds) are not produced by -fsyntax-only.
    run = subprocess.run(
        ["gcc", "-std=c11", "-O2", "-pthread", "-Wall", "-Wextra", "-Werror", "-c", "-o", "/dev/null", f"-I{CSRC}",
         str(source)],
        capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang not installed")
def test_fuzz_targets_build_without_warnings():
    # fuzz/run.sh's own build (-Wall -Wextra -Werror), so its flags cannot drift from this test.
    run = subprocess.run([str(CSRC.parent / "fuzz" / "run.sh"), "--build-only"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "warning" not in run.stdout + run.stderr
