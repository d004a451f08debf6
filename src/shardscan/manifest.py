"""Manifests written at save time, so that "intact" can be proven later.

A manifest is the `scan` table of a checkpoint's resume set (one row per tensor, with its
XXH3-128 checksum), written atomically as `shardscan.manifest.parquet` inside the checkpoint
directory, or beside a checkpoint file as `<file name>.shardscan.manifest.parquet`. Its
Parquet schema metadata, under the key `shardscan.manifest`, holds a JSON object:

    {"version": 1,
     "files": [{"name": "trainer_state.json", "size": 1234, "xxh3_128": "<32 hex digits>"}, ...],
     "tensor_files": [{"name": "model.safetensors", "size": 9876}, ...]}

`files` covers every other regular file of the checkpoint (JSON, tokenizer files, pickled
arguments, RNG states) by size and whole-file digest; `tensor_files` the scanned files by size
(their tensors are covered row by row). Written only for a checkpoint that scans clean, after
the save is complete, a manifest doubles as a completion marker. `check`, `audit` and
`latest` find it and verify against it without being asked: a tensor whose checksum changed, a
file that is gone, resized or whose digest changed fails the checkpoint. Readers ignore
versions newer than theirs in `files`, never the table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._typing import PathLike
from .errors import FormatError

if TYPE_CHECKING:
    import pyarrow as pa

VERSION = 1
METADATA_KEY = b"shardscan.manifest"


def manifest_path(checkpoint: Path) -> Path:
    """Where the manifest of a checkpoint directory or file lives."""
    from .layout import MANIFEST_NAME

    return checkpoint / MANIFEST_NAME if checkpoint.is_dir() else checkpoint.with_name(f"{checkpoint.name}.{MANIFEST_NAME}")


def write_manifest(path: PathLike, *, threads: int | None = None) -> Path:
    """Scans the checkpoint at `path` (a directory or a file) with every tensor hashed and
    writes its manifest atomically; returns the manifest's path. Call it once the save is
    complete, on one process only. Raises FormatError, naming the first problem, when the
    checkpoint does not scan clean (no manifest is written then), FileNotFoundError when
    `path` does not exist."""
    from .output import write_atomic
    from .scanner import scan_paths

    root = Path(path)
    result = scan_paths([root], threads=threads)
    if result.problems:
        problem = result.problems[0]
        raise FormatError(f"not writing a manifest: {problem.file}: {problem.error}", path=os.fspath(root))
    scanned = set(result.files)
    others = [name for name in _regular_files(root) if name not in scanned]
    metadata = {
        "version": VERSION,
        "files": [{"name": n, "size": s, "xxh3_128": d} for n, (s, d) in _digests(root, others, threads).items()],
        "tensor_files": [{"name": n, "size": _size(root, n)} for n in result.files if _size(root, n) is not None],
    }
    table = result.table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata).encode()})
    target = manifest_path(root)
    write_atomic(table, target)
    return target


def verify_files(table: "pa.Table", root: Path) -> list[tuple[str, str, str]]:
    """(file, problem, kind) for every file a manifest table lists that is absent, resized or whose
    digest changed, measured under the checkpoint `root` (a directory, or the file itself)."""
    metadata = _metadata(table)
    if metadata is None:
        return []
    problems: list[tuple[str, str, str]] = []
    for entry in metadata.get("tensor_files", ()):
        problems += _compare_size(root, entry)
    listed = [e for e in metadata.get("files", ()) if isinstance(e, dict) and isinstance(e.get("name"), str)]
    sized = []
    for entry in listed:
        found = _compare_size(root, entry)
        problems += found
        if not found:
            sized.append(entry)
    actual = _digests(root, [e["name"] for e in sized], None)
    for entry in sized:
        digest = actual.get(entry["name"], (None, None))[1]
        if digest != entry.get("xxh3_128"):
            problems.append((entry["name"], f"changed since the manifest was written: XXH3-128 {digest}, "
                                            f"manifest {entry.get('xxh3_128')}", "changed"))
    return problems


def _metadata(table: "pa.Table") -> dict[str, Any] | None:
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        return None  # a plain `scan -o` table: tensors only
    try:
        metadata = json.loads(raw)
    except ValueError:
        raise ValueError("manifest metadata is not valid JSON") from None
    return metadata if isinstance(metadata, dict) else None


def _compare_size(root: Path, entry: Any) -> list[tuple[str, str, str]]:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        return []
    name, size = entry["name"], _size(root, entry["name"])
    if size is None:
        return [(name, "absent: the manifest lists it", "absent")]
    if size != entry.get("size"):
        return [(name, f"changed since the manifest was written: {size} bytes, manifest {entry.get('size')}", "changed")]
    return []


def _resolve(root: Path, name: str) -> Path:
    # Names are relative to a directory; a file checkpoint's manifest names the file itself.
    return root / name if root.is_dir() else root.with_name(Path(name).name)


def _size(root: Path, name: str) -> int | None:
    try:
        return _resolve(root, name).stat().st_size
    except OSError:
        return None


def _regular_files(root: Path) -> list[str]:
    """Every regular file of a checkpoint directory, relative to it, manifests excepted."""
    if not root.is_dir():
        return []
    out = []
    for directory, subdirs, names in os.walk(root):
        subdirs.sort()
        for name in sorted(names):
            full = Path(directory, name)
            rel = os.fspath(full.relative_to(root))
            if name.startswith("shardscan.manifest.") or not full.is_file() or full.is_symlink():
                continue
            out.append(rel)
    return out


def _digests(root: Path, names: list[str], threads: int | None) -> dict[str, tuple[int, str | None]]:
    """name -> (size, whole-file XXH3-128 or None when unreadable), in one parallel batch."""
    from ._core import HashJob, NativeFile, hash_jobs

    files, kept = [], []
    for name in names:
        try:
            files.append(NativeFile(_resolve(root, name)))
            kept.append(name)
        except OSError:
            continue
    try:
        jobs = [HashJob(file=i, offset=0, nbytes=f.size) for i, f in enumerate(files)]
        results = hash_jobs(files, jobs, threads)
        return {name: (f.size, r.checksum) for name, f, r in zip(kept, files, results)}
    finally:
        for f in files:
            f.close()
