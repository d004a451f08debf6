"""scan() on real safetensors checkpoints, checked against torch/safetensors and xxhash."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import shardscan
from shardscan.errors import FormatError
from shardscan.scanner import ScanResult, scan_paths

from oracle import checksum, tensor_checksum


@pytest.fixture()
def sharded(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """Two shards plus an index, written by the real safetensors library."""
    torch.manual_seed(0)
    tensors = {
        "model.embed_tokens.weight": torch.randn(64, 16, dtype=torch.bfloat16),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(16, 16),
        "model.layers.0.self_attn.q_proj.bias": torch.randn(16, dtype=torch.float16),
        "model.layers.1.mlp.up_proj.weight": torch.randn(32, 16),
        "model.norm.weight": torch.ones(16),
        "step": torch.tensor(7, dtype=torch.int64),
    }
    names = list(tensors)
    save_file({k: tensors[k] for k in names[:3]}, tmp_path / "model-00001-of-00002.safetensors", metadata={"format": "pt"})
    save_file({k: tensors[k] for k in names[3:]}, tmp_path / "model-00002-of-00002.safetensors")
    (tmp_path / "config.json").write_text("{}")
    return tmp_path, tensors


def test_directory_scan_matches_safetensors_and_xxhash(sharded):
    directory, tensors = sharded
    table = shardscan.scan(directory)
    assert table.schema == shardscan.SCHEMA
    rows = {row["key"]: row for row in table.to_pylist()}
    assert set(rows) == set(tensors)
    for shard in sorted(directory.glob("*.safetensors")):
        with safe_open(shard, framework="pt") as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                row = rows[key]
                assert row["file"] == shard.name
                assert row["shape"] == list(tensor.shape)
                assert row["dtype"] == str(tensor.dtype).removeprefix("torch.")
                assert row["nbytes"] == tensor.numel() * tensor.element_size()
                assert row["checksum"] == tensor_checksum(tensor)
                assert row["format"] == "safetensors"
                # offset is the absolute position of the bytes in the file
                with open(shard, "rb") as raw:
                    raw.seek(row["offset"])
                    assert checksum(raw.read(row["nbytes"])) == row["checksum"]


def test_single_file_keeps_the_given_name(sharded):
    directory, _ = sharded
    given = directory / "model-00002-of-00002.safetensors"
    table = shardscan.scan(given)
    assert set(table.column("file").to_pylist()) == {str(given)}


def test_no_hash_leaves_checksums_null(sharded):
    directory, tensors = sharded
    table = shardscan.scan(directory, hash=False)
    assert table.num_rows == len(tensors)
    assert table.column("checksum").null_count == table.num_rows


def test_thread_count_does_not_change_the_table(sharded):
    directory, _ = sharded
    tables = [shardscan.scan(directory, threads=n) for n in (1, 2, 8)]
    assert tables[0].equals(tables[1]) and tables[0].equals(tables[2])


def test_truncated_shard_keeps_intact_rows_and_names_the_rest(sharded):
    directory, tensors = sharded
    shard = directory / "model-00001-of-00002.safetensors"
    with safe_open(shard, framework="pt") as f:
        keys = list(f.keys())
    header_len = int.from_bytes(shard.read_bytes()[:8], "little")
    header = json.loads(shard.read_bytes()[8 : 8 + header_len])
    spans = sorted((v["data_offsets"], k) for k, v in header.items() if k != "__metadata__")
    # Cut in the middle of the second tensor: the first survives, the second is cut, the rest lost.
    (begin, end), cut_key = spans[1]
    with open(shard, "r+b") as f:
        f.truncate(8 + header_len + (begin + end) // 2)
    result = scan_paths(directory)
    assert not result.ok
    (problem,) = result.problems
    assert problem.file == shard.name
    assert "truncated" in problem.error
    assert problem.intact == (spans[0][1],)
    assert problem.cut == (cut_key,)
    assert set(problem.lost) == set(keys) - {spans[0][1], cut_key}
    present = set(result.columns.key)
    assert spans[0][1] in present and cut_key not in present
    with pytest.raises(FormatError) as raised:
        shardscan.scan(directory)
    assert raised.value.path == shard.name


def test_table_writers_round_trip(sharded, tmp_path):
    import pyarrow.csv
    import pyarrow.feather
    import pyarrow.parquet

    from shardscan.output import write_atomic

    directory, _ = sharded
    table = shardscan.scan(directory)
    write_atomic(table, tmp_path / "m.parquet")
    assert pyarrow.parquet.read_table(tmp_path / "m.parquet").equals(table)
    write_atomic(table, tmp_path / "m.arrow")
    assert pyarrow.feather.read_table(tmp_path / "m.arrow").equals(table)
    write_atomic(table, tmp_path / "m.csv")
    csv = pyarrow.csv.read_csv(tmp_path / "m.csv")
    assert csv.column("checksum").to_pylist() == table.column("checksum").to_pylist()
    assert [json.loads(s) for s in csv.column("shape").to_pylist()] == table.column("shape").to_pylist()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ValueError):
        write_atomic(table, tmp_path / "m.xlsx")


def test_missing_path_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        scan_paths(tmp_path / "nope")


def test_unknown_file_is_a_problem_not_a_crash(tmp_path):
    (tmp_path / "notes.safetensors").write_bytes(b"hello, this is not a checkpoint")
    result = scan_paths(tmp_path)
    (problem,) = result.problems
    assert problem.file == "notes.safetensors"
    assert len(result.columns) == 0
    assert isinstance(result.table, pa.Table)


def test_select_is_a_scan_of_those_paths_alone(sharded: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path) -> None:
    """One scan of several paths, cut by path, equals scanning each path alone: rows in
    order, the problems of that path only, counts. A cut shard keeps its problem."""
    directory, _ = sharded
    shards = sorted(str(p) for p in directory.glob("*.safetensors"))
    broken = tmp_path / "broken.safetensors"
    data = Path(shards[0]).read_bytes()
    broken.write_bytes(data[: len(data) - 8])
    paths = [*shards, str(broken)]
    whole = scan_paths(paths)
    assert [p.file for p in whole.problems] == [str(broken)]
    for chosen in ([shards[1]], [shards[0], str(broken)], []):
        part, alone = whole.select(chosen), scan_paths(chosen)
        assert part.columns == alone.columns and part.problems == alone.problems
        assert (part.files, part.per_file, part.non_tensor_leaves) == (alone.files, alone.per_file, alone.non_tensor_leaves)


def test_directory_without_tensor_files_is_a_problem(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    result = scan_paths(tmp_path)
    assert [(p.file, p.error) for p in result.problems] == [(str(tmp_path), "no tensor files found")]


def test_combined_scans_equal_one_scan(sharded):
    # Scans of single shards (as Ray tasks make them) combine into the scan of all of them.
    directory, _ = sharded
    (directory / "broken.safetensors").write_bytes(b"\x09\x00\x00\x00\x00\x00\x00\x00{}")  # header past EOF
    paths = [str(p) for p in sorted(directory.glob("*.safetensors"))]
    whole = scan_paths(paths)
    combined = ScanResult.combine([scan_paths([p]) for p in paths])
    assert [p.file for p in whole.problems] == [paths[0]]  # broken.safetensors sorts first
    assert combined.table.equals(whole.table)
    assert (combined.problems, combined.files, combined.per_file) == (whole.problems, whole.files, whole.per_file)
    assert combined.select(paths[:1]).table.equals(scan_paths(paths[:1]).table)


def test_names_holding_a_nul_or_any_unicode_read_as_safetensors_reads_them(tmp_path: Path) -> None:
    names = ["a\0b", "", "\0", "é.layers.0.w", "x" * 300]
    save_file({name: torch.full((2,), i, dtype=torch.float32) for i, name in enumerate(names)}, tmp_path / "m.safetensors")
    with safe_open(tmp_path / "m.safetensors", "pt") as handle:
        expected = list(handle.keys())
    table = shardscan.scan(tmp_path / "m.safetensors")
    assert sorted(table.column("key").to_pylist()) == sorted(expected) == sorted(names)
