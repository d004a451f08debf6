"""The recipe for adding a format (docs/architecture.md), followed by a test-only format: one
Format declaration and one registry entry make scan, check, discover and audit know it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import xxhash

import shardscan
from shardscan import formats
from shardscan._core import HashJob, NativeFile
from shardscan.discover import find_checkpoints
from shardscan.errors import FormatError
from shardscan.formats import FileProblem, Format, Job, Listing

MAGIC = b"TOYCKPT\n"


def sniff(head: bytes) -> bool:
    return head.startswith(MAGIC)


def read(file: NativeFile, name: str) -> Listing:
    """A toy file: MAGIC, one JSON line {key: [offset, nbytes]}, then the float32 data."""
    line = file.read(len(MAGIC), min(file.size - len(MAGIC), 4096)).split(b"\n", 1)[0]
    try:
        entries = json.loads(line)
    except ValueError:
        raise FormatError("toy header is not JSON", path=file.path) from None
    listing = Listing(format="toy", files=[file], names=[name])
    for key, (offset, nbytes) in entries.items():
        if offset + nbytes > file.size:
            listing.problems.append(FileProblem(name, FormatError(f"{key} is cut short", path=file.path), cut=(key,)))
            continue
        job = Job(HashJob(file=0, offset=offset, nbytes=nbytes))
        listing.add(job, key=key, dtype="float32", shape=[nbytes // 4], offset=offset, nbytes=nbytes)
    return listing


TOY = Format("toy", suffixes=(".toy",), sniff=sniff, read=read)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setattr(formats, "FORMATS", [*formats.FORMATS, TOY])


def write_toy(path: Path, tensors: dict[str, bytes]) -> None:
    header_len = len(MAGIC) + 1 + len(json.dumps({k: [10**9, 10**9] for k in tensors})) + 1
    entries, offset = {}, header_len
    for key, data in tensors.items():
        entries[key] = [offset, len(data)]
        offset += len(data)
    head = MAGIC + json.dumps(entries).encode() + b"\n"
    path.write_bytes(head.ljust(header_len, b" ") + b"".join(tensors.values()))


TENSORS = {"layer.0.weight": bytes(range(64)), "layer.1.weight": b"\x01" * 32}


def test_a_registered_format_is_scanned_hashed_and_discovered(registered, tmp_path):
    write_toy(tmp_path / "weights.toy", TENSORS)
    table = shardscan.scan(tmp_path)
    assert table.column("format").to_pylist() == ["toy", "toy"]
    assert dict(zip(table.column("key").to_pylist(), table.column("checksum").to_pylist())) == {
        key: xxhash.xxh3_128_hexdigest(data) for key, data in TENSORS.items()
    }
    assert shardscan.check(tmp_path).ok
    [found] = find_checkpoints(tmp_path / "weights.toy").checkpoints
    assert found.kind == "toy"


def test_its_problems_reach_the_report(registered, tmp_path):
    path = tmp_path / "weights.toy"
    write_toy(path, TENSORS)
    path.write_bytes(path.read_bytes()[:-8])
    report = shardscan.check(tmp_path)
    assert not report.ok
    assert [(e.file, e.error, e.cut) for e in report.errors] == [("weights.toy", "layer.1.weight is cut short",
                                                                    ("layer.1.weight",))]


def test_unregistered_it_is_no_checkpoint(tmp_path):
    write_toy(tmp_path / "weights.toy", TENSORS)
    result = shardscan.scan_paths(tmp_path / "weights.toy")
    assert [p.error for p in result.problems] == ["not a safetensors or torch checkpoint file"]
