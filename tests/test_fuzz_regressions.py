"""Replays the fuzz seed corpus and every crash reproducer the fuzzers ever found
(fuzz/regressions/<target>/) through the same entry points as fuzz/*.c and fuzz/*.py.

The reproducers found so far were undefined behaviour (pointer arithmetic on NULL for an
empty tensor or zip entry name) that only a sanitizer notices: scripts/sanitize-tests.sh runs
this file against the ASan+UBSan build, where they abort if the bug comes back. In the normal
build they check the outcome is a value or a FormatError, never anything else.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from shardscan import pickle_reader
from shardscan.formats import dcp
from shardscan.formats.torch_pickle import TORCH_POLICY
from shardscan._core import NativeFile, ffi, lib
from shardscan.errors import FormatError

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"


def inputs(target: str) -> list[Path]:
    return sorted(p for d in ("corpus", "regressions") for p in (FUZZ / d / target).glob("*") if p.is_file())


def is_known_status(status: int) -> bool:
    # Every outcome is one of the core's statuses (SS_STATUS_LIST), never a stray value.
    return ffi.string(lib.ss_strerror(status)) != b"unknown status"


def core_listing(path: Path, parse, free, ctype: str) -> int:
    with NativeFile(path) as f:
        listing = ffi.new(ctype)
        err = ffi.new("ss_error *")
        status = parse(f.handle, listing, err)
        free(listing)
        return status


@pytest.mark.parametrize("path", inputs("safetensors"), ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_safetensors_inputs(path):
    status = core_listing(path, lib.ss_st_parse, lib.ss_st_listing_free, "ss_st_listing *")
    assert is_known_status(status)


@pytest.mark.parametrize("path", inputs("zip"), ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_zip_inputs(path):
    assert is_known_status(core_listing(path, lib.ss_zip_parse, lib.ss_zip_listing_free, "ss_zip_listing *"))
    assert is_known_status(core_listing(path, lib.ss_zip_walk_local, lib.ss_zip_listing_free, "ss_zip_listing *"))


@pytest.mark.parametrize("path", inputs("pickle"), ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_pickle_inputs(path):
    try:
        list(pickle_reader.iter_leaves(pickle_reader.load(path.read_bytes(), TORCH_POLICY)))
    except FormatError:
        pass


@pytest.mark.parametrize("path", inputs("dcp"), ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_dcp_inputs(path, tmp_path):
    shutil.copy(path, tmp_path / ".metadata")
    try:
        dcp.read_dir(tmp_path, "ckpt")
    except (FormatError, OSError):
        pass


def test_corpus_present():
    # make_corpus.py output is kept in the repo; an empty folder would make the fuzzers blind.
    for target in ("safetensors", "zip", "pickle", "dcp"):
        assert list((FUZZ / "corpus" / target).iterdir()), target
