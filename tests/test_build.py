"""build.py's pre-check: it asks the compiler, so a header is found wherever the compiler
would find it, and every missing header is named with its package in one message."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = runpy.run_path(str(ROOT / "build.py"))
PROBE = (("shardscan_probe_only_here.h", "probe", "libprobe-dev"),)
SEARCH_VARIABLES = ("CFLAGS", "CPPFLAGS", "C_INCLUDE_PATH", "CPATH")


@pytest.fixture()
def clean_search_path(monkeypatch):
    for name in SEARCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("variable", SEARCH_VARIABLES)
def test_a_header_is_found_wherever_the_compiler_looks(tmp_path, clean_search_path, variable):
    (tmp_path / PROBE[0][0]).write_text("#define PROBE 1\n")
    assert BUILD["missing_headers"](PROBE) == [(PROBE[0][0], "libprobe-dev")]
    clean_search_path.setenv(variable, f"-I{tmp_path}" if variable.endswith("FLAGS") else str(tmp_path))
    assert BUILD["missing_headers"](PROBE) == []


def test_every_missing_header_is_named_in_one_message(clean_search_path, capsys):
    libraries = (*PROBE, ("shardscan_absent_too.h", "absent", "libabsent-dev"), ("xxhash.h", "xxhash", "libxxhash-dev"))
    with pytest.raises(SystemExit) as stop:
        BUILD["require_headers"](libraries)
    message = str(stop.value.code)
    assert "\n" not in message
    assert "shardscan_probe_only_here.h, shardscan_absent_too.h" in message
    assert message.endswith("apt-get install libprobe-dev libabsent-dev")
    assert "xxhash" not in message  # present, so not named


def test_the_real_build_names_both_libraries_when_the_compiler_sees_no_system_headers():
    # -nostdinc takes /usr/include away from the compiler: both system libraries are missing.
    env = {k: v for k, v in os.environ.items() if k not in SEARCH_VARIABLES}
    proc = subprocess.run([sys.executable, "build.py"], cwd=ROOT, capture_output=True, text=True,
                          env=dict(env, CFLAGS="-nostdinc"), timeout=60)
    assert proc.returncode == 1
    libraries = BUILD["SYSTEM_LIBRARIES"]
    assert proc.stderr.strip() == (
        f"shardscan: the C compiler cannot find {', '.join(h for h, _, _ in libraries)}; "
        f"install them first: apt-get install {' '.join(p for _, _, p in libraries)}"
    )


def test_set_up_scripts_read_the_same_list():
    proc = subprocess.run([sys.executable, "build.py", "--system-libraries"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert [tuple(line.split()) for line in proc.stdout.splitlines()] == list(BUILD["SYSTEM_LIBRARIES"])
