"""The reader contract: what a format declares about itself (`Format`), and what its reader
hands the scanner for one file or one directory (`Listing`).

A reader never hashes and never builds Arrow: the scanner batches every job of every file
into one parallel call, so small files never leave cores idle, and then asks `verify` what
the results prove about each listing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Collection, Mapping

from ..errors import IntegrityError, kind_of, message_of
from ..schema import HASHED, NAMES

if TYPE_CHECKING:
    from .._core import HashJob, HashResult, NativeFile

#: The columns a reader fills; the scanner adds `file` (from the row's file index), `format`
#: (the listing's) and the HASHED ones.
ROW_COLUMNS: tuple[str, ...] = tuple(name for name in NAMES if name not in ("file", "format", *HASHED))

#: How many leading bytes `Format.sniff` is shown.
HEAD = 64


@dataclass(frozen=True)
class Budget:
    """The work and memory one file may cost, relative to its size: a small hostile file can
    claim anything, so every count that can grow faster than the bytes holding it is capped
    here, once, and an excess becomes a FileProblem naming the budget (never a hang or a huge
    allocation). Each cap is `floor + per_byte x size`, where size is the bytes that express
    the count (a torch file's data.pkl, a DCP directory's files, a safetensors file).

    A real checkpoint stays inside every cap: each value of a pickle costs at least an opcode
    byte, keys a few times the bytes of their parts, and a view's bytes are at most those of
    its record except for expanded (zero- or overlapping-stride) views."""

    rows_floor: int = 1 << 16
    # Values a pickle walk visits (containers and leaves): without aliasing through the memo,
    # each costs at least one opcode byte, so only shared containers can pass this.
    rows_per_byte: int = 1
    key_bytes_floor: int = 16 << 20
    key_bytes_per_byte: int = 64  # every key path a pickle walk visits, in characters
    segments_floor: int = 1 << 16
    segments_per_byte: int = 1  # each segment of a real layout streams distinct stored bytes
    view_bytes_floor: int = 16 << 20
    view_bytes_per_byte: int = 64  # logical bytes hashed: expanded views and tied tensors
    max_dims: int = 64  # dimensions of a shape (numpy's and torch's practical bound)
    max_int_bits: int = 63  # a size, stride or offset fits int64, as torch requires

    def rows(self, size: int) -> int:
        return self.rows_floor + self.rows_per_byte * size

    def key_bytes(self, size: int) -> int:
        return self.key_bytes_floor + self.key_bytes_per_byte * size

    def segments(self, size: int) -> int:
        return self.segments_floor + self.segments_per_byte * size

    def view_bytes(self, size: int) -> int:
        return self.view_bytes_floor + self.view_bytes_per_byte * size


#: The budget every reader applies.
BUDGET = Budget()


@dataclass(frozen=True)
class Format:
    """Everything the package knows about one format. The registry, shardscan.formats.FORMATS,
    is the only list of these: scanner, discover and checker ask it instead of naming suffixes.

    `name`: the `format` column. `suffixes`: the file names that mark its files inside a
    checkpoint directory, in the order a loader prefers them. `sniff(head)`: whether the
    first HEAD bytes are this format. `read(file, name)`: the Listing of one opened file;
    `read_objects`, where the format can hold pickled Python objects, the same for a file its
    framework unpickles in full (shardscan.resume's "objects" role; default: `read`).
    `by_name`: a file carrying one of the suffixes that no format recognises by its bytes is
    still given to this reader, whose validator then names the actual violation.
    `is_directory(entry_names)`: whether a directory holding these entries is one checkpoint of
    this format, read as a whole by `read_directory(path, name)`; `unfinished(entry_names)`
    why such a directory is a save that did not finish (None when it looks complete). `kinds`: the checkpoint kind
    of a loose file by suffix, where it is not `name` (".ckpt" is a Lightning checkpoint)."""

    name: str
    suffixes: tuple[str, ...] = ()
    sniff: Callable[[bytes], bool] | None = None
    read: Callable[["NativeFile", str], "Listing"] | None = None
    read_objects: Callable[["NativeFile", str], "Listing"] | None = None
    by_name: bool = False
    is_directory: Callable[[Collection[str]], bool] | None = None
    read_directory: Callable[[Path, str], "Listing"] | None = None
    unfinished: Callable[[Collection[str]], str | None] | None = None
    kinds: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class FileProblem:
    """Something wrong with one file. `exception` says what, with its class (FormatError,
    IntegrityError, OSError, ...); `lost` and `cut` name tensors the file should hold but does
    not (whole or in part); `intact` those that survived a truncation."""

    file: str
    exception: BaseException
    lost: tuple[str, ...] = ()
    cut: tuple[str, ...] = ()
    intact: tuple[str, ...] = ()

    @property
    def error(self) -> str:
        """The problem in words, without the file's name (the report names it)."""
        return message_of(self.exception)

    @property
    def kind(self) -> str:
        """The word of shardscan.errors.KINDS for the problem (its exception's kind)."""
        return kind_of(self.exception)

    def _identity(self) -> tuple:
        return (self.file, type(self.exception), self.error, self.lost, self.cut, self.intact)

    # Exceptions compare by identity; two problems are the same when they say the same thing.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, FileProblem) and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())


@dataclass(frozen=True)
class Job:
    """How the bytes of one row (or of one check) are read, and what they must prove:
    `crc32` is the CRC-32 the stored bytes must have (None: not checked) and `record` the zip
    record it belongs to, for the message."""

    read: "HashJob"
    crc32: int | None = None
    record: str | None = None

    @classmethod
    def checked(cls, read: "HashJob", crc32: int, record: str) -> "Job":
        """A job that also computes the CRC-32 of its bytes, to be compared with `crc32`."""
        return cls(replace(read, crc32=True), crc32, record)


@dataclass
class Listing:
    """The rows of one file (or DCP directory).

    `columns` holds one list per ROW_COLUMNS name, one entry per row; `row_file[i]` indexes
    `files`/`names` (files[0] is the file itself; a DCP listing names every .distcp it reads).
    `jobs[i]` reads row i; `jobs` is None when every row is one plain run at its offset in
    files[0] (safetensors), so that header-only scans build no job objects (see row_jobs).
    `checks` verify bytes that no row covers (the CRC of a record no tensor spans whole)."""

    format: str
    files: list["NativeFile"]
    names: list[str]
    columns: dict[str, list] = field(default_factory=lambda: {name: [] for name in ROW_COLUMNS})
    row_file: list[int] = field(default_factory=list)
    jobs: list[Job] | None = field(default_factory=list)
    checks: list[Job] = field(default_factory=list)
    problems: list[FileProblem] = field(default_factory=list)
    non_tensor_leaves: int = 0

    @property
    def keys(self) -> list[str]:
        return self.columns["key"]

    def __len__(self) -> int:
        return len(self.columns["key"])

    def add(self, job: Job, *, file: int = 0, **values: object) -> None:
        """Appends one row: `values` gives every ROW_COLUMNS entry (storage may be omitted)."""
        values.setdefault("storage", None)
        for name in ROW_COLUMNS:
            self.columns[name].append(values[name])
        self.row_file.append(file)
        assert self.jobs is not None, "add() is for listings with explicit jobs"
        self.jobs.append(job)

    def row_jobs(self) -> list["HashJob"]:
        """The read of every row, in row order, counting NaN/Inf for floating dtypes."""
        from .._core import HashJob, value_kind_for

        kinds = [value_kind_for(dtype) for dtype in self.columns["dtype"]]
        if self.jobs is not None:
            return [replace(job.read, value_kind=kind) if kind else job.read for job, kind in zip(self.jobs, kinds)]
        return [HashJob(file=0, offset=o, nbytes=n, value_kind=kind)
                for o, n, kind in zip(self.columns["offset"], self.columns["nbytes"], kinds)]


def verify(listing: Listing, row_results: list["HashResult"], check_results: list["HashResult"]) -> list[FileProblem]:
    """The problems the hashing pass proved beyond unreadable bytes: one IntegrityError per zip
    record whose CRC-32 differs from the one written, naming the tensors it holds."""
    bad: dict[str, list[str]] = {}
    for key, job, result in zip(listing.keys, listing.jobs or (), row_results):
        if job.crc32 is not None and result.crc32 is not None and result.crc32 != job.crc32:
            bad.setdefault(job.record or "?", []).append(key)
    for job, result in zip(listing.checks, check_results):
        if job.crc32 is not None and result.crc32 is not None and result.crc32 != job.crc32:
            bad.setdefault(job.record or "?", [])
    problems = []
    for record, keys in bad.items():
        holders = keys or [k for k, s in zip(listing.keys, listing.columns["storage"]) if s == record]
        held = f" (holding {', '.join(holders)})" if holders else ""
        error = IntegrityError(f"CRC32 mismatch in zip record {record}{held}: bytes are corrupt", path=listing.names[0])
        problems.append(FileProblem(listing.names[0], error, cut=tuple(keys)))
    return problems
