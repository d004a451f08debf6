"""DCP chunks without elements: a rank holding an empty shard of a tensor. Saved for real by
torch.distributed.checkpoint from two gloo ranks (one process each), where rank 1's shard of
`tiny` is empty. Such a chunk needs no bytes and DCP's loader never reads it, so whatever is
missing for it (storage entry, file, record) costs nothing; a chunk that has elements still
costs its tensor. Oracle: dcp.load of the same directory, and xxhash over the saved tensors."""

from __future__ import annotations

import pickle
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
import torch.multiprocessing as mp
import xxhash

import producers
from shardscan.scanner import scan_paths

RANKS = 2


def full_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "tiny": torch.randn(1, 4, generator=g),  # sharded on dim 0 over 2 ranks: rank 1's shard is empty
        "w": torch.randn(4, 3, generator=g),  # two rows on each rank
        "cols": torch.arange(10, dtype=torch.int64).reshape(2, 5),  # sharded on dim 1: 3 and 2 columns
    }


def _save_on_rank(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=RANKS)
    try:
        mesh = init_device_mesh("cpu", (RANKS,))
        full = full_tensors()
        sd = {k: distribute_tensor(v, mesh, [Shard(1 if k == "cols" else 0)]) for k, v in full.items()}
        if rank == 1:
            assert sd["tiny"].to_local().numel() == 0  # the case under test
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.save(sd, checkpoint_id=out)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dcp-empty") / "ckpt"
    mp.spawn(_save_on_rank, args=(producers.free_port(), str(out)), nprocs=RANKS, join=True)
    return out


@pytest.fixture
def ckpt(saved, tmp_path) -> Path:
    shutil.copytree(saved, tmp_path / "ckpt")
    return tmp_path / "ckpt"


def digest(t: torch.Tensor) -> str:
    return xxhash.xxh3_128_hexdigest(t.contiguous().numpy().tobytes())


def load_with_dcp(path: Path, keys) -> dict[str, torch.Tensor]:
    like = full_tensors()
    sd = {k: torch.zeros_like(like[k]) for k in keys}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(sd, checkpoint_id=str(path))  # one process, no group: DCP reads every chunk itself
    return sd


def scanned(path: Path) -> dict[str, str]:
    result = scan_paths(path)
    assert result.ok, [p.error for p in result.problems]
    return {r["key"]: r["checksum"] for r in result.table.to_pylist()}


def _metadata(path: Path):
    return pickle.loads((path / ".metadata").read_bytes())  # written by DCP in this test


def _empty_chunk_index(md):
    (mi,) = [mi for mi in md.storage_data if mi.fqn == "tiny" and mi.offset[0] == 1]
    return mi


def test_the_save_has_an_empty_chunk_and_checks_clean(ckpt):
    md = _metadata(ckpt)
    sizes = sorted(tuple(c.sizes) for c in md.state_dict_metadata["tiny"].chunks)
    assert sizes == [(0, 4), (1, 4)]
    loaded = load_with_dcp(ckpt, full_tensors())
    assert all(torch.equal(loaded[k], v) for k, v in full_tensors().items())
    assert scanned(ckpt) == {k: digest(v) for k, v in full_tensors().items()}


def _drop_entry(path: Path) -> None:
    md = _metadata(path)
    del md.storage_data[_empty_chunk_index(md)]
    (path / ".metadata").write_bytes(pickle.dumps(md))


def _entry_names_a_missing_file(path: Path) -> None:
    md = _metadata(path)
    md.storage_data[_empty_chunk_index(md)].relative_path = "__7_0.distcp"
    (path / ".metadata").write_bytes(pickle.dumps(md))


def _range_holds_no_archive(path: Path) -> None:
    md = _metadata(path)
    md.storage_data[_empty_chunk_index(md)].length = 0
    (path / ".metadata").write_bytes(pickle.dumps(md))


@pytest.mark.parametrize("damage", [_drop_entry, _entry_names_a_missing_file, _range_holds_no_archive],
                         ids=["no-storage-entry", "missing-file", "no-record"])
def test_nothing_missing_for_an_empty_chunk_is_a_problem(ckpt, damage):
    damage(ckpt)
    loaded = load_with_dcp(ckpt, full_tensors())  # DCP itself still loads every tensor
    assert all(torch.equal(loaded[k], v) for k, v in full_tensors().items())
    assert scanned(ckpt) == {k: digest(v) for k, v in full_tensors().items()}


def test_a_missing_file_costs_only_the_tensors_with_bytes_in_it(ckpt):
    rank1 = ckpt / "__1_0.distcp"
    rank1.unlink()
    assert torch.equal(load_with_dcp(ckpt, ["tiny"])["tiny"], full_tensors()["tiny"])  # needs no byte of it
    with pytest.raises(CheckpointException, match="__1_0.distcp"):
        load_with_dcp(ckpt, ["w"])  # rank 1's rows of w were in it
    result = scan_paths(ckpt)
    assert sorted(p.lost for p in result.problems) == [("cols",), ("w",)]
    assert all("__1_0.distcp is missing" in p.error for p in result.problems)
    assert {r["key"]: r["checksum"] for r in result.table.to_pylist()} == {"tiny": digest(full_tensors()["tiny"])}


def test_a_missing_entry_for_a_chunk_with_elements_is_still_a_problem(ckpt):
    md = _metadata(ckpt)
    (mi,) = [mi for mi in md.storage_data if mi.fqn == "w" and mi.offset[0] == 2]
    del md.storage_data[mi]
    (ckpt / ".metadata").write_bytes(pickle.dumps(md))
    (problem,) = scan_paths(ckpt).problems
    assert problem.lost == ("w",) and "no storage entry for the chunk at (2, 0)" in problem.error


def test_empty_chunks_still_count_in_the_layout_checks(ckpt):
    md = _metadata(ckpt)
    tiny = md.state_dict_metadata["tiny"]
    (empty,) = [c for c in tiny.chunks if c.sizes[0] == 0]
    empty.offsets = torch.Size([2, 0])  # past the tensor's single row: outside it, even with no elements
    md.storage_data = {mi: v for mi, v in md.storage_data.items() if not (mi.fqn == "tiny" and mi.offset[0] == 1)}
    (ckpt / ".metadata").write_bytes(pickle.dumps(md))
    (problem,) = scan_paths(ckpt).problems
    assert problem.lost == ("tiny",) and "lies outside the tensor" in problem.error


def test_a_tensor_without_elements_needs_no_file(tmp_path):
    sd = {"empty": torch.empty(0, 3), "x": torch.arange(4.0)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(sd, checkpoint_id=str(tmp_path / "ckpt"), no_dist=True)
    rows = {r["key"]: r for r in scan_paths(tmp_path / "ckpt").table.to_pylist()}
    assert rows["empty"]["checksum"] == xxhash.xxh3_128_hexdigest(b"") and rows["empty"]["nbytes"] == 0
    assert rows["empty"]["shape"] == [0, 3] and rows["empty"]["file"] == str(tmp_path / "ckpt")
    assert rows["x"]["checksum"] == digest(sd["x"]) and rows["x"]["file"] == "__0_0.distcp"
