"""Legacy torch.save files (torch.save(..., _use_new_zipfile_serialization=False)) read without
torch: keys, dtypes, shapes, views, ties and checksums against torch.load(weights_only=True) and
the xxhash package; truncated and damaged files keep their intact tensors; hostile pickles are
refused before anything runs.

The layout the tests cut and patch is found independently of shardscan: pickletools walks the
five pickles, and the storage keys are those torch itself names (`untyped_storage()._cdata`)."""

from __future__ import annotations

import io
import pickle
import pickletools
import struct

import pytest
import torch
import xxhash

from shardscan.errors import FormatError, UnsafePickleError
from shardscan.scanner import scan, scan_paths

from hostile_pickles import hostile


def legacy_save(obj, path, **kwargs):
    torch.save(obj, path, _use_new_zipfile_serialization=False, **kwargs)


def checksum(t: torch.Tensor) -> str:
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)  # numpy has no bfloat16: the same bytes as int16
    return xxhash.xxh3_128_hexdigest(t.numpy().tobytes())


def oracle(obj, path=()):
    """key -> (dtype, shape, checksum) of every tensor torch hands back."""
    out = {}
    if isinstance(obj, torch.Tensor):
        out[".".join(path)] = (str(obj.dtype).removeprefix("torch."), list(obj.shape), checksum(obj))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(oracle(v, path + (str(k),)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(oracle(v, path + (str(i),)))
    return out


def rows(path):
    return {r["key"]: (r["dtype"], r["shape"], r["checksum"]) for r in scan(path).to_pylist()}


def check_against_torch(path):
    expected = oracle(torch.load(path, weights_only=True))
    assert rows(path) == expected
    return expected


def pickle_ends(blob: bytes) -> list[int]:
    """Where each of the five pickles ends, by pickletools (no unpickling)."""
    f, ends = io.BytesIO(blob), []
    for _ in range(5):
        for _op, _arg, _pos in pickletools.genops(f):
            pass
        ends.append(f.tell())
    return ends


def storage_spans(blob: bytes, nbytes_by_key: dict[str, int]) -> dict[str, tuple[int, int]]:
    """key -> (offset of the elements, bytes), walking the data section as torch writes it."""
    ends = pickle_ends(blob)
    keys = pickle.loads(blob[ends[3] : ends[4]])  # a list of str, written by torch in this test
    pos, spans = ends[4], {}
    for key in keys:
        pos += 8
        spans[key] = (pos, nbytes_by_key[key])
        pos += nbytes_by_key[key]
    assert pos == len(blob)
    return spans


def key_of(t: torch.Tensor) -> str:
    return str(t.untyped_storage()._cdata)  # the key _legacy_save names a storage by


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool, torch.complex64,
          torch.float64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.complex128]


def test_every_dtype_torch_can_save_legacy(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {str(dt).removeprefix("torch."): torch.randint(0, 100, (3, 5), generator=g).to(dt) for dt in DTYPES}
    sd["complex64"] = torch.randn(3, 5, dtype=torch.complex64, generator=g)
    sd["float16"] = torch.randn(4, 2, generator=g).half()
    path = tmp_path / "all.pt"
    legacy_save(sd, path)
    found = check_against_torch(path)
    assert len(found) == len(DTYPES)
    assert {r["format"] for r in scan(path).to_pylist()} == {"torch"}


def test_views_ties_scalars_and_empty(tmp_path):
    m = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    sd = {
        "matrix": m,
        "transpose": m.t(),
        "column_slice": m[:, 2:5],
        "row_slice": m[2:4],
        "strided": m[::2, ::3],
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "permuted": torch.arange(24, dtype=torch.int16).reshape(2, 3, 4).permute(2, 0, 1),
        "cplx_t": torch.randn(3, 4, dtype=torch.complex64).t(),
        "bf16_slice": torch.randn(8, 6).to(torch.bfloat16)[1:, ::2],
    }
    sd["tied"] = sd["matrix"]
    path = tmp_path / "views.pt"
    legacy_save(sd, path)
    check_against_torch(path)
    table = {r["key"]: r for r in scan(path).to_pylist()}
    assert table["tied"]["storage"] == table["matrix"]["storage"] == table["transpose"]["storage"] == key_of(m)
    blob = path.read_bytes()
    spans = storage_spans(blob, {key_of(t): t.untyped_storage().nbytes() for t in sd.values()})
    assert table["matrix"]["offset"] == spans[key_of(m)][0]
    assert table["row_slice"]["offset"] == spans[key_of(m)][0] + 20 * 4


def test_optimizer_state_dict_and_nested_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    ckpt = {"epoch": 3, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "params": list(model.parameters()), "note": "legacy"}
    path = tmp_path / "ckpt.pth"
    legacy_save(ckpt, path)
    found = check_against_torch(path)
    assert {"model.0.weight", "optimizer.state.0.exp_avg", "optimizer.state.0.step", "params.0"} <= set(found)
    result = scan_paths(path)
    assert result.ok and result.non_tensor_leaves > 0
    loaded = torch.load(path, weights_only=True)
    assert set(found) == set(oracle(loaded))


def test_same_rows_as_the_zip_format(tmp_path):
    sd = {"a": torch.randn(4, 5), "b": torch.randn(7).to(torch.bfloat16), "c": torch.arange(6, dtype=torch.int32),
          "t": torch.randn(3, 2).t()}
    legacy_save(sd, tmp_path / "legacy.bin")
    torch.save(sd, tmp_path / "zip.bin")
    as_rows = lambda p: {(r["key"], r["dtype"], tuple(r["shape"]), r["checksum"]) for r in scan(p).to_pylist()}
    assert as_rows(tmp_path / "legacy.bin") == as_rows(tmp_path / "zip.bin")


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_other_pickle_protocols(tmp_path, protocol):
    sd = {"w": torch.randn(3, 3), "b": torch.ones(3, dtype=torch.float16)}
    path = tmp_path / f"p{protocol}.pt"
    legacy_save(sd, path, pickle_protocol=protocol)
    # torch's weights-only reader cannot read protocol 4 frames; its full loader is the oracle
    # here (on a file this test just wrote).
    assert rows(path) == oracle(torch.load(path, weights_only=False))


def test_a_directory_of_legacy_shards_checks_clean(tmp_path):
    import shardscan

    legacy_save({"a": torch.ones(3)}, tmp_path / "pytorch_model-00001-of-00002.bin")
    legacy_save({"b": torch.zeros(2)}, tmp_path / "pytorch_model-00002-of-00002.bin")
    assert scan(tmp_path).column("key").to_pylist() == ["a", "b"]
    assert shardscan.check(tmp_path).ok


def test_untyped_storage_that_torch_cannot_load_is_refused(tmp_path):
    path = tmp_path / "f8.pt"
    legacy_save({"f8": torch.zeros(3, dtype=torch.float8_e4m3fn)}, path)
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)  # torch's legacy loader fails on UntypedStorage
    with pytest.raises(FormatError, match="UntypedStorage, which torch.load cannot read"):
        scan(path)


# ---- truncated and damaged files -------------------------------------------------------------


def _three_storages(tmp_path):
    sd = {"a": torch.randn(100), "b": torch.randn(1000), "c": torch.randn(10), "a_view": None}
    sd["a_view"] = sd["a"][10:20]
    path = tmp_path / "cut.pt"
    legacy_save(sd, path)
    blob = path.read_bytes()
    spans = storage_spans(blob, {key_of(t): t.untyped_storage().nbytes() for t in sd.values()})
    order = sorted(spans)  # the key list is sorted: the data follows that order
    by_key = {k: sorted(name for name, t in sd.items() if key_of(t) == k) for k in order}
    return path, blob, spans, order, by_key


def test_cut_inside_a_storage(tmp_path):
    path, blob, spans, order, by_key = _three_storages(tmp_path)
    start, nbytes = spans[order[1]]
    path.write_bytes(blob[: start + nbytes // 2])
    result = scan_paths(path)
    (problem,) = result.problems
    assert "truncated" in problem.error
    assert sorted(problem.intact) == by_key[order[0]]
    assert sorted(problem.cut) == by_key[order[1]]
    assert sorted(problem.lost) == by_key[order[2]]
    assert sorted(r["key"] for r in result.table.to_pylist()) == by_key[order[0]]
    assert all(r["checksum"] for r in result.table.to_pylist())


def test_cut_inside_a_count(tmp_path):
    path, blob, spans, order, by_key = _three_storages(tmp_path)
    path.write_bytes(blob[: spans[order[2]][0] - 3])
    (problem,) = scan_paths(path).problems
    assert sorted(problem.intact) == sorted(by_key[order[0]] + by_key[order[1]])
    assert problem.cut == () and sorted(problem.lost) == by_key[order[2]]


def test_cut_inside_the_key_list_loses_every_tensor(tmp_path):
    path, blob, spans, order, by_key = _three_storages(tmp_path)
    path.write_bytes(blob[: pickle_ends(blob)[4] - 2])
    result = scan_paths(path)
    (problem,) = result.problems
    assert "key list" in problem.error
    assert sorted(problem.lost) == sorted(sum(by_key.values(), [])) and result.table.num_rows == 0


@pytest.mark.parametrize("where", [17, 200, -1])  # in the version pickle, the object's, its last byte
def test_cut_inside_the_pickles_names_no_tensor(tmp_path, where):
    path, blob, *_ = _three_storages(tmp_path)
    cut = pickle_ends(blob)[3] - 1 if where == -1 else where
    path.write_bytes(blob[:cut])
    with pytest.raises(FormatError, match="truncated inside the pickle"):
        scan(path)


def test_every_truncation_length(tmp_path):
    sd = {"w": torch.randn(3, 4), "h": torch.arange(6, dtype=torch.int16), "t": None, "flag": torch.tensor(True)}
    sd["t"] = sd["w"].t()
    src = tmp_path / "whole.pt"
    legacy_save(sd, src)
    blob, expected = src.read_bytes(), oracle(sd)
    path = tmp_path / "cut.pt"
    for length in range(len(blob)):
        path.write_bytes(blob[:length])
        result = scan_paths(path)
        assert len(result.problems) == 1, length
        for row in result.table.to_pylist():  # whatever survives is exactly what was saved
            assert (row["dtype"], row["shape"], row["checksum"]) == expected[row["key"]], length


def test_a_count_that_disagrees_with_the_pickle(tmp_path):
    path, blob, spans, order, by_key = _three_storages(tmp_path)
    patched = bytearray(blob)
    count_at = spans[order[1]][0] - 8
    patched[count_at : count_at + 8] = struct.pack("<q", 1 << 62)
    path.write_bytes(patched)
    result = scan_paths(path)
    (problem,) = result.problems
    assert f"holds {1 << 62} elements by its header" in problem.error
    assert sorted(problem.lost) == sorted(by_key[order[1]] + by_key[order[2]])
    assert sorted(r["key"] for r in result.table.to_pylist()) == by_key[order[0]]


def test_bytes_after_the_last_storage(tmp_path):
    path, blob, *_ = _three_storages(tmp_path)
    path.write_bytes(blob + b"\0" * 5)
    result = scan_paths(path)
    assert [p.error for p in result.problems] == ["5 bytes follow the last storage"]
    assert result.table.num_rows == 4


def test_a_flipped_data_byte_changes_only_its_tensor(tmp_path):
    path, blob, spans, order, by_key = _three_storages(tmp_path)
    before = {r["key"]: r["checksum"] for r in scan(path).to_pylist()}
    patched = bytearray(blob)
    start, nbytes = spans[order[2]]
    patched[start + min(44, nbytes - 1)] ^= 1  # element 11 (or c's last): inside a_view when the storage is a's
    path.write_bytes(patched)
    after = {r["key"]: r["checksum"] for r in scan(path).to_pylist()}
    assert {k for k in before if before[k] != after[k]} == set(by_key[order[2]])


# ---- hostile files ---------------------------------------------------------------------------


def _with_object_pickle(tmp_path, obj_pickle: bytes) -> bytes:
    """A real legacy file's header pickles, then `obj_pickle`, then an empty key list."""
    legacy_save({"a": torch.ones(2)}, tmp_path / "real.pt")
    blob = (tmp_path / "real.pt").read_bytes()
    return blob[: pickle_ends(blob)[2]] + obj_pickle + pickle.dumps([], protocol=2)


@pytest.mark.parametrize("name", sorted(hostile("/nonexistent")))
def test_hostile_object_pickle_is_refused(name, tmp_path):
    canary = tmp_path / "canary"
    data, global_name = hostile(str(canary))[name]
    path = tmp_path / "evil.pt"
    path.write_bytes(_with_object_pickle(tmp_path, data))
    result = scan_paths(path)
    (problem,) = result.problems
    assert isinstance(problem.exception, UnsafePickleError)
    assert problem.error == f"unsafe pickle global {global_name}"
    assert result.table.num_rows == 0
    assert not canary.exists()


def test_hostile_global_beside_real_tensors(tmp_path):
    canary = tmp_path / "canary"

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {canary}",))

    path = tmp_path / "mixed.pt"
    legacy_save({"weight": torch.randn(3), "payload": Payload()}, path)
    assert not canary.exists()  # saving only pickled the call
    (problem,) = scan_paths(path).problems
    assert isinstance(problem.exception, UnsafePickleError) and problem.error == "unsafe pickle global posix.system"
    assert not canary.exists()
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # torch's own weights-only loader refuses it too
    assert not canary.exists()


class _LegacyPickler(pickle.Pickler):
    """Pickles tensors as _legacy_save does, with persistent ids the test chooses."""

    def __init__(self, f, pids):
        super().__init__(f, protocol=2)
        self.pids = pids

    def persistent_id(self, obj):
        return self.pids.get(id(obj))


def _hand_built(pid: tuple, counts_and_data: bytes) -> bytes:
    storage = torch.ones(4).untyped_storage()
    holder = torch._utils._rebuild_tensor_v2, (storage, 0, (4,), (1,), False, {})

    class Tensorish:
        def __reduce__(self):
            return holder

    f = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001}):
        pickle.dump(header, f, protocol=2)
    _LegacyPickler(f, {id(storage): pid}).dump({"t": Tensorish()})
    pickle.dump([pid[2]], f, protocol=2)
    return f.getvalue() + counts_and_data


def test_a_huge_numel_in_the_pickle_is_bounded_by_the_file(tmp_path):
    huge = 1 << 60
    path = tmp_path / "huge.pt"
    path.write_bytes(_hand_built(("storage", torch.FloatStorage, "0", "cpu", huge, None),
                                 struct.pack("<q", huge) + b"\0" * 16))
    (problem,) = scan_paths(path).problems
    assert "truncated: 16 of the" in problem.error and problem.cut == ("t",)


def test_a_storage_view_outside_its_storage(tmp_path):
    path = tmp_path / "view.pt"
    path.write_bytes(_hand_built(("storage", torch.FloatStorage, "0", "cpu", 4, ("v", 2, 4)),
                                 struct.pack("<q", 4) + b"\0" * 16))
    (problem,) = scan_paths(path).problems
    assert "reaches past its 16-byte storage" in problem.error


def test_a_storage_view_inside_its_storage(tmp_path):
    data = struct.pack("<8f", *range(8))
    path = tmp_path / "view.pt"
    path.write_bytes(_hand_built(("storage", torch.FloatStorage, "0", "cpu", 8, ("v", 4, 4)), struct.pack("<q", 8) + data))
    (row,) = scan(path).to_pylist()
    assert row["checksum"] == xxhash.xxh3_128_hexdigest(data[16:])
    assert torch.equal(torch.load(path, weights_only=True)["t"], torch.arange(4.0, 8.0))  # torch agrees


def test_a_module_persistent_id_is_refused(tmp_path):
    path = tmp_path / "module.pt"
    path.write_bytes(_hand_built(("module", torch.FloatStorage, "0", "cpu", 4, None), b""))
    with pytest.raises(FormatError, match="not a storage"):
        scan(path)


# ---- the verdict matches the resume ------------------------------------------------------------


def test_the_producers_legacy_checkpoint_resumes_and_checks_clean(legacy_torch_checkpoint):
    import producers
    import shardscan

    assert producers.legacy_torch_resume(legacy_torch_checkpoint) == 3
    assert shardscan.check(legacy_torch_checkpoint).ok
    check_against_torch(legacy_torch_checkpoint)


@pytest.mark.parametrize("fraction", [0.5, 0.99])
def test_a_cut_legacy_checkpoint_fails_like_its_resume(legacy_torch_checkpoint, tmp_path, fraction):
    import producers
    import shardscan

    copy = producers.copy_checkpoint(legacy_torch_checkpoint, tmp_path / "checkpoint.pt")
    producers.truncate_at(copy, fraction)
    assert isinstance(producers.run_raises(lambda: producers.legacy_torch_resume(copy)), RuntimeError)
    report = shardscan.check(copy)
    assert not report.ok and [e.file for e in report.errors] == [str(copy)]


def test_a_file_its_framework_unpickles_in_full(tmp_path):
    """An RNG-state file keeps numpy objects: the objects role describes them (nothing is
    imported or called), the weights role refuses them as torch's weights-only load does."""
    import numpy as np

    from shardscan import formats
    from shardscan._core import NativeFile

    canary = tmp_path / "canary"

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {canary}",))

    path = tmp_path / "rng_state.pth"
    legacy_save({"numpy": np.random.RandomState(0).get_state(), "cpu": torch.get_rng_state(), "p": Payload()}, path)
    with NativeFile(path) as file:
        listing = formats.read_file(file, path.name, objects=True)
        assert listing.keys == ["cpu"] and not listing.problems
        with pytest.raises(UnsafePickleError, match="numpy"):
            formats.read_file(file, path.name)
    assert not canary.exists()
