"""torch.distributed.checkpoint directories: one row per logical tensor, checksum over the whole
tensor in row-major order however it was chunked; oracle: DCP's own loader + xxhash."""

from __future__ import annotations

import io
import pickle
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
import xxhash
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)

from shardscan.scanner import scan_paths

from hostile_pickles import hostile


def digest(t: torch.Tensor) -> str:
    return xxhash.xxh3_128_hexdigest(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())


def load_with_dcp(path, like: dict) -> dict:
    sd = {k: torch.zeros_like(v) for k, v in like.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(sd, checkpoint_id=str(path))
    return sd


def test_single_process_save(tmp_path):
    sd = {"w": torch.randn(4, 3), "b": torch.arange(5), "bf": torch.randn(2, 2).bfloat16(), "step": 7,
          "nested": {"x": torch.randn(3)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(sd, checkpoint_id=str(tmp_path / "ckpt"))
    result = scan_paths(tmp_path / "ckpt")
    assert result.ok and result.non_tensor_leaves == 1
    got = {r["key"]: (r["shape"], r["checksum"], r["file"], r["format"]) for r in result.table.to_pylist()}
    flat = {"w": sd["w"], "b": sd["b"], "bf": sd["bf"], "nested.x": sd["nested"]["x"]}
    loaded = load_with_dcp(tmp_path / "ckpt", flat)
    assert got == {k: (list(v.shape), digest(v), "__0_0.distcp", "dcp") for k, v in loaded.items()}


def write_chunked(directory, tensors: dict, clone: bool = True, files: int = 1):
    """A DCP checkpoint as several ranks would write it: each chunk a torch.save archive inside a
    .distcp file, .metadata naming them. Chunks alternate between `files` files."""
    directory.mkdir()
    bufs = [io.BytesIO() for _ in range(files)]
    storage, sdm, n = {}, {}, 0
    for name, (t, chunks) in tensors.items():
        metas = []
        for i, (off, size) in enumerate(chunks):
            piece = t[tuple(slice(o, o + s) for o, s in zip(off, size))]
            buf = bufs[n % files]
            start = buf.tell()
            torch.save(piece.clone() if clone else piece, buf)
            storage[MetadataIndex(name, torch.Size(off), i)] = _StorageInfo(f"__{n % files}_0.distcp", start, buf.tell() - start)
            metas.append(ChunkStorageMetadata(offsets=torch.Size(off), sizes=torch.Size(size)))
            n += 1
        sdm[name] = TensorStorageMetadata(TensorProperties(dtype=t.dtype), t.size(), metas)
    for i, buf in enumerate(bufs):
        (directory / f"__{i}_0.distcp").write_bytes(buf.getvalue())
    (directory / ".metadata").write_bytes(pickle.dumps(Metadata(state_dict_metadata=sdm, storage_data=storage)))


LAYOUTS = {
    "rows": (torch.randn(6, 4), [((0, 0), (2, 4)), ((2, 0), (4, 4))]),
    "columns": (torch.randn(5, 6), [((0, 4), (5, 2)), ((0, 0), (5, 4))]),  # listed out of order
    "blocks": (torch.arange(48, dtype=torch.int32).reshape(6, 8),
               [((0, 0), (3, 4)), ((0, 4), (3, 4)), ((3, 0), (3, 4)), ((3, 4), (3, 4))]),
    "3d": (torch.randn(2, 3, 4).bfloat16(), [((0, 0, 0), (2, 3, 1)), ((0, 0, 1), (2, 3, 3))]),
    "cplx": (torch.randn(4, 2, dtype=torch.complex64), [((0, 0), (4, 1)), ((0, 1), (4, 1))]),
}


@pytest.mark.parametrize("clone", [True, False], ids=["contiguous-chunks", "view-chunks"])
def test_tensor_split_into_chunks(tmp_path, clone):
    write_chunked(tmp_path / "ckpt", LAYOUTS, clone=clone, files=2)
    loaded = load_with_dcp(tmp_path / "ckpt", {k: v for k, (v, _) in LAYOUTS.items()})
    for k, (v, _) in LAYOUTS.items():
        assert torch.equal(loaded[k], v)
    result = scan_paths(tmp_path / "ckpt")
    assert result.ok, result.problems
    got = {r["key"]: (r["dtype"], r["shape"], r["checksum"]) for r in result.table.to_pylist()}
    assert got == {k: (str(v.dtype)[6:], list(v.shape), digest(v)) for k, v in loaded.items()}


def test_no_metadata_is_an_incomplete_save(tmp_path):
    write_chunked(tmp_path / "ckpt", {"rows": LAYOUTS["rows"]})
    (tmp_path / "ckpt" / ".metadata").unlink()
    result = scan_paths(tmp_path / "ckpt")
    assert len(result.problems) == 1 and "incomplete save" in result.problems[0].error


def test_missing_distcp_file(tmp_path):
    write_chunked(tmp_path / "ckpt", {"rows": LAYOUTS["rows"], "cplx": LAYOUTS["cplx"]}, files=2)
    (tmp_path / "ckpt" / "__1_0.distcp").unlink()
    result = scan_paths(tmp_path / "ckpt")
    assert sorted(p.lost for p in result.problems) == [("cplx",), ("rows",)]
    assert all("missing" in p.error for p in result.problems)


def test_range_past_the_end_of_a_file(tmp_path):
    write_chunked(tmp_path / "ckpt", {"rows": LAYOUTS["rows"]})
    f = tmp_path / "ckpt" / "__0_0.distcp"
    f.write_bytes(f.read_bytes()[:-10])
    result = scan_paths(tmp_path / "ckpt")
    assert len(result.problems) == 1 and "__0_0.distcp is truncated" in result.problems[0].error


@pytest.mark.parametrize("chunks,message", [
    ([((0, 0), (4, 4)), ((2, 0), (4, 4))], "overlap|outside"),
    ([((0, 0), (3, 4)), ((2, 0), (4, 4))], "overlap"),
    ([((0, 0), (2, 4))], "chunks hold 8 elements"),
])
def test_bad_chunk_layouts(tmp_path, chunks, message):
    t = torch.randn(6, 4)
    directory = tmp_path / "ckpt"
    # write valid chunk bytes for a tensor big enough, then describe them with the bad layout
    write_chunked(directory, {"t": (torch.randn(8, 4), chunks)})
    md = pickle.loads((directory / ".metadata").read_bytes())
    md.state_dict_metadata["t"].size = t.size()
    (directory / ".metadata").write_bytes(pickle.dumps(md))
    result = scan_paths(directory)
    assert len(result.problems) == 1
    assert __import__("re").search(message, result.problems[0].error)


@pytest.mark.parametrize("name", ["os_system", "reduce_trick_p4", "builtins_exec"])
def test_hostile_metadata(tmp_path, name):
    canary = tmp_path / "canary"
    write_chunked(tmp_path / "ckpt", {"rows": LAYOUTS["rows"]})
    data, global_name = hostile(str(canary))[name]
    (tmp_path / "ckpt" / ".metadata").write_bytes(data)
    result = scan_paths(tmp_path / "ckpt")
    assert result.problems[0].error.endswith(f"unsafe pickle global {global_name}")
    assert not canary.exists()
