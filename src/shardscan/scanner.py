"""Scanning: find the tensor files, let each format reader list them, hash every tensor of
every file in one parallel batch, and assemble the rows.

The rows are kept as plain columns (`Columns`) and turned into a pyarrow.Table only when asked
(`ScanResult.table`): importing pyarrow costs about 0.2 s, more than a header-only check of a
whole checkpoint, so commands that only compare keys never pay it."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Collection, Iterable, Mapping, Sequence

from . import _gc
from . import formats
from ._core import HashJob, HashResult, NativeFile, error_for, hash_jobs
from ._typing import PathLike
from .errors import FormatError, ShardscanError
from .formats import FileProblem, Listing
from .schema import HASHED, NAMES

if TYPE_CHECKING:
    import pyarrow as pa



class Columns:
    """The scan's rows: one list per column of shardscan.schema, read as attributes
    (`columns.key`, `columns.checksum`, ...), one entry per tensor."""

    __slots__ = ("_lists",)

    def __init__(self, lists: Mapping[str, list] | None = None, *, copy: bool = True) -> None:
        # copy=False: the caller hands its lists over (a scan's rows are not held twice).
        self._lists = {name: (list(lists[name]) if copy else lists[name]) if lists else [] for name in NAMES}

    def __getattr__(self, name: str) -> list:
        lists = object.__getattribute__(self, "_lists")
        try:
            return lists[name]
        except KeyError:
            raise AttributeError(name) from None

    def __reduce__(self) -> tuple:
        return Columns, (self._lists,)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Columns) and self._lists == other._lists

    def __repr__(self) -> str:
        return f"Columns({len(self)} rows)"

    def __len__(self) -> int:
        return len(self._lists["key"])

    def as_dict(self) -> dict[str, list]:
        return dict(self._lists)

    def take(self, rows: Sequence[int]) -> "Columns":
        """The given rows, in that order."""
        return Columns({name: [values[r] for r in rows] for name, values in self._lists.items()})

    @classmethod
    def concat(cls, parts: Iterable["Columns"]) -> "Columns":
        parts = list(parts)
        return cls({name: [v for part in parts for v in part._lists[name]] for name in NAMES})


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

        lists = self.columns.as_dict()
        try:
            return pa.table(lists, schema=SCHEMA)
        except UnicodeEncodeError:
            # Arrow strings are UTF-8, which a lone surrogate (a pickled key, a file name that
            # is not UTF-8) cannot be: such a character is written as its escape, "\udcff".
            return pa.table({name: [arrow_text(v) for v in values] for name, values in lists.items()}, schema=SCHEMA)

    @classmethod
    def combine(cls, parts: Sequence["ScanResult"]) -> "ScanResult":
        """One ScanResult of scans made separately (say, one per shard on different machines),
        as if their paths had been given to one scan_paths call in this order; `elapsed` is the
        longest part's."""
        return cls(
            columns=Columns.concat(part.columns for part in parts),
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
        return ScanResult(
            columns=self.columns.take(rows),
            problems=tuple(p for p in self.problems if p.file in wanted),
            files=tuple(self.files[i] for i in kept),
            non_tensor_leaves=sum(self.per_file[i][1] for i in kept),
            elapsed=self.elapsed,
            per_file=tuple(self.per_file[i] for i in kept),
        )


def arrow_text(value: object) -> object:
    """A string as Arrow can store it: lone surrogates (which UTF-8 cannot encode) as their
    escapes ("\\udcff"); any other value unchanged."""
    if type(value) is str:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


@dataclass(frozen=True)
class Target:
    """A file (or DCP directory) to read and the name it is shown by; `objects`: its
    framework unpickles it in full (shardscan.resume's "objects" role)."""

    path: Path
    name: str
    objects: bool = False


def discover(paths: Sequence[PathLike], *, under_given: bool | None = None) -> list[Target]:
    """Expands checkpoint directories into their resume sets (shardscan.resume). A directory's
    files are named relative to it, or under the directory as given when `under_given`
    (default: when several paths are given), so that names identify files. Raises
    FileNotFoundError for a path that does not exist."""
    from .resume import OBJECTS, resume_set, role_of

    targets = []
    for given in paths:
        path = Path(given)
        if not path.exists() and not path.is_symlink():
            raise FileNotFoundError(f"{given}: no such file or directory")
        members = resume_set(path).members if path.is_dir() else ()
        if members and not (len(members) == 1 and members[0].path == path):
            many = len(paths) > 1 if under_given is None else under_given
            under = os.fspath(given).rstrip(os.sep) + os.sep if many else ""
            # A member that is the directory itself (a Megatron iteration's DCP files) is read
            # as a DCP directory and named as the directory was given.
            targets += [Target(m.path, os.fspath(given) if m.path == path else under + m.name, m.role == OBJECTS)
                        for m in members]
        elif not path.is_dir() or members:  # a file, or a DCP checkpoint read as a whole
            targets.append(Target(path, os.fspath(given), role_of(path.name) == OBJECTS))
    return targets


def read_listing(target: Target) -> Listing:
    """The listing of one target: a directory by the format that claims it, a file by the
    reader its first bytes (or its name) call for."""
    if target.path.is_dir():
        fmt = formats.directory_format(target.path)
        if fmt is None or fmt.read_directory is None:
            raise FormatError("a directory that no format reads as one checkpoint", path=target.name)
        return fmt.read_directory(target.path, target.name)
    return formats.read_file(NativeFile(target.path), target.name, objects=target.objects)


@_gc.paused()
def discover_given(paths: Sequence[PathLike] | PathLike) -> tuple[list[Target], list[FileProblem]]:
    """The targets of the paths given (discover, one path at a time so that each names its own
    files), and a problem for each path that holds none."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    problems: list[FileProblem] = []
    targets = []
    seen: set[Path] = set()
    for given in paths:
        found = discover([given], under_given=len(paths) > 1)
        if not found:
            problems.append(FileProblem(os.fspath(given), FormatError("no tensor files found", path=os.fspath(given),
                                                                      kind="absent")))
        # A Megatron iteration directory expands to its members, which its resume set also
        # lists one by one: each file is read once.
        targets += [t for t in found if t.path not in seen]
        seen.update(t.path for t in found)
    return targets, problems


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
    targets, problems = discover_given(paths)
    result = scan_targets(targets, hash=hash, threads=threads, progress=progress)
    return replace(result, problems=tuple(problems) + result.problems, elapsed=time.perf_counter() - started)


def scan_targets(
    targets: Sequence[Target],
    *,
    hash: bool = True,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ScanResult:
    """scan_paths on targets already discovered (what a Ray task runs for one target: the
    rows keep the names discovery gave them)."""
    started = time.perf_counter()
    listings: list[Listing] = []
    problems: list[FileProblem] = []
    for target in targets:
        try:
            listing = read_listing(target)
        except (ShardscanError, OSError) as exc:
            problems.append(FileProblem(target.name, exc))
            continue
        except (RecursionError, OverflowError, MemoryError, ValueError) as exc:
            # A reader's own limit missed something: still a problem of this file alone, so
            # the rest of the run is reported (SHARDSCAN_DEBUG=1 shows where it came from).
            if os.environ.get("SHARDSCAN_DEBUG") == "1":
                raise
            error = FormatError(f"could not be read ({type(exc).__name__}: {exc})", path=target.name)
            problems.append(FileProblem(target.name, error.with_traceback(None)))
            continue
        listings.append(listing)
        problems += listing.problems

    hashed: list[HashResult] | None = None
    if hash:
        hashed, hash_problems = _hash_all(listings, threads, progress)
        problems += hash_problems
    return ScanResult(
        columns=_columns(listings, hashed),
        problems=tuple(problems),
        files=tuple(name for listing in listings for name in listing.names[:1]),
        non_tensor_leaves=sum(listing.non_tensor_leaves for listing in listings),
        elapsed=time.perf_counter() - started,
        per_file=tuple((len(listing), listing.non_tensor_leaves) for listing in listings),
    )


def _hash_all(
    listings: list[Listing], threads: int | None, progress: Callable[[int, int], None] | None
) -> tuple[list[HashResult], list[FileProblem]]:
    """One batch for every job of every listing (row jobs, then the checks that produce no
    row), file indices rebased onto one list; then each listing's results are judged."""
    files: list[NativeFile] = []
    row_jobs: list[HashJob] = []
    check_jobs: list[HashJob] = []
    for listing in listings:
        base = len(files)
        files += listing.files
        row_jobs += [_rebase(job, base) for job in listing.row_jobs()]
        check_jobs += [_rebase(job.read, base) for job in listing.checks]
    total = sum(sum(listing.columns["nbytes"]) for listing in listings)
    report = (lambda done: progress(done, total)) if progress else None
    results = hash_jobs(files, row_jobs + check_jobs, threads, report)
    rows, checks = results[: len(row_jobs)], results[len(row_jobs) :]
    problems: list[FileProblem] = []
    verified: list[FileProblem] = []
    row_at = check_at = 0
    for listing in listings:
        mine = rows[row_at : row_at + len(listing)]
        failed = next((r for r in mine if r.checksum is None), None)
        if failed is not None:
            problems.append(_unreadable(listing, failed))
        verified += formats.verify(listing, mine, checks[check_at : check_at + len(listing.checks)])
        row_at += len(listing)
        check_at += len(listing.checks)
    return rows, problems + verified


def _unreadable(listing: Listing, result: HashResult) -> FileProblem:
    """The problem of a listing whose bytes could not all be hashed (the first failure)."""
    # A listing spanning several files (DCP) names the one at fault inside it.
    where = listing.names[result.failed_file] if 0 < result.failed_file < len(listing.names) else None
    message = f"{where}: {result.message}" if where else result.message
    return FileProblem(listing.names[0], error_for(result.status, message, listing.names[0]))


def _rebase(job: HashJob, base: int) -> HashJob:
    if base == 0:
        return job
    return replace(job, file=job.file + base, segments=tuple(replace(s, file=s.file + base) for s in job.segments))


def _columns(listings: list[Listing], hashed: list[HashResult] | None) -> Columns:
    lists: dict[str, list] = {name: [] for name in NAMES}
    for listing in listings:
        if len(listing.names) == 1:  # every row in its one file
            lists["file"].extend([listing.names[0]] * len(listing))
        else:
            lists["file"].extend(map(listing.names.__getitem__, listing.row_file))
        if len(listings) == 1:  # one listing's rows: its columns as they are, not copied
            lists.update(listing.columns)
        else:
            for name, values in listing.columns.items():
                lists[name].extend(values)
        lists["format"].extend([listing.format] * len(listing))
    rows = len(lists["key"])
    for name in HASHED:
        lists[name] = [getattr(r, name) for r in hashed] if hashed is not None else [None] * rows
    return Columns(lists, copy=False)


def scan(paths: Sequence[PathLike] | PathLike, *, hash: bool = True, threads: int | None = None) -> "pa.Table":
    """One row per tensor (schema: shardscan.schema.SCHEMA). Raises FileNotFoundError for a
    path that does not exist, and FormatError (its .path the file, its message the problem)
    for the first file that cannot be read completely, whatever the cause; use scan_paths to
    collect every problem, each with its own message."""
    result = scan_paths(paths, hash=hash, threads=threads)
    if result.problems:
        problem = result.problems[0]
        raise FormatError(problem.error, path=problem.file, kind=problem.kind) from problem.exception
    return result.table
