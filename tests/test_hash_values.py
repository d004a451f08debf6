"""NaN / Inf counts and the all-zero flag computed in the hashing pass, against torch itself:
torch.isnan / torch.isinf on the tensor (each part of a complex one) and
(t.view(torch.uint8) == 0).all(), for plain, strided and byte-swapped jobs of every counted
dtype."""

from __future__ import annotations

import pytest
import xxhash

from shardscan._core import VALUE_KINDS, HashJob, NativeFile, Segment, hash_jobs, lib, value_kind_for

torch = pytest.importorskip("torch")

DTYPES = ["float64", "float32", "float16", "bfloat16", "float8_e5m2", "float8_e4m3fn", "complex64", "complex128"]


def raw(t) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def expected_counts(t) -> tuple[int, int, bool]:
    parts = torch.view_as_real(t) if t.is_complex() else t
    # torch has no isinf for float8_e4m3fn (the format has no Inf); widening keeps NaN as NaN.
    wide = parts.float() if t.dtype == torch.float8_e4m3fn else parts
    zero = bool((t.contiguous().reshape(-1).view(torch.uint8) == 0).all())
    return int(torch.isnan(parts).sum()), int(torch.isinf(wide).sum()), zero


def with_specials(dtype: str, n: int, seed: int):
    """Random values with NaN, +Inf and -Inf injected at random places (Inf becomes the
    largest finite value in float8_e4m3fn, as torch converts it), or for 1-byte floats random
    bit patterns, which hold every NaN and Inf encoding."""
    gen = torch.Generator().manual_seed(seed)
    dt = getattr(torch, dtype)
    if dt.itemsize == 1:
        return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=gen).view(dt)
    t = torch.randn(n, dtype=dt, generator=gen)
    for value, count in ((float("nan"), 7), (float("inf"), 5), (float("-inf"), 3)):
        at = torch.randint(0, n, (count,), generator=gen)
        if t.is_complex():  # into one part or the other
            parts = torch.view_as_real(t)
            parts[at, torch.randint(0, 2, (count,), generator=gen)] = value
        else:
            t[at] = value
    return t


def bit_patterns(dtype: str, n: int, seed: int):
    """Random bits of the dtype's width: many NaN payloads, both Infs, denormals, -0."""
    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n * dt.itemsize,), dtype=torch.uint8, generator=gen).view(dt)


def byteswapped(t, unit: int) -> bytes:
    """The tensor's bytes as a big-endian writer stores them: each `unit`-byte part reversed."""
    return raw(t.contiguous().reshape(-1).view(torch.uint8).reshape(-1, unit).flip(1))


def unit_of(t) -> int:
    return t.element_size() // 2 if t.is_complex() else t.element_size()


def check(result, t, digest_of=None):
    assert result.status == 0, result.message
    assert (result.nan_count, result.inf_count, result.all_zero) == expected_counts(t)
    assert result.checksum == xxhash.xxh3_128(raw(t if digest_of is None else digest_of)).hexdigest()


@pytest.mark.parametrize("dtype", DTYPES)
def test_counts_match_torch(tmp_path, dtype):
    # Sizes around the engine's 64-byte vectors and 4 KiB blocks, and one past its 128 KiB chunk.
    tensors = [with_specials(dtype, n, seed) for seed, n in enumerate((1, 63, 4097, 70001))]
    tensors += [bit_patterns(dtype, 5000, 9), torch.zeros(300, dtype=getattr(torch, dtype))]
    tensors.append(torch.full((300,), -0.0, dtype=getattr(torch, dtype)))  # -0.0 is not an all-zero byte
    blob, jobs = b"", []
    for t in tensors:
        jobs.append(HashJob(file=0, offset=len(blob), nbytes=t.numel() * t.element_size(), itemsize=unit_of(t),
                            value_kind=dtype))
        blob += raw(t)
    (tmp_path / "t.bin").write_bytes(blob)
    with NativeFile(tmp_path / "t.bin") as f:
        results = hash_jobs([f], jobs, threads=2)
    for r, t in zip(results, tensors):
        check(r, t)
    assert results[-2].all_zero and not results[-1].all_zero


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_and_swapped_views(tmp_path, dtype):
    t = with_specials(dtype, 96 * 130, 3).reshape(96, 130)
    view = t[5::3, 1:-7].t()  # a slice of a transpose: no two elements adjacent in a row
    unit, size = unit_of(t), t.element_size()
    blob = raw(t)
    (tmp_path / "le.bin").write_bytes(blob)
    (tmp_path / "be.bin").write_bytes(byteswapped(t, unit))
    shape, strides = tuple(view.shape), tuple(s * size for s in view.stride())
    offset = view.storage_offset() * size
    if t.is_complex():  # a big-endian complex view swaps each part: one more dimension over the two
        swap_seg = Segment(file=1, offset=offset, shape=shape + (2,), strides=strides + (unit,))
    else:
        swap_seg = Segment(file=1, offset=offset, shape=shape, strides=strides)
    jobs = [
        HashJob(file=0, segments=(Segment(file=0, offset=offset, shape=shape, strides=strides),), itemsize=size,
                value_kind=dtype),
        HashJob(file=1, segments=(swap_seg,), itemsize=unit, byteswap=unit > 1, value_kind=dtype),
        # the whole tensor, big-endian, as one contiguous run
        HashJob(file=1, offset=0, nbytes=len(blob), itemsize=unit, byteswap=unit > 1, value_kind=dtype),
    ]
    with NativeFile(tmp_path / "le.bin") as le, NativeFile(tmp_path / "be.bin") as be:
        strided, swapped_strided, swapped = hash_jobs([le, be], jobs, threads=2)
    check(strided, view)
    check(swapped_strided, view)
    check(swapped, t)


def test_elements_cut_between_segments(tmp_path):
    # float32 values split across segments of 6, 2, 5 and 3 bytes: each cut element is counted once.
    t = torch.tensor([float("nan"), 1.0, float("inf"), float("-inf")], dtype=torch.float32)
    blob = raw(t)
    (tmp_path / "t.bin").write_bytes(blob)
    cuts = [(0, 6), (6, 2), (8, 5), (13, 3)]
    job = HashJob(file=0, segments=tuple(Segment(file=0, offset=o, nbytes=n) for o, n in cuts), value_kind="float32")
    with NativeFile(tmp_path / "t.bin") as f:
        (r,) = hash_jobs([f], [job])
    check(r, t)


def test_a_large_swapped_tensor_across_gather_flushes(tmp_path):
    # 3 MiB of float64, big-endian: the swap buffer (1 MiB) and the hash chunks cut it many times.
    t = with_specials("float64", 3 << 17, 11)
    (tmp_path / "be.bin").write_bytes(byteswapped(t, 8))
    with NativeFile(tmp_path / "be.bin") as f:
        (r,) = hash_jobs([f], [HashJob(file=0, nbytes=t.numel() * 8, itemsize=8, byteswap=True, value_kind="float64")])
    check(r, t)


def test_kinds_and_failures(tmp_path):
    (tmp_path / "t.bin").write_bytes(bytes(64) + b"\x01")
    with NativeFile(tmp_path / "t.bin") as f:
        plain, empty, ones, partial, failed = hash_jobs([f], [
            HashJob(file=0, nbytes=64),                                  # no kind: only the zero flag
            HashJob(file=0, nbytes=0, value_kind="bfloat16"),            # empty: all zero, nothing counted
            HashJob(file=0, offset=60, nbytes=5),
            HashJob(file=0, nbytes=6, value_kind="float32"),             # not whole float32 values
            HashJob(file=0, offset=64, nbytes=8, value_kind="float64"),  # past the end
        ])
    assert (plain.nan_count, plain.inf_count, plain.all_zero) == (None, None, True)
    assert (empty.nan_count, empty.inf_count, empty.all_zero) == (0, 0, True)
    assert ones.all_zero is False
    assert partial.status == lib.SS_E_ARGUMENT and "whole number of 4-byte float32 values" in partial.message
    for r in (partial, failed):
        assert (r.checksum, r.nan_count, r.inf_count, r.all_zero) == (None, None, None, None)
    with pytest.raises(ValueError, match="int8"):
        hash_jobs([], [HashJob(file=0, value_kind="int8")])


def test_kind_names():
    assert sorted(VALUE_KINDS) == sorted(DTYPES)
    assert value_kind_for("bfloat16") == "bfloat16" and value_kind_for("int64") is None
