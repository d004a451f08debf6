"""Scanning: find the tensor files, let each format reader list them, hash every tensor of
every file in one parallel batch, and assemble one Arrow table."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pyarrow as pa

from . import safetensors_format
from ._core import HashJob, NativeFile, hash_jobs
from .errors import FormatError, ShardscanError
from .listing import FileProblem, Listing
from .schema import SCHEMA

#: Readers tried in order on a file's first bytes: module with sniff(head) and read(file, name).
READERS = (safetensors_format,)

#: Names that mark tensor files inside a checkpoint directory (content decides the format).
TENSOR_SUFFIXES = (".safetensors",)

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class ScanResult:
    """One scan: the table (see shardscan.schema), every file problem, and what was read."""

    table: pa.Table
    problems: tuple[FileProblem, ...]
    files: tuple[str, ...]
    non_tensor_leaves: int
    elapsed: float

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def nbytes(self) -> int:
        return sum(self.table.column("nbytes").to_pylist()) if self.table.num_rows else 0


@dataclass(frozen=True)
class Target:
    """A file to read, the name it is shown by, and the directory it belongs to."""

    path: Path
    name: str


def tensor_files(directory: Path) -> list[Path]:
    """The tensor files of a checkpoint directory, sorted by name (not recursive)."""
    return sorted(p for p in directory.iterdir() if p.name.endswith(TENSOR_SUFFIXES) and not p.is_dir())


def discover(paths: Iterable[PathLike]) -> list[Target]:
    """Expands directories into their tensor files. Raises FileNotFoundError for a path that
    does not exist."""
    targets = []
    for given in paths:
        path = Path(given)
        if not path.exists() and not path.is_symlink():
            raise FileNotFoundError(f"{given}: no such file or directory")
        if path.is_dir():
            targets += [Target(p, p.name) for p in tensor_files(path)]
        else:
            targets.append(Target(path, os.fspath(given)))
    return targets


def read_listing(target: Target) -> Listing:
    """Opens one file and hands it to the reader its first bytes call for."""
    file = NativeFile(target.path)
    head = file.read(0, min(file.size, 64))
    for reader in READERS:
        if reader.sniff(head):
            return reader.read(file, target.name)
    raise FormatError(f"{target.path}: not a safetensors or torch checkpoint file", path=str(target.path))


def scan_paths(
    paths: Sequence[PathLike] | PathLike,
    *,
    hash: bool = True,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ScanResult:
    """Scans files and checkpoint directories. Problems with single files are collected, never
    raised, so one bad shard does not hide the others; a path that does not exist raises
    FileNotFoundError. `progress(done, total)` receives bytes hashed."""
    started = time.perf_counter()
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    listings: list[Listing] = []
    problems: list[FileProblem] = []
    for target in discover(paths):
        try:
            listing = read_listing(target)
        except (ShardscanError, OSError) as exc:
            problems.append(FileProblem.of(target.name, exc, os.fspath(target.path)))
            continue
        listings.append(listing)
        problems += listing.problems

    checksums: list[str | None] = []
    if hash:
        checksums, hash_problems = _hash_all(listings, threads, progress)
        problems += hash_problems
    table = _table(listings, checksums if hash else None)
    return ScanResult(
        table=table,
        problems=tuple(problems),
        files=tuple(name for listing in listings for name in listing.names[:1]),
        non_tensor_leaves=sum(listing.non_tensor_leaves for listing in listings),
        elapsed=time.perf_counter() - started,
    )


def _hash_all(
    listings: list[Listing], threads: int | None, progress: Callable[[int, int], None] | None
) -> tuple[list[str | None], list[FileProblem]]:
    """One batch for every job of every listing: file indices are rebased onto one list."""
    files, jobs, owners = [], [], []
    for listing in listings:
        base = len(files)
        files += listing.files
        for job in listing.jobs:
            jobs.append(_rebase(job, base))
            owners.append(listing)
    total = sum(sum(listing.nbytes) for listing in listings)
    report = (lambda done: progress(done, total)) if progress else None
    results = hash_jobs(files, jobs, threads, report)
    problems: dict[str, FileProblem] = {}
    for result, listing in zip(results, owners):
        if result.checksum is None and listing.names[0] not in problems:
            problems[listing.names[0]] = FileProblem.of(listing.names[0], result.message, listing.files[0].path)
    return [r.checksum for r in results], list(problems.values())


def _rebase(job: HashJob, base: int) -> HashJob:
    if base == 0:
        return job
    return replace(job, file=job.file + base, segments=tuple(replace(s, file=s.file + base) for s in job.segments))


def _table(listings: list[Listing], checksums: list[str | None] | None) -> pa.Table:
    columns: dict[str, list] = {name: [] for name in SCHEMA.names}
    for listing in listings:
        columns["file"] += [listing.names[i] for i in listing.row_files]
        columns["key"] += listing.keys
        columns["dtype"] += listing.dtypes
        columns["shape"] += listing.shapes
        columns["offset"] += listing.offsets
        columns["nbytes"] += listing.nbytes
        columns["storage"] += listing.storages
        columns["format"] += [listing.format] * len(listing.keys)
    columns["checksum"] = checksums if checksums is not None else [None] * len(columns["key"])
    return pa.table(columns, schema=SCHEMA)


def scan(paths: Sequence[PathLike] | PathLike, *, hash: bool = True, threads: int | None = None) -> pa.Table:
    """One row per tensor (schema: shardscan.schema.SCHEMA). Raises FormatError (or
    IntegrityError, OSError) for the first file that cannot be read completely; use
    scan_paths to collect every problem instead."""
    result = scan_paths(paths, hash=hash, threads=threads)
    if result.problems:
        problem = result.problems[0]
        raise FormatError(problem.error, path=problem.file)
    return result.table
