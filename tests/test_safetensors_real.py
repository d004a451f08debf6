"""Files written by the real safetensors library (torch and numpy APIs), checked against an
independent oracle: the `xxhash` package over the bytes safetensors hands back."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import torch
import xxhash
from safetensors import safe_open
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file as save_torch

import shardscan
from shardscan._core import HashJob, NativeFile, hash_jobs, parse_safetensors

# torch dtypes safetensors.torch 0.8 can save; the reported name is torch's without "torch.".
TORCH_DTYPES = [
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
    torch.int8, torch.uint8, torch.bool, torch.complex64, torch.uint16, torch.uint32, torch.uint64,
    torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz,
    torch.float8_e8m0fnu, torch.float4_e2m1fn_x2,
]
# Saved by safetensors but not loadable back through safetensors.torch (KeyError in 0.8):
# their oracle bytes come from the tensor we saved instead.
NOT_LOADABLE = {torch.float8_e8m0fnu, torch.float4_e2m1fn_x2}

NUMPY_DTYPES = [np.float64, np.float32, np.float16, np.int64, np.uint64, np.int32, np.uint32, np.int16,
                np.uint16, np.int8, np.uint8, np.bool_, np.complex64]


def raw_bytes(t: torch.Tensor) -> bytes:
    """Row-major little-endian bytes of a tensor, independent of shardscan."""
    flat = t.contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    nbytes = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    data = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=gen)
    return data.view(dtype).reshape(shape)


def oracle_table(path) -> dict[str, tuple[str, list[int], str]]:
    """key -> (dtype as torch names it, shape, xxh3-128 hex) from safetensors' own reader."""
    out = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            t = f.get_tensor(key)
            out[key] = (str(t.dtype).removeprefix("torch."), list(t.shape), xxhash.xxh3_128_hexdigest(raw_bytes(t)))
    return out


def scanned(path, threads=None) -> dict[str, tuple[str, list[int], str]]:
    table = shardscan.scan(path, threads=threads)
    return {r["key"]: (r["dtype"], r["shape"], r["checksum"]) for r in table.to_pylist()}


@pytest.fixture(scope="module")
def torch_dir(tmp_path_factory):
    """A small checkpoint folder: every torch dtype in several shapes, 0-dim and empty ones,
    unicode keys, and a file of thousands of small tensors."""
    directory = tmp_path_factory.mktemp("real")
    gen = torch.Generator().manual_seed(7)
    tensors = {}
    for dtype in TORCH_DTYPES:
        name = str(dtype).removeprefix("torch.")
        shapes = {"vec": (33,), "mat": (5, 7), "scalar": (), "empty": (0, 4), "empty3": (3, 0, 2)}
        if dtype == torch.float4_e2m1fn_x2:
            shapes.pop("scalar")  # a packed pair has no 0-dim form safetensors can express
        for label, shape in shapes.items():
            tensors[f"{name}.{label}"] = random_tensor(dtype, shape, gen)
    save_torch(tensors, directory / "dtypes.safetensors", metadata={"format": "pt", "ключ": "значение"})
    unicode = {k: torch.arange(i + 1, dtype=torch.float32) for i, k in enumerate(
        ["层.0.权重", "emoji 🤖", "ключ", 'quote"key', "back\\slash", "tab\tkey", "new\nline", "\u00e9\u0301"])}
    save_torch(unicode, directory / "unicode.safetensors")
    many = {f"layers.{i}.w": torch.randn(3, generator=gen) * i for i in range(3000)}
    save_torch(many, directory / "many.safetensors")
    return directory, tensors


def test_every_torch_dtype_matches_oracle(torch_dir):
    directory, saved = torch_dir
    path = directory / "dtypes.safetensors"
    got = scanned(path)
    assert set(got) == set(saved)
    loadable = {k for k, t in saved.items() if t.dtype not in NOT_LOADABLE}
    oracle = {}
    with safe_open(str(path), framework="pt") as f:
        for key in loadable:
            t = f.get_tensor(key)
            oracle[key] = (str(t.dtype).removeprefix("torch."), list(t.shape), xxhash.xxh3_128_hexdigest(raw_bytes(t)))
    for key, t in saved.items():
        if key in oracle:
            assert got[key] == oracle[key], key
        else:
            assert got[key][2] == xxhash.xxh3_128_hexdigest(raw_bytes(t)), key
    # The two the reference cannot load: names documented in shardscan.schema.
    assert got["float8_e8m0fnu.vec"][0] == "float8_e8m0fnu"
    assert got["float4_e2m1fn_x2.vec"][:2] == ("float4_e2m1", [66])  # 33 packed pairs = 66 F4 values


def test_zero_dim_and_empty_rows(torch_dir):
    directory, _ = torch_dir
    rows = {r["key"]: r for r in shardscan.scan(directory / "dtypes.safetensors").to_pylist()}
    assert rows["float32.scalar"]["shape"] == [] and rows["float32.scalar"]["nbytes"] == 4
    assert rows["float32.empty3"]["shape"] == [3, 0, 2] and rows["float32.empty3"]["nbytes"] == 0
    assert rows["float32.empty3"]["checksum"] == xxhash.xxh3_128_hexdigest(b"")
    # Offsets are absolute: the bytes there are the tensor's.
    path = directory / "dtypes.safetensors"
    with open(path, "rb") as f:
        f.seek(rows["int64.mat"]["offset"])
        assert xxhash.xxh3_128_hexdigest(f.read(rows["int64.mat"]["nbytes"])) == rows["int64.mat"]["checksum"]


def test_unicode_keys(torch_dir):
    directory, _ = torch_dir
    path = directory / "unicode.safetensors"
    assert scanned(path) == oracle_table(path)


def test_thousands_of_small_tensors(torch_dir):
    directory, _ = torch_dir
    path = directory / "many.safetensors"
    got = scanned(path)
    assert len(got) == 3000
    assert got == oracle_table(path)


def test_numpy_api_every_dtype(tmp_path):
    rng = np.random.default_rng(3)
    arrays = {}
    for dtype in NUMPY_DTYPES:
        for label, shape in {"v": (17,), "m": (4, 3), "s": (), "e": (0,)}.items():
            raw = rng.integers(0, 256, size=int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize, dtype=np.uint8)
            arr = raw.view(np.uint8 if dtype == np.bool_ else dtype).reshape(shape)
            arrays[f"{np.dtype(dtype).name}.{label}"] = np.asarray(arr & 1, dtype=np.bool_) if dtype == np.bool_ else arr
    path = tmp_path / "np.safetensors"
    save_numpy(arrays, path)
    table = {r["key"]: r for r in shardscan.scan(path).to_pylist()}
    with safe_open(str(path), framework="numpy") as f:
        for key in f.keys():
            back = f.get_tensor(key)
            assert table[key]["checksum"] == xxhash.xxh3_128_hexdigest(np.ascontiguousarray(back).tobytes()), key
            assert table[key]["shape"] == list(back.shape)
            assert table[key]["nbytes"] == back.nbytes


def test_f6_hand_written(tmp_path):
    # No library writes F6 yet: 4 elements x 6 bits = 3 bytes, oracle = the bytes we wrote.
    data = bytes([0x12, 0x34, 0x56])
    header = json.dumps({"x": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [0, 3]}}).encode()
    path = tmp_path / "f6.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    (row,) = shardscan.scan(path).to_pylist()
    assert (row["dtype"], row["nbytes"], row["checksum"]) == ("float6_e2m3", 3, xxhash.xxh3_128_hexdigest(data))


@pytest.mark.parametrize("threads", [1, 2, 8])
def test_same_table_for_any_thread_count(torch_dir, threads):
    directory, _ = torch_dir
    reference = shardscan.scan(directory, threads=1)
    table = shardscan.scan(directory, threads=threads)
    assert table.equals(reference)
    oracle = {}
    for name in ("unicode.safetensors", "many.safetensors"):
        oracle.update({(name, k): v[2] for k, v in oracle_table(directory / name).items()})
    got = {(r["file"], r["key"]): r["checksum"] for r in table.to_pylist() if r["file"] != "dtypes.safetensors"}
    assert got == oracle


def zero_digest(n: int) -> str:
    """XXH3-128 of n zero bytes, streamed in 64 MiB chunks (the oracle for sparse files)."""
    h = xxhash.xxh3_128()
    chunk = bytes(64 << 20)
    while n:
        take = min(n, len(chunk))
        h.update(chunk[:take] if take < len(chunk) else chunk)
        n -= take
    return h.hexdigest()


def test_tensor_larger_than_4_gib_in_a_sparse_file(tmp_path):
    # Hand-written valid header + ftruncate: 4 GiB + 17 zero bytes cost no disk. A real
    # tensor after it sits at an offset past 2^32, so 32-bit truncation anywhere shows.
    big = (4 << 30) + 17
    tail = np.arange(4, dtype=np.float32).tobytes()
    header = json.dumps({
        "big": {"dtype": "U8", "shape": [big], "data_offsets": [0, big]},
        "tail": {"dtype": "F32", "shape": [4], "data_offsets": [big, big + 16]},
    }).encode()
    path = tmp_path / "big.safetensors"
    start = 8 + len(header)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(start + big + 16)
        f.seek(start + big)
        f.write(tail)
    with safe_open(str(path), framework="numpy") as f:  # the reference accepts the file
        assert f.get_slice("big").get_shape() == [big]
        assert f.get_tensor("tail").tobytes() == tail
    rows = {r["key"]: r for r in shardscan.scan(path, threads=2).to_pylist()}
    assert rows["big"]["nbytes"] == big and rows["big"]["checksum"] == zero_digest(big)
    assert rows["tail"]["offset"] == start + big
    assert rows["tail"]["checksum"] == xxhash.xxh3_128_hexdigest(tail)


def test_truncated_between_parse_and_hash(tmp_path):
    # Open and parse, then cut the file: the mapping still spans the old size, so reading the
    # lost pages faults (SIGBUS). The core must turn that into an error for that job only.
    path = tmp_path / "cut.safetensors"
    save_torch({"a": torch.arange(300_000, dtype=torch.float32), "b": torch.ones(10)}, path)
    other = tmp_path / "other.safetensors"
    save_torch({"c": torch.ones(5)}, other)
    with NativeFile(path) as f, NativeFile(other) as g:
        header = parse_safetensors(f)
        jobs = [HashJob(file=0, offset=o, nbytes=n) for o, n in zip(header.offsets, header.nbytes)]
        jobs.append(HashJob(file=1, offset=parse_safetensors(g).offsets[0], nbytes=20))
        os.truncate(path, 8 + header.offsets[0] + 4096)  # well inside tensor "a"
        results = hash_jobs([f, g], jobs, threads=2)
    by_key = dict(zip(header.keys + ["c"], results))
    for key in ("a", "b"):
        assert by_key[key].checksum is None
        assert by_key[key].status == 4  # SS_E_CHANGED
        assert "shrank" in by_key[key].message and by_key[key].failed_file == 0  # the file at fault
    assert by_key["c"].checksum == xxhash.xxh3_128_hexdigest(torch.ones(5).numpy().tobytes())


def test_truncated_between_parse_and_hash_through_scan(tmp_path, monkeypatch):
    # The same through the scanner: the file is a problem and none of its rows has a checksum.
    import shardscan.scanner as scanner

    path = tmp_path / "cut.safetensors"
    save_torch({"a": torch.arange(300_000, dtype=torch.float32)}, path)
    real = scanner.hash_jobs

    def cut_then_hash(files, jobs, threads=None, progress=None):
        os.truncate(path, 4096)
        return real(files, jobs, threads, progress)

    monkeypatch.setattr(scanner, "hash_jobs", cut_then_hash)
    result = scanner.scan_paths([path])
    assert [p.file for p in result.problems] == [str(path)]
    assert "shrank" in result.problems[0].error
    assert result.table.column("checksum").to_pylist() == [None]


def test_metadata_round_trips(tmp_path):
    # __metadata__ as safetensors wrote it, unicode and many pairs included.
    metadata = {"format": "pt", "ключ": "значение", "empty": "", **{f"k{i}": "v" * i for i in range(50)}}
    path = tmp_path / "meta.safetensors"
    save_torch({"a": torch.ones(2)}, path, metadata=metadata)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == metadata  # the oracle reads the same back
    with NativeFile(path) as f:
        assert parse_safetensors(f).metadata == metadata


def test_file_with_no_tensors(tmp_path):
    # safetensors writes "{}" (plus padding) for an empty dict: valid, zero rows. (Under the
    # sanitizer build this once caught qsort(NULL, 0): undefined even with nothing to sort.)
    path = tmp_path / "none.safetensors"
    save_torch({}, path)
    with safe_open(str(path), framework="pt") as f:
        assert list(f.keys()) == []
    result = shardscan.scan_paths([path])
    assert result.ok and result.table.num_rows == 0


def test_leading_whitespace_header_is_accepted_like_the_reference(tmp_path):
    # safetensors 0.8 lets serde skip whitespace before the header's '{'; so must we.
    data = np.arange(4, dtype=np.float32).tobytes()
    header = b'  \n{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'
    path = tmp_path / "ws.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    with safe_open(str(path), framework="np") as f:  # the reference reads it
        assert f.get_tensor("a").tobytes() == data
    (row,) = shardscan.scan(path).to_pylist()
    assert row["key"] == "a" and row["checksum"] == xxhash.xxh3_128_hexdigest(data)
