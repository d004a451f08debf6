"""Scanning: find the tensor files, let each format reader list them, hash every tensor of
every file in one parallel batch, and assemble the rows.

The rows are kept as plain columns (`Columns`) and turned into a pyarrow.Table only when asked
(`ScanResult.table`): importing pyarrow costs about 0.2 s, more than a header-only check of a
whole checkpoint, so commands that only compare keys never pay it."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Collection, Iterable, Sequence

from . import safetensors_format
from ._core import HashJob, NativeFile, hash_jobs
from .errors import FormatError, ShardscanError
from .listing import FileProblem, Listing

#: Names that mark tensor files inside a checkpoint directory (content decides the format).
TENSOR_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")

#: Files in a checkpoint directory that carry those suffixes but no tensors: the HF Trainer's
#: pickled TrainingArguments and RNG states (numpy objects), which any weights-only reader
#: refuses. Given by name on the command line, they are still read (and refused).
NOT_TENSOR_FILES = ("training_args.bin", "rng_state")

if TYPE_CHECKING:
    import pyarrow as pa

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Columns:
    """The scan's rows as parallel lists, one entry per tensor, named as in shardscan.schema."""

    file: list[str]
    key: list[str]
    dtype: list[str]
    shape: list[list[int]]
    offset: list[int]
    nbytes: list[int]
    checksum: list[str | None]
    storage: list[str | None]
    format: list[str]

    def __len__(self) -> int:
        return len(self.key)


@dataclass(frozen=True)
class ScanResult:
    """One scan: the rows, every file problem, and what was read. `files` are the paths
    given (a directory's files by their own name), each once it was listed; `per_file` holds
    (rows, non-tensor leaves) of each, in the same order (rows come file by file)."""

    columns: Columns
    problems: tuple[FileProblem, ...]
    files: tuple[str, ...]
    non_tensor_leaves: int
    elapsed: float
    per_file: tuple[tuple[int, int], ...] = field(default=(), repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def nbytes(self) -> int:
        return sum(self.columns.nbytes)

    @property
    def table(self) -> "pa.Table":
        """The rows as a pyarrow.Table with schema shardscan.schema.SCHEMA (built on each call)."""
        import pyarrow as pa

        from .schema import SCHEMA

        return pa.table({name: getattr(self.columns, name) for name in SCHEMA.names}, schema=SCHEMA)

    @classmethod
    def combine(cls, parts: Sequence["ScanResult"]) -> "ScanResult":
        """One ScanResult of scans made separately (say, one per shard on different machines),
        as if their paths had been given to one scan_paths call in this order; `elapsed` is the
        longest part's."""
        columns = Columns(**{f.name: [v for part in parts for v in getattr(part.columns, f.name)] for f in fields(Columns)})
        return cls(
            columns=columns,
            problems=tuple(p for part in parts for p in part.problems),
            files=tuple(name for part in parts for name in part.files),
            non_tensor_leaves=sum(part.non_tensor_leaves for part in parts),
            elapsed=max((part.elapsed for part in parts), default=0.0),
            per_file=tuple(count for part in parts for count in part.per_file),
        )

    def select(self, names: Collection[str]) -> "ScanResult":
        """The part of this scan read from `names` (files and DCP directories, named as in
        `files` and in problems: as they were given to scan_paths): their rows, problems and
        counts, in scan order; `elapsed` stays that of the whole scan. Lets one scan of many
        checkpoints' files serve each checkpoint. Raises ValueError for a ScanResult built
        without `per_file`."""
        if len(self.per_file) != len(self.files):
            raise ValueError("this ScanResult has no per-file counts to select by")
        wanted = set(names)
        rows: list[int] = []
        kept: list[int] = []
        start = 0
        for i, (name, (count, _)) in enumerate(zip(self.files, self.per_file)):
            if name in wanted:
                rows.extend(range(start, start + count))
                kept.append(i)
            start += count
        columns = Columns(**{f.name: [getattr(self.columns, f.name)[r] for r in rows] for f in fields(Columns)})
        return ScanResult(
            columns=columns,
            problems=tuple(p for p in self.problems if p.file in wanted),
            files=tuple(self.files[i] for i in kept),
            non_tensor_leaves=sum(self.per_file[i][1] for i in kept),
            elapsed=self.elapsed,
            per_file=tuple(self.per_file[i] for i in kept),
        )


@dataclass(frozen=True)
class Target:
    """A file to read, the name it is shown by, and the directory it belongs to."""

    path: Path
    name: str


def tensor_files(directory: Path) -> list[Path]:
    """The tensor files of a checkpoint directory, sorted by name (not recursive)."""
    return sorted(
        p for p in directory.iterdir()
        if p.name.endswith(TENSOR_SUFFIXES) and not p.name.startswith(NOT_TENSOR_FILES) and not p.is_dir()
    )


def is_dcp_dir(path: Path) -> bool:
    """A torch.distributed.checkpoint directory: a .metadata file or any *.distcp file."""
    try:
        return (path / ".metadata").is_file() or any(p.name.endswith(".distcp") for p in path.iterdir())
    except OSError:
        return False


def discover(paths: Iterable[PathLike]) -> list[Target]:
    """Expands directories into their tensor files. Raises FileNotFoundError for a path that
    does not exist."""
    targets = []
    for given in paths:
        path = Path(given)
        if not path.exists() and not path.is_symlink():
            raise FileNotFoundError(f"{given}: no such file or directory")
        if path.is_dir() and is_dcp_dir(path):  # a DCP checkpoint is read as a whole
            targets.append(Target(path, os.fspath(given)))
        elif path.is_dir():
            targets += [Target(p, p.name) for p in tensor_files(path)]
        else:
            targets.append(Target(path, os.fspath(given)))
    return targets


def read_listing(target: Target) -> Listing:
    """Opens one file and hands it to the reader its first bytes call for."""
    if target.path.is_dir():  # only DCP directories become targets
        from . import dcp_format

        return dcp_format.read_dir(target.path, target.name)
    file = NativeFile(target.path)
    head = file.read(0, min(file.size, 64))
    if safetensors_format.sniff(head):
        return safetensors_format.read(file, target.name)
    # Imported only when a torch file shows up: they bring the pickle machinery.
    from . import torch_format

    if torch_format.sniff(head):
        return torch_format.read(file, target.name)
    if target.path.name.endswith(".safetensors"):
        # Named safetensors but its first bytes do not say so: the validator names the
        # actual violation (too small, header too large, not starting with '{').
        return safetensors_format.read(file, target.name)
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
    targets = []
    for given in paths:
        found = discover([given])
        if not found:
            problems.append(FileProblem(os.fspath(given), "no tensor files found"))
        targets += found
    for target in targets:
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
    return ScanResult(
        columns=_columns(listings, checksums if hash else None),
        problems=tuple(problems),
        files=tuple(name for listing in listings for name in listing.names[:1]),
        non_tensor_leaves=sum(listing.non_tensor_leaves for listing in listings),
        elapsed=time.perf_counter() - started,
        per_file=tuple((len(listing.keys), listing.non_tensor_leaves) for listing in listings),
    )


def _hash_all(
    listings: list[Listing], threads: int | None, progress: Callable[[int, int], None] | None
) -> tuple[list[str | None], list[FileProblem]]:
    """One batch for every job of every listing: file indices are rebased onto one list."""
    files, jobs, owners = [], [], []
    for listing in listings:
        base = len(files)
        files += listing.files
        for job in listing.row_jobs():
            jobs.append(_rebase(job, base))
            owners.append(listing)
    # Jobs that only verify (CRCs of records no row covers whole) ride in the same batch,
    # after the row jobs; each listing then judges its own results.
    nrows, base = len(jobs), 0
    for listing in listings:
        jobs += [_rebase(job, base) for job in listing.check_jobs]
        base += len(listing.files)
    total = sum(sum(listing.nbytes) for listing in listings)
    report = (lambda done: progress(done, total)) if progress else None
    results = hash_jobs(files, jobs, threads, report)
    results, check_results = results[:nrows], results[nrows:]
    verified: list[FileProblem] = []
    row_at = check_at = 0
    for listing in listings:
        nchecks = len(listing.check_jobs)
        verified += listing.verify(results[row_at : row_at + len(listing.keys)], check_results[check_at : check_at + nchecks])
        row_at += len(listing.keys)
        check_at += nchecks
    problems: dict[str, FileProblem] = {}
    for result, listing in zip(results, owners):
        if result.checksum is None and listing.names[0] not in problems:
            problems[listing.names[0]] = FileProblem.of(listing.names[0], result.message, listing.files[0].path)
    return [r.checksum for r in results], list(problems.values()) + verified


def _rebase(job: HashJob, base: int) -> HashJob:
    if base == 0:
        return job
    return replace(job, file=job.file + base, segments=tuple(replace(s, file=s.file + base) for s in job.segments))


def _columns(listings: list[Listing], checksums: list[str | None] | None) -> Columns:
    columns = Columns([], [], [], [], [], [], [], [], [])
    for listing in listings:
        columns.file.extend(listing.names[i] for i in listing.row_files)
        columns.key.extend(listing.keys)
        columns.dtype.extend(listing.dtypes)
        columns.shape.extend(listing.shapes)
        columns.offset.extend(listing.offsets)
        columns.nbytes.extend(listing.nbytes)
        columns.storage.extend(listing.storages)
        columns.format.extend([listing.format] * len(listing.keys))
    columns.checksum.extend(checksums if checksums is not None else [None] * len(columns.key))
    return columns


def scan(paths: Sequence[PathLike] | PathLike, *, hash: bool = True, threads: int | None = None) -> "pa.Table":
    """One row per tensor (schema: shardscan.schema.SCHEMA). Raises FileNotFoundError for a
    path that does not exist, and FormatError (its .path the file, its message the problem)
    for the first file that cannot be read completely, whatever the cause; use scan_paths to
    collect every problem, each with its own message."""
    result = scan_paths(paths, hash=hash, threads=threads)
    if result.problems:
        problem = result.problems[0]
        raise FormatError(problem.error, path=problem.file)
    return result.table
