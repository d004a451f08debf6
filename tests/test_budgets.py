"""Bounded work and memory: small hostile files that claim enormous work. Each is built here by
a generator, scanned by the real CLI in a child process, and the child's own cost (peak RSS and
CPU, from getrusage) is compared with torch's weights-only load of the same file measured in the
same test, or with the cost of a tiny valid file; never with a fixed wall-clock bar.

Budgets are shardscan.formats.base.BUDGET; docs/robustness.md ("Budgets") lists them."""

from __future__ import annotations

import json
import pickle
import sys

import pytest
import xxhash

from hostile_torch import measure, shardscan, state_dict, tensor, text, torch_load, torch_zip
from shardscan.formats.base import BUDGET
from shardscan.scanner import scan_paths

MiB = 1 << 20


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """What `scan` of a one-tensor valid file costs: Python, the package, pyarrow."""
    tmp = tmp_path_factory.mktemp("baseline")
    path = torch_zip(tmp / "ok.pt", state_dict({"w": tensor("0", 4, (4,), (1,))}), {"0": bytes(range(4))})
    use = measure(shardscan("scan", "--list", str(path)), tmp)
    assert use.returncode == 0, use.stdout + use.stderr
    return use


def within_budget(use, baseline, file_size: int, torch_use=None) -> None:
    """Memory proportional to the file (plus what the budgets' floors allow: 65,536 rows cost
    about 40 MiB); CPU a small multiple of torch's weights-only load of the same file (torch's
    import alone costs more than our start-up), else of a valid scan."""
    assert use.peak_rss <= baseline.peak_rss + 64 * MiB + 16 * file_size, (use.peak_rss, baseline.peak_rss)
    bar = torch_use.cpu if torch_use is not None else baseline.cpu
    assert use.cpu <= 3 * bar + 1.0, (use.cpu, bar)


def test_expanded_view_is_a_problem_naming_the_expansion(tmp_path, baseline):
    # A 1-byte storage viewed as 2^40 elements (stride 0): torch builds the view without
    # allocating; hashing it byte by byte would take hours.
    path = torch_zip(tmp_path / "expanded.pt", state_dict({"w": tensor("0", 1, (1 << 40,), (0,))}), {"0": b"\x07"})
    torch_use = measure(torch_load(path), tmp_path)
    assert torch_use.stdout.startswith("loaded"), torch_use.stdout
    use = measure(shardscan("scan", str(path)), tmp_path)
    assert use.returncode == 1, use.stdout + use.stderr
    assert "expanded view (stride (0,))" in use.stdout and "budget" in use.stdout, use.stdout
    within_budget(use, baseline, path.stat().st_size, torch_use)


def test_small_expanded_view_hashes_its_logical_bytes(tmp_path):
    # Inside the budget an expanded view is hashed like t.contiguous(): the oracle is torch's.
    import torch

    path = torch_zip(tmp_path / "small.pt", state_dict({"w": tensor("0", 3, (3, 1000), (1, 0))}), {"0": b"\x01\x02\x03"})
    expected = torch.load(path, weights_only=True)["w"].contiguous().numpy().tobytes()
    result = scan_paths([path])
    assert result.ok, result.problems
    assert result.columns.checksum == [xxhash.xxh3_128_hexdigest(expected)]


def test_float64_view_of_2_61_elements_is_a_problem(tmp_path, baseline):
    # 2^61 float64 elements (2^64 bytes) over one stored element: torch loads it; the C engine
    # could not even count its bytes. A problem of that file, and the others are still read.
    bad = torch_zip(tmp_path / "huge.pt", state_dict({"w": tensor("0", 1, (1 << 61,), (0,), storage="DoubleStorage")}),
                    {"0": bytes(8)})
    good = torch_zip(tmp_path / "good.pt", state_dict({"w": tensor("0", 4, (4,), (1,))}), {"0": bytes(4)})
    use = measure(shardscan("scan", str(bad), str(good)), tmp_path)
    assert use.returncode == 1, use.stdout + use.stderr
    failed = [line for line in use.stdout.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and failed[0].startswith(f"{bad}: FAILED") and "expanded view" in failed[0], use.stdout
    assert "2 files, 1 tensor," in use.stdout
    within_budget(use, baseline, bad.stat().st_size)


def test_one_storage_referenced_n_squared_times(tmp_path, baseline):
    # memo[0] = the tensor; memo[1] = [memo[0]] * N; the value = [memo[1]] * N: N*N rows by path
    # from a 4.6 KB file.
    n = 1150
    inner = b"](" + tensor("0", 1, (1,), (1,)) + b"q\x00" + b"h\x00" * (n - 1) + b"eq\x01"
    outer = b"](" + inner + b"h\x01" * (n - 1) + b"e"
    pkl = b"\x80\x02}" + text("w") + outer + b"s."
    path = torch_zip(tmp_path / "memo.pt", pkl, {"0": b"\x01"})
    torch_use = measure(torch_load(path), tmp_path)
    assert torch_use.stdout.startswith("loaded"), torch_use.stdout
    for args in (["scan"], ["scan", "--no-hash"]):
        use = measure(shardscan(*args, str(path)), tmp_path)
        assert use.returncode == 1, use.stdout + use.stderr
        assert f"more than {BUDGET.rows(len(pkl))} values when flattened" in use.stdout, use.stdout
        within_budget(use, baseline, path.stat().st_size, torch_use)


def test_long_key_reused_at_every_level(tmp_path, baseline):
    # One 1 MB key string, memoized, is the key of 190 nested dicts: a 190 MB key path, and
    # gigabytes with --json --list, from a 1 MB file.
    levels = 190
    key = "k" * MiB
    pkl = b"\x80\x02}" + text(key) + b"q\x00"
    pkl += (b"}" + b"h\x00") * (levels - 1) + tensor("0", 1, (1,), (1,)) + b"s" * levels + b"."
    path = torch_zip(tmp_path / "keys.pt", pkl, {"0": b"\x01"})
    torch_use = measure(torch_load(path), tmp_path)
    assert torch_use.stdout.startswith("loaded"), torch_use.stdout
    use = measure(shardscan("scan", "--json", "--list", str(path)), tmp_path)
    assert use.returncode == 1, use.stdout + use.stderr
    payload = json.loads(use.stdout)
    assert len(use.stdout) < 4096 and payload["rows"] == []
    assert "key paths longer than" in payload["errors"][0]["error"]
    within_budget(use, baseline, path.stat().st_size, torch_use)


@pytest.mark.parametrize("dims, bits", [(2000, 2039), (8, 2039), (65, 1)])
def test_huge_integer_shapes_are_refused_before_arithmetic(tmp_path, baseline, dims, bits):
    # N dimensions of 2039-bit integers: torch refuses them ("Overflow when unpacking long");
    # multiplying them first took seconds and then crashed. 65 one-bit dimensions pass the
    # dimension budget.
    value = (1 << (bits - 1)) + 1 if bits > 1 else 1
    path = torch_zip(tmp_path / "bigints.pt", state_dict({"w": tensor("0", 1, [value] * dims, [0] * dims)}), {"0": b"\x01"})
    torch_use = measure(torch_load(path), tmp_path)
    use = measure(shardscan("scan", "--no-hash", str(path)), tmp_path)
    assert use.returncode == 1, use.stdout + use.stderr
    why = "dimensions (budget 64)" if dims > BUDGET.max_dims else "-bit integer (budget: int64"
    assert why in use.stdout, use.stdout
    if bits > 63:
        assert torch_use.stdout.startswith("refused"), torch_use.stdout
    within_budget(use, baseline, path.stat().st_size, torch_use)


def test_shape_over_int64_is_refused_like_torch(tmp_path):
    # (2^32, 2^32) over one byte: each size fits int64, their product does not; torch refuses
    # the file, so a header-only check must not call it OK.
    import torch

    path = torch_zip(tmp_path / "over.pt", state_dict({"w": tensor("0", 1, (1 << 32, 1 << 32), (0, 0))}), {"0": b"\x01"})
    with pytest.raises(RuntimeError, match="overflow"):
        torch.load(path, weights_only=True)
    for hashing in (True, False):
        result = scan_paths([path], hash=hashing)
        assert [p.error for p in result.problems] == [
            f"w: view of shape ({1 << 32}, {1 << 32}) has {1 << 64} elements, more than int64 counts (torch refuses it)"]


_DCP_LOAD = """
import sys, torch, torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
md = FileSystemReader(sys.argv[1]).read_metadata()
if sys.argv[2] == "load":
    state = {k: torch.empty(tuple(v.size), dtype=v.properties.dtype) for k, v in md.state_dict_metadata.items()}
    dcp.load(state, checkpoint_id=sys.argv[1])
print("loaded", len(md.state_dict_metadata))
"""


def _dcp_metadata(path, state_dict_metadata, storage_data):
    """A .metadata written as DCP writes it: pickle of its own dataclasses (the memo shares an
    entry object that several names hold)."""
    from torch.distributed.checkpoint.metadata import Metadata

    path.mkdir(exist_ok=True)
    (path / ".metadata").write_bytes(pickle.dumps(Metadata(state_dict_metadata=state_dict_metadata,
                                                           storage_data=storage_data)))
    return path


def test_names_sharing_one_entry_of_4096_chunks(tmp_path, baseline):
    # 200 names hold one TensorStorageMetadata of 4096 chunks: the overlap check of its chunks
    # runs once for the entry object, as a sweep; pairwise per name it took 45 minutes.
    import torch
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, TensorProperties, TensorStorageMetadata

    chunks = [ChunkStorageMetadata(torch.Size([i, 0]), torch.Size([1, 8])) for i in range(4096)]
    entry = TensorStorageMetadata(TensorProperties(dtype=torch.float32), torch.Size([4096, 8]), chunks)
    path = _dcp_metadata(tmp_path / "dcp", {f"t{i}": entry for i in range(200)}, {})
    torch_use = measure([sys.executable, "-c", _DCP_LOAD, str(path), "metadata"], tmp_path)
    assert torch_use.stdout.startswith("loaded 200"), torch_use.stdout + torch_use.stderr
    use = measure(shardscan("scan", "--json", str(path)), tmp_path)
    assert use.returncode == 1, use.stdout + use.stderr
    errors = json.loads(use.stdout)["errors"]
    assert len(errors) == 200 and all("no storage entry for the chunk at (0, 0)" in e["error"] for e in errors)
    within_budget(use, baseline, (path / ".metadata").stat().st_size, torch_use)


@pytest.mark.parametrize("offsets", [[(0, 0), (4095, 0)], [(0, 0), (0, 4)], [(0, 0), (1, 0)]])
def test_overlap_sweep_finds_what_pairs_would(offsets):
    # The sweep answers as comparing every pair does, for rows, columns and a grid.
    from shardscan.formats.dcp import _overlaps, first_overlap

    grid = [((r, c), (1, 4)) for r in range(0, 4096, 64) for c in (0, 4)]
    for extra_at in offsets:
        boxes = grid + [(extra_at, (2, 4))]
        pairs = any(_overlaps(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
        assert (first_overlap(boxes) is not None) == pairs
    assert first_overlap(grid) is None


def test_chunks_over_one_expanded_view_spend_the_segment_budget(tmp_path, baseline):
    # Two column chunks of a (300000, 2) tensor point at one 1.5 KB archive of
    # torch.zeros(1).expand(300000, 1): 600,000 segments from 2.3 KB of files. torch loads it.
    import io

    import torch
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, MetadataIndex, TensorProperties,
                                                       TensorStorageMetadata)

    n = 300_000
    buf = io.BytesIO()
    torch.save(torch.zeros(1).expand(n, 1), buf)
    path = tmp_path / "dcp"
    path.mkdir()
    (path / "__0_0.distcp").write_bytes(buf.getvalue())
    chunks = [ChunkStorageMetadata(torch.Size([0, c]), torch.Size([n, 1])) for c in (0, 1)]
    entry = TensorStorageMetadata(TensorProperties(dtype=torch.float32), torch.Size([n, 2]), chunks)
    storage = {MetadataIndex("w", c.offsets): _StorageInfo("__0_0.distcp", 0, len(buf.getvalue())) for c in chunks}
    _dcp_metadata(path, {"w": entry}, storage)
    torch_use = measure([sys.executable, "-c", _DCP_LOAD, str(path), "load"], tmp_path)
    assert torch_use.stdout.startswith("loaded 1"), torch_use.stdout + torch_use.stderr
    use = measure(shardscan("scan", str(path)), tmp_path)
    assert use.returncode == 1, use.stdout + use.stderr
    assert "needs more segments to stream than the directory's budget" in use.stdout, use.stdout
    files = sum(p.stat().st_size for p in path.iterdir())
    within_budget(use, baseline, files, torch_use)


_SAFE_OPEN = """
import sys
from safetensors import safe_open
with safe_open(sys.argv[1], "np") as f:
    print("loaded", len(list(f.keys())))
"""


def test_hundreds_of_thousands_of_tensors_cost_memory_proportional_to_the_file(tmp_path, baseline):
    # 300,000 one-byte tensors: a 22 MB header. Peak memory stays a small multiple of the file
    # when hashing (native jobs run in batches) and with --list / --json --list (rows streamed,
    # never a list of dicts); CPU a small multiple of safetensors' own parse of the header.
    import struct

    n = 300_000
    header = "{" + ",".join(f'"layer.{i:07d}.w":{{"dtype":"U8","shape":[1],"data_offsets":[{i},{i + 1}]}}'
                            for i in range(n)) + "}"
    path = tmp_path / "many.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + bytes(n))
    reference = measure([sys.executable, "-c", _SAFE_OPEN, str(path)], tmp_path)
    assert reference.stdout.startswith(f"loaded {n}"), reference.stdout + reference.stderr
    for args in (["--no-hash"], [], ["--list"], ["--json", "--list"]):
        use = measure(shardscan("scan", *args, str(path)), tmp_path)
        assert use.returncode == 0, use.stderr
        lines = use.stdout.count("\n")
        assert lines == (n if args == ["--list"] else 1)  # --list: the count goes to stderr
        assert use.peak_rss <= baseline.peak_rss + 64 * MiB + 12 * path.stat().st_size, (args, use.peak_rss)
        assert use.cpu <= 10 * reference.cpu + 2 * baseline.cpu, (args, use.cpu, reference.cpu)
