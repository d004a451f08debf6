"""torch.save files read without torch: keys, dtypes, shapes, views and checksums against
torch.load(weights_only=True) + the xxhash package; hostile zips and pickles refused."""

from __future__ import annotations

import struct
from pathlib import Path
import zipfile

import pytest
import torch
import xxhash

from shardscan.errors import FormatError
from shardscan.scanner import scan, scan_paths

from hostile_pickles import hostile


def oracle(obj, path=()):
    """key -> (dtype, shape, checksum) from torch's own loader."""
    out = {}
    if isinstance(obj, torch.Tensor):
        raw = obj.contiguous().view(-1).view(torch.uint8) if obj.numel() else torch.empty(0, dtype=torch.uint8)
        out[".".join(path)] = (str(obj.dtype).removeprefix("torch."), list(obj.shape), xxhash.xxh3_128_hexdigest(raw.numpy().tobytes()))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(oracle(v, path + (str(k),)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(oracle(v, path + (str(i),)))
    return out


def rows(path):
    table = scan(path)
    return {r["key"]: (r["dtype"], r["shape"], r["checksum"]) for r in table.to_pylist()}


def check_against_torch(path):
    expected = oracle(torch.load(path, weights_only=True))
    assert rows(path) == expected
    return expected


DTYPES = [
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
    torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128, torch.float8_e4m3fn,
    torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz, torch.float8_e8m0fnu,
    torch.uint16, torch.uint32, torch.uint64,
]


def test_every_dtype(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {}
    for dt in DTYPES:
        base = torch.randint(0, 100, (3, 5), generator=g, dtype=torch.int64)
        sd[str(dt)] = base.to(dt) if not dt.is_floating_point or dt.itemsize > 1 else base.float().to(dt)
    path = tmp_path / "all.bin"
    torch.save(sd, path)
    assert len(check_against_torch(path)) == len(DTYPES)


def test_views_zero_dim_empty_and_ties(tmp_path):
    m = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    sd = {
        "matrix": m,
        "transpose": m.t(),                 # strides (1, 10)
        "column_slice": m[:, 2:5],          # non-contiguous rows
        "row_slice": m[2:4],                # contiguous, storage offset 20
        "strided": m[::2, ::3],             # steps in both dims
        "scalar": torch.tensor(3.5),        # 0-dim
        "empty": torch.zeros(0, 4),         # 0 in a dimension
        "big3d": torch.arange(24, dtype=torch.int16).reshape(2, 3, 4).permute(2, 0, 1),
        "cplx_t": torch.randn(3, 4, dtype=torch.complex64).t(),
    }
    sd["tied"] = sd["matrix"]
    path = tmp_path / "views.pt"
    torch.save(sd, path)
    check_against_torch(path)
    table = scan(path).to_pylist()
    storage = {r["key"]: r["storage"] for r in table}
    assert storage["tied"] == storage["matrix"] == storage["transpose"] == storage["column_slice"]
    offsets = {r["key"]: r["offset"] for r in table}
    assert offsets["row_slice"] == offsets["matrix"] + 20 * 4


def test_nested_lightning_and_optimizer_keys(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    ckpt = {"epoch": 3, "global_step": 10, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "optimizer_states": [opt.state_dict()], "lr_schedulers": [], "hyper_parameters": {"lr": 1e-3}}
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    found = check_against_torch(path)
    assert "state_dict.model.0.weight" in found
    assert "optimizer_states.0.state.0.exp_avg" in found
    result = scan_paths(path)
    assert result.non_tensor_leaves > 0 and result.ok


def test_same_state_dict_as_safetensors_and_bin(tmp_path):
    from safetensors.torch import save_file

    sd = {"a": torch.randn(4, 5), "b": torch.randn(7).to(torch.bfloat16), "c": torch.arange(6, dtype=torch.int32)}
    save_file(sd, tmp_path / "m.safetensors")
    torch.save(sd, tmp_path / "m.bin")
    as_rows = lambda p: {(r["key"], r["dtype"], tuple(r["shape"]), r["checksum"]) for r in scan(p).to_pylist()}
    assert as_rows(tmp_path / "m.safetensors") == as_rows(tmp_path / "m.bin")


def _write_big_endian(path, sd):
    """torch cannot write big-endian files on this machine: build one as a big-endian torch
    would (records byte-swapped, byteorder 'big'), reusing torch's own pickle."""
    little = path.with_suffix(".le")
    torch.save(sd, little)
    with zipfile.ZipFile(little) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        pkl = zin.read(f"{little.stem}/data.pkl")
        itemsizes = {}
        for key, t in oracle_storages(sd).items():
            itemsizes[key] = t
        for info in zin.infolist():
            data = zin.read(info)
            rel = info.filename.split("/", 1)[1]
            if rel == "byteorder":
                data = b"big"
            elif rel.startswith("data/"):
                size = itemsizes[rel[5:]]
                data = b"".join(data[i : i + size][::-1] for i in range(0, len(data), size))
            elif rel == "data.pkl":
                data = pkl
            zout.writestr(f"{path.stem}/{rel}", data)


def oracle_storages(sd):
    # storage keys are assigned in pickling order: the dict's order here, one storage each
    return {str(i): (t.element_size() // 2 if t.is_complex() else t.element_size()) for i, t in enumerate(sd.values())}


def test_big_endian_file_hashes_as_little_endian(tmp_path):
    sd = {"f": torch.randn(3, 4), "i": torch.arange(5, dtype=torch.int64), "h": torch.randn(6).half(),
          "c": torch.randn(2, 3, dtype=torch.complex64)}
    path = tmp_path / "big.bin"
    _write_big_endian(path, sd)
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["f"], sd["f"])  # torch agrees the file means the same tensors
    assert rows(path) == oracle(sd)


def test_crc_flags_a_flipped_byte(tmp_path):
    path = tmp_path / "m.bin"
    torch.save({"a": torch.randn(64, 64), "view": torch.randn(32, 32)[:, :5]}, path)
    assert scan_paths(path).ok
    offset = scan(path).to_pylist()[0]["offset"]
    blob = bytearray(path.read_bytes())
    blob[offset + 100] ^= 0x40
    path.write_bytes(blob)
    result = scan_paths(path)
    assert [p.error for p in result.problems] == ["CRC32 mismatch in zip record data/0 (holding a): bytes are corrupt"]


def test_crc_of_partially_viewed_record(tmp_path):
    path = tmp_path / "v.bin"
    torch.save({"view": torch.randn(32, 32)[:, :5]}, path)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("v/data/0")
    blob = bytearray(path.read_bytes())
    lh = info.header_offset
    data_start = lh + 30 + struct.unpack("<H", blob[lh + 26 : lh + 28])[0] + struct.unpack("<H", blob[lh + 28 : lh + 30])[0]
    blob[data_start + info.file_size - 1] ^= 1  # a byte no element of the view touches
    path.write_bytes(blob)
    result = scan_paths(path)
    assert len(result.problems) == 1 and "CRC32 mismatch in zip record data/0" in result.problems[0].error


def test_no_crc_is_not_corruption(tmp_path):
    path = tmp_path / "nocrc.bin"
    torch.serialization.set_crc32_options(False)
    try:
        torch.save({"a": torch.randn(8, 8)}, path)
    finally:
        torch.serialization.set_crc32_options(True)
    with zipfile.ZipFile(path) as z:
        assert z.getinfo("nocrc/data/0").CRC == 0
    assert scan_paths(path).ok
    check_against_torch(path)


def test_header_only_scan_has_no_checksums(tmp_path):
    torch.save({"a": torch.ones(3)}, tmp_path / "m.bin")
    assert scan(tmp_path / "m.bin", hash=False).column("checksum").to_pylist() == [None]


def test_directory_of_bin_shards(tmp_path):
    torch.save({"a": torch.ones(3)}, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save({"b": torch.zeros(2)}, tmp_path / "pytorch_model-00002-of-00002.bin")
    table = scan(tmp_path)
    assert table.column("key").to_pylist() == ["a", "b"]


# ---- refusals ------------------------------------------------------------------------------


def test_torchscript_archive_is_named(tmp_path):
    path = tmp_path / "script.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(FormatError, match="TorchScript archive"):
        scan(path)


def _zip_with_pickle(path, pkl: bytes):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/version", "3\n")


@pytest.mark.parametrize("name", sorted(hostile("/nonexistent")))
def test_hostile_pickle_in_a_checkpoint(name, tmp_path):
    canary = tmp_path / "canary"
    data, global_name = hostile(str(canary))[name]
    path = tmp_path / "evil.bin"
    _zip_with_pickle(path, data)
    result = scan_paths(path)
    assert [p.error for p in result.problems] == [f"unsafe pickle global {global_name}"]
    assert result.table.num_rows == 0
    assert not canary.exists()


def test_non_storage_persistent_id(tmp_path):
    path = tmp_path / "pid.bin"
    _zip_with_pickle(path, b"\x80\x02(X\x06\x00\x00\x00moduleX\x02\x00\x00\x00ostQ.")
    with pytest.raises(FormatError, match="not a storage"):
        scan(path)


def _good(tmp_path):
    path = tmp_path / "g.bin"
    torch.save({"a": torch.arange(10, dtype=torch.float32), "b": torch.ones(4)}, path)
    return path


def test_compressed_record(tmp_path):
    src = _good(tmp_path)
    path = tmp_path / "deflated.bin"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    with pytest.raises(FormatError, match="compressed"):
        scan(path)


def test_entry_outside_the_prefix(tmp_path):
    src = _good(tmp_path)
    path = tmp_path / "prefix.bin"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
        zout.writestr("other/evil", b"x")
    with pytest.raises(FormatError, match="outside the archive's top-level folder"):
        scan(path)


def _central_entries(blob: bytes):
    pos = blob.find(b"PK\x01\x02")
    while pos >= 0:
        yield pos
        pos = blob.find(b"PK\x01\x02", pos + 4)


def test_overlapping_records(tmp_path):
    path = _good(tmp_path)
    blob = bytearray(path.read_bytes())
    entries = list(_central_entries(blob))
    # point data/1's local header offset at data/0's: same bytes claimed twice
    names = {bytes(blob[e + 46 : e + 46 + struct.unpack("<H", blob[e + 28 : e + 30])[0]]): e for e in entries}
    e0, e1 = names[b"g/data/0"], names[b"g/data/1"]
    blob[e1 + 42 : e1 + 46] = blob[e0 + 42 : e0 + 46]
    path.write_bytes(blob)
    with pytest.raises(FormatError, match="overlap|local header|names another"):
        scan(path)


@pytest.mark.parametrize("local_record, damaged_entry, error", [
    (1, 7, "record 'g/.format_version': no matching local header"),
    (5, 1, "central directory entry 1 of 8 is missing or damaged"),
])
def test_first_fault_in_record_order_is_reported(tmp_path, local_record, damaged_entry, error):
    """Directory entries are all decoded before any local header is read; the error reported
    is still the first a single pass over the records meets."""
    path = _good(tmp_path)
    blob = bytearray(path.read_bytes())
    entries = list(_central_entries(blob))
    assert len(entries) == 8
    local = struct.unpack("<I", blob[entries[local_record] + 42 : entries[local_record] + 46])[0]
    blob[local : local + 4] = b"XXXX"
    blob[entries[damaged_entry] : entries[damaged_entry] + 4] = b"XXXX"
    path.write_bytes(blob)
    with pytest.raises(FormatError, match=error):
        scan(path)


def test_offset_past_the_end(tmp_path):
    path = _good(tmp_path)
    blob = bytearray(path.read_bytes())
    e = next(iter(_central_entries(blob)))
    blob[e + 42 : e + 46] = struct.pack("<I", len(blob) + 1000)
    path.write_bytes(blob)
    with pytest.raises(FormatError, match="past the end"):
        scan(path)


def test_truncated_central_directory(tmp_path):
    path = _good(tmp_path)
    blob = path.read_bytes()
    path.write_bytes(blob[: blob.find(b"PK\x01\x02") + 30])
    result = scan_paths(path)
    assert len(result.problems) == 1
    problem = result.problems[0]
    assert "truncated" in problem.error
    assert set(problem.intact) == {"a", "b"}  # every record survived; only the directory is gone
    assert {r["key"] for r in result.table.to_pylist()} == {"a", "b"}


def test_truncated_inside_a_tensor(tmp_path):
    path = tmp_path / "cut.bin"
    torch.save({"a": torch.randn(100), "b": torch.randn(1000), "c": torch.randn(10)}, path)
    with zipfile.ZipFile(path) as z:
        cut_at = z.getinfo("cut/data/1").header_offset + 200
    path.write_bytes(path.read_bytes()[:cut_at])
    result = scan_paths(path)
    (problem,) = result.problems
    assert problem.intact == ("a",) and problem.cut == ("b",) and problem.lost == ("c",)
    (row,) = result.table.to_pylist()
    assert row["key"] == "a" and row["checksum"] is not None


def _rewritten(source: Path, target: Path, *, drop: str | None = None, change: tuple[str, bytes] | None = None) -> Path:
    """A copy of a torch.save archive with one record dropped or its bytes replaced."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if drop and info.filename.endswith(drop):
                continue
            data = change[1] if change and info.filename.endswith(change[0]) else zin.read(info)
            zout.writestr(info.filename, data)
    return target


@pytest.mark.parametrize("variant, refused", [
    ({"drop": "/version"}, True),
    ({"change": ("/version", b"99\n")}, True),
    ({"change": ("/version", b"0\n")}, True),
    ({"change": ("/version", b"abc\n")}, True),
    ({"change": ("/version", b"10\n")}, False),
    ({"change": ("/.storage_alignment", b"x")}, True),
], ids=["no-version", "version-99", "version-0", "version-text", "version-10", "alignment-text"])
def test_archive_records_torch_insists_on(tmp_path, variant, refused):
    source = tmp_path / "source.pt"
    torch.save({"a": torch.ones(3)}, source)
    path = _rewritten(source, tmp_path / "variant.pt", **variant)
    try:
        torch.load(path, weights_only=True)
        torch_refuses = False
    except Exception:
        torch_refuses = True
    assert torch_refuses == refused
    assert bool(scan_paths(path).problems) == refused
