"""The hashing engine's job contract, through _core.hash_jobs and cffi directly.

Bad jobs fail alone, with SS_E_ARGUMENT (or SS_E_RANGE for bytes outside the file) and a
message, and read nothing; good strided and byte-swapped jobs hash the bytes numpy produces
for the same view (the oracle is numpy's own stride arithmetic plus the `xxhash` package)."""

from __future__ import annotations


import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from shardscan._core import HashJob, NativeFile, Segment, ffi, hash_jobs, lib

DATA = np.random.default_rng(7).integers(0, 256, 1 << 16, dtype=np.uint8).tobytes()


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("hash") / "data.bin"
    path.write_bytes(DATA)
    with NativeFile(path) as f:
        yield f


def xxh(b: bytes) -> str:
    return xxhash.xxh3_128(b).hexdigest()


def logical_bytes(offset: int, shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int, swap: bool) -> bytes:
    """The view's elements in row-major order, each reversed when `swap`, by numpy."""
    raw = np.frombuffer(DATA, dtype=np.uint8)
    view = np.lib.stride_tricks.as_strided(raw[offset:], shape=shape + (itemsize,), strides=strides + (1,))
    if swap:
        view = view[..., ::-1]
    return np.ascontiguousarray(view).tobytes()


def run_raw(f: NativeFile, fill) -> tuple[int, str]:
    """One job built field by field through cffi: (status, message)."""
    handles = ffi.new("ss_file *[]", [f.handle])
    job = ffi.new("ss_job[]", 1)
    keep = fill(job[0])
    assert lib.ss_hash_batch(handles, 1, job, 1, 1, ffi.NULL) == lib.SS_OK
    del keep
    return job[0].status, ffi.string(job[0].message).decode()


# Each row: what is wrong with the job, the status, a word of the message.
BAD_JOBS = [
    # byte-swapped run of 7 bytes in 4-byte elements: the swap would read 1 byte past the run
    (HashJob(file=0, offset=100, nbytes=7, itemsize=4, byteswap=True), lib.SS_E_ARGUMENT, "whole number of 4-byte"),
    # the same at the very end of the file, where reading past the run leaves the mapping
    (HashJob(file=0, offset=len(DATA) - 6, nbytes=6, itemsize=4, byteswap=True), lib.SS_E_ARGUMENT, "whole number"),
    # swap of 3-byte elements: not a size any dtype has
    (HashJob(file=0, offset=0, nbytes=6, itemsize=3, byteswap=True), lib.SS_E_ARGUMENT, "must be 2, 4, 8 or 16"),
    # swap of 0-byte and 1-byte elements
    (HashJob(file=0, offset=0, nbytes=8, itemsize=0, byteswap=True), lib.SS_E_ARGUMENT, "must be 2, 4, 8 or 16"),
    (HashJob(file=0, offset=0, nbytes=8, itemsize=1, byteswap=True), lib.SS_E_ARGUMENT, "must be 2, 4, 8 or 16"),
    # a plain run that is not whole elements
    (HashJob(file=0, offset=0, nbytes=10, itemsize=8), lib.SS_E_ARGUMENT, "whole number of 8-byte"),
    # strided view with 0-byte elements
    (HashJob(file=0, segments=(Segment(file=0, offset=0, shape=(4,), strides=(8,)),), itemsize=0),
     lib.SS_E_ARGUMENT, "0-byte elements"),
    # negative shape, negative stride
    (HashJob(file=0, segments=(Segment(file=0, offset=0, shape=(-1,), strides=(4,)),), itemsize=4),
     lib.SS_E_ARGUMENT, "must be >= 0"),
    (HashJob(file=0, segments=(Segment(file=0, offset=64, shape=(4,), strides=(-4,)),), itemsize=4),
     lib.SS_E_ARGUMENT, "must be >= 0"),
    # a contiguous segment inside a segment list that is not whole swapped elements
    (HashJob(file=0, segments=(Segment(file=0, offset=0, nbytes=8), Segment(file=0, offset=8, nbytes=5)),
             itemsize=2, byteswap=True), lib.SS_E_ARGUMENT, "segment 1"),
    # a file index past the batch
    (HashJob(file=3, offset=0, nbytes=4), lib.SS_E_ARGUMENT, "names file 3 of 1"),
    # bytes past the end of the file, and an offset + length that wraps around 2^64
    (HashJob(file=0, offset=len(DATA) - 4, nbytes=8), lib.SS_E_RANGE, "outside"),
    (HashJob(file=0, offset=2**64 - 4, nbytes=8), lib.SS_E_RANGE, "outside"),
    # a strided extent past the end
    (HashJob(file=0, segments=(Segment(file=0, offset=0, shape=(2, 3), strides=(len(DATA), 4)),), itemsize=4),
     lib.SS_E_RANGE, "outside"),
    # element count overflowing 64 bits
    (HashJob(file=0, segments=(Segment(file=0, offset=0, shape=(2**62, 2**62), strides=(0, 0)),), itemsize=1),
     lib.SS_E_ARGUMENT, "overflows"),
]


@pytest.mark.parametrize("job,status,word", BAD_JOBS, ids=lambda v: None)
def test_bad_job_fails_alone(data_file, job, status, word):
    good = HashJob(file=0, offset=16, nbytes=64, itemsize=4, byteswap=True)
    bad, ok = hash_jobs([data_file], [job, good], threads=2)
    assert bad.status == status and bad.checksum is None and bad.crc32 is None
    assert word in bad.message and bad.failed_file == 0  # the message says what; failed_file which file
    assert ok.status == 0 and ok.checksum == xxh(logical_bytes(16, (16,), (4,), 4, True))


def test_raw_fields_python_cannot_express(data_file):
    def unknown_flag(job):
        job.nbytes, job.flags = 4, 0x80

    def count_without_list(job):
        job.nsegments = 2

    def too_many_dims(job):
        segs = ffi.new("ss_segment[]", 1)
        segs[0].ndim = lib.SS_MAX_DIMS + 1
        job.segments, job.nsegments, job.itemsize = segs, 1, 1
        return segs

    assert run_raw(data_file, unknown_flag) == (lib.SS_E_ARGUMENT, "job has unknown flags 0x80")
    assert run_raw(data_file, count_without_list) == (lib.SS_E_ARGUMENT, "job has 2 segments but no segment list")
    status, message = run_raw(data_file, too_many_dims)
    assert status == lib.SS_E_ARGUMENT and f"{lib.SS_MAX_DIMS + 1} dimensions" in message


def test_contiguous_swapped_jobs_match_numpy(data_file):
    jobs, expected = [], []
    for itemsize, dtype in ((2, ">i2"), (4, ">f4"), (8, ">f8"), (16, None)):
        for offset, count in ((0, 0), (3, 1), (1000, 2049), (len(DATA) - 16 * itemsize, 16)):
            jobs.append(HashJob(file=0, offset=offset, nbytes=count * itemsize, itemsize=itemsize, byteswap=True))
            if dtype:  # numpy converts the big-endian values itself
                values = np.frombuffer(DATA, dtype=dtype, count=count, offset=offset)
                expected.append(xxh(values.astype(dtype.replace(">", "<")).tobytes()))
            else:
                expected.append(xxh(logical_bytes(offset, (count,), (itemsize,), itemsize, True)))
    assert [r.checksum for r in hash_jobs([data_file], jobs, threads=2)] == expected


def test_torch_views_match(data_file):
    torch = pytest.importorskip("torch")
    base = torch.frombuffer(bytearray(DATA), dtype=torch.float32)
    cases = [base[:1024].view(32, 32).t(), base[:4096].view(16, 16, 16)[::2, 3, 1::3], base[:960].view(8, 10, 12).permute(2, 0, 1)]
    jobs, expected = [], []
    for view in cases:
        strides = tuple(4 * s for s in view.stride())
        jobs.append(HashJob(file=0, segments=(Segment(file=0, offset=4 * view.storage_offset(), shape=tuple(view.shape),
                                                      strides=strides),), itemsize=4))
        expected.append(xxh(view.contiguous().numpy().tobytes()))
    assert [r.checksum for r in hash_jobs([data_file], jobs)] == expected


def test_crc_covers_stored_bytes_of_a_swapped_strided_walk(data_file):
    import zlib

    # A dense strided walk over 64 stored bytes, swapped in 4-byte elements: the CRC is that of
    # the stored bytes, the digest that of the swapped ones.
    job = HashJob(file=0, segments=(Segment(file=0, offset=32, shape=(4, 4), strides=(16, 4)),), itemsize=4,
                  byteswap=True, crc32=True)
    (r,) = hash_jobs([data_file], [job])
    assert r.crc32 == zlib.crc32(DATA[32:96])
    assert r.checksum == xxh(logical_bytes(32, (4, 4), (16, 4), 4, True))


@st.composite
def strided_jobs(draw):
    itemsize = draw(st.sampled_from([1, 2, 4, 8, 16]))
    swap = itemsize > 1 and draw(st.booleans())
    segments, expected = [], b""
    for _ in range(draw(st.integers(1, 3))):
        ndim = draw(st.integers(0, 4))
        if ndim == 0:
            count = draw(st.integers(0, 300))
            offset = draw(st.integers(0, len(DATA) - count * itemsize))
            segments.append(Segment(file=0, offset=offset, nbytes=count * itemsize))
            expected += logical_bytes(offset, (count,), (itemsize,), itemsize, swap)
            continue
        shape = tuple(draw(st.lists(st.integers(0, 7), min_size=ndim, max_size=ndim)))
        strides = tuple(draw(st.lists(st.integers(0, 300), min_size=ndim, max_size=ndim)))
        reach = sum((d - 1) * s for d, s in zip(shape, strides)) + itemsize if all(shape) else 0
        offset = draw(st.integers(0, len(DATA) - reach))
        segments.append(Segment(file=0, offset=offset, shape=shape, strides=strides))
        expected += logical_bytes(offset, shape, strides, itemsize, swap)
    return HashJob(file=0, segments=tuple(segments), itemsize=itemsize, byteswap=swap), xxh(expected)


@settings(max_examples=150, deadline=None)
@given(st.lists(strided_jobs(), min_size=1, max_size=4), st.integers(1, 3))
def test_random_strided_swapped_jobs_match_numpy(tmp_path_factory, cases, threads):
    path = tmp_path_factory.getbasetemp() / "property.bin"
    if not path.exists():
        path.write_bytes(DATA)
    with NativeFile(path) as f:
        results = hash_jobs([f], [job for job, _ in cases], threads=threads)
    assert [r.checksum for r in results] == [digest for _, digest in cases]


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    """A 160 MiB sparse file with random 8 KiB blocks across every MiB boundary: a byte lost or
    read twice where the engine cuts a run (its chunks, its mapping windows) changes the digests."""
    path = tmp_path_factory.mktemp("big") / "big.bin"
    rng = np.random.default_rng(11)
    size = 160 << 20
    with open(path, "wb") as out:
        out.truncate(size)
        for at in range(1 << 20, size, 1 << 20):
            out.seek(at - 4096)
            out.write(rng.integers(0, 256, 8192, dtype=np.uint8).tobytes())
    with NativeFile(path) as f:
        yield path, f


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_runs_across_many_windows_match_xxhash_and_zlib(big_file, threads):
    import zlib

    # Each worker maps a window of at most 64 MiB at a time (less with more threads), so these
    # runs, which start off page boundaries, span several windows whatever the thread count.
    path, f = big_file
    runs = [(12345, (100 << 20) + 777), ((100 << 20) + 13122, (50 << 20) + 4321), (5, 3)]
    expected = []
    with open(path, "rb") as raw:
        for offset, nbytes in runs:
            raw.seek(offset)
            digest, crc, left = xxhash.xxh3_128(), 0, nbytes
            while left:
                block = raw.read(min(left, 1 << 22))
                digest.update(block)
                crc = zlib.crc32(block, crc)
                left -= len(block)
            expected.append((digest.hexdigest(), crc))
    jobs = [HashJob(file=0, offset=offset, nbytes=nbytes, crc32=True) for offset, nbytes in runs]
    assert [(r.checksum, r.crc32) for r in hash_jobs([f], jobs, threads=threads)] == expected
