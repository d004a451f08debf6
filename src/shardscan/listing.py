"""What a format reader hands the scanner: the rows it found in one tensor file (or one DCP
directory) and, aligned with them, the hash job for each row.

A reader never hashes and never builds Arrow: the scanner batches every job of every file
into one parallel call, so small files never leave cores idle."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._core import HashJob, HashResult, NativeFile


@dataclass(frozen=True)
class FileProblem:
    """Something wrong with one file. `lost` and `cut` name tensors the file should hold but
    does not (whole or in part); `intact` those that survived a truncation."""

    file: str
    error: str
    lost: tuple[str, ...] = ()
    cut: tuple[str, ...] = ()
    intact: tuple[str, ...] = ()

    @classmethod
    def of(cls, name: str, exc: BaseException | str, path: str | None = None, **keys: tuple[str, ...]) -> "FileProblem":
        """A problem from an exception or core message, without the "<path>: " prefix the
        core puts on messages (the file is already named)."""
        text = str(exc)
        for prefix in {p for p in (path, getattr(exc, "path", None), getattr(exc, "filename", None), name) if p}:
            if text.startswith(f"{prefix}: "):
                text = text[len(prefix) + 2 :]
                break
        if isinstance(exc, OSError) and getattr(exc, "strerror", None):
            text = exc.strerror
        return cls(name, text, **keys)


@dataclass
class Listing:
    """Rows of one file. Job file indices refer to `files` (files[0] is the file itself; a DCP
    listing names every .distcp it reads). `names` are the display names of `files`."""

    format: str
    files: list[NativeFile]
    names: list[str]
    keys: list[str] = field(default_factory=list)
    dtypes: list[str] = field(default_factory=list)
    shapes: list[list[int]] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    nbytes: list[int] = field(default_factory=list)
    storages: list[str | None] = field(default_factory=list)
    row_files: list[int] = field(default_factory=list)  # index into files/names per row
    #: Per-row hash jobs; None when every row is one contiguous run at its offset in files[0]
    #: (safetensors), so that header-only scans build no job objects (see row_jobs).
    jobs: list[HashJob] | None = field(default_factory=list)
    #: Jobs that produce no row but verify bytes (torch: the CRC32 of records no row covers whole).
    check_jobs: list[HashJob] = field(default_factory=list)
    problems: list[FileProblem] = field(default_factory=list)
    non_tensor_leaves: int = 0

    def row_jobs(self) -> list[HashJob]:
        """One hash job per row, in row order."""
        if self.jobs is not None:
            return self.jobs
        return [HashJob(file=0, offset=offset, nbytes=nbytes) for offset, nbytes in zip(self.offsets, self.nbytes)]

    def verify(self, row_results: list[HashResult], check_results: list[HashResult]) -> list[FileProblem]:
        """Problems the hashing pass revealed beyond unreadable bytes (e.g. CRC mismatches),
        given the results of `jobs` and of `check_jobs`, in order. None by default."""
        return []

    def add(self, key: str, dtype: str, shape: list[int], offset: int, nbytes: int, job: HashJob,
            storage: str | None = None, file: int = 0) -> None:
        self.keys.append(key)
        self.dtypes.append(dtype)
        self.shapes.append(shape)
        self.offsets.append(offset)
        self.nbytes.append(nbytes)
        self.storages.append(storage)
        self.row_files.append(file)
        assert self.jobs is not None, "add() is for listings with explicit jobs"
        self.jobs.append(job)
