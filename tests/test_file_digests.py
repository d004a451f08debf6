"""Whole-file SHA-256 and XXH3-128 (csrc/digest.c through _core.file_digests), against
hashlib.sha256 and the `xxhash` package over the same bytes."""

from __future__ import annotations

import hashlib
import os

import pytest
import xxhash

from shardscan._core import NativeFile, file_digests
from shardscan.errors import IntegrityError

MiB = 1 << 20


def expected(path) -> tuple[str, str, int]:
    data = open(path, "rb").read()
    return hashlib.sha256(data).hexdigest(), xxhash.xxh3_128(data).hexdigest(), len(data)


@pytest.fixture
def files(tmp_path):
    """Files around the engine's sizes: empty, one byte, one 256 KiB chunk and a byte more,
    and past two 8 MiB windows."""
    sizes = {"empty": 0, "one": 1, "small": 1000, "chunk": 256 << 10, "chunk-plus": (256 << 10) + 1,
             "windows": 2 * 8 * MiB + 12345}
    paths = []
    for name, size in sizes.items():
        path = tmp_path / name
        path.write_bytes(os.urandom(size))
        paths.append(path)
    return paths


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_digests_match_hashlib_and_xxhash(files, threads):
    seen = []
    results = file_digests(files, threads=threads, progress=seen.append)
    assert [(r.sha256, r.xxh3, r.size) for r in results] == [expected(p) for p in files]
    assert [r.path for r in results] == [str(p) for p in files] and all(r.error is None for r in results)
    assert seen[-1] == sum(p.stat().st_size for p in files)


def test_sha256_alone_matches_hashlib(files):
    # what a published digest is checked against: XXH3 is not computed at all
    results = file_digests(files, threads=2, xxh3=False)
    assert [(r.sha256, r.xxh3, r.size) for r in results] == [(expected(p)[0], None, expected(p)[2]) for p in files]


def test_unreadable_entries_fail_alone(files, tmp_path):
    missing, directory = tmp_path / "missing", tmp_path / "folder"
    directory.mkdir()
    results = file_digests([missing, files[2], directory])
    assert isinstance(results[0].error, OSError) and results[0].sha256 is None and results[0].size is None
    assert isinstance(results[2].error, OSError) and "directory" in str(results[2].error)
    assert (results[1].sha256, results[1].xxh3, results[1].size) == expected(files[2])


def test_open_native_files_are_used_and_left_open(files):
    with NativeFile(files[-1]) as f:
        (r,) = file_digests([f])
        assert (r.sha256, r.xxh3, r.size) == expected(files[-1])
        assert f.read(0, 4) == files[-1].read_bytes()[:4]
    assert file_digests([]) == []


def test_a_file_that_shrank_under_its_mapping_fails_cleanly(files, tmp_path):
    path = tmp_path / "cut"
    path.write_bytes(os.urandom(4 * MiB))
    with NativeFile(path) as f:
        os.truncate(path, 4096)  # the mapping still covers 4 MiB: reading past 4 KiB faults
        cut, whole = file_digests([f, files[-1]], threads=2)
    assert isinstance(cut.error, IntegrityError) and "shrank while being read" in str(cut.error)
    assert str(path) in str(cut.error)
    assert (cut.sha256, cut.xxh3) == (None, None)
    assert (whole.sha256, whole.xxh3, whole.size) == expected(files[-1])


def test_a_file_cut_mid_read_fails_cleanly(tmp_path):
    # Sparse, so it costs no disk; cut by the progress callback, which runs on this thread while
    # the digest runs on another, once some bytes are read and others are not.
    path = tmp_path / "big"
    size = 512 * MiB
    with open(path, "wb") as f:
        f.truncate(size)
    fired = []

    def cut(done: int) -> None:
        if not fired and 0 < done < size:
            os.truncate(path, MiB)
            fired.append(done)

    (r,) = file_digests([path], threads=1, progress=cut)
    if not fired:
        pytest.skip("the digest finished before the first progress report")
    assert isinstance(r.error, IntegrityError) and r.sha256 is None

