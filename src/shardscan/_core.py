"""The one module that touches the C core (`lib`/`ffi`): owns native memory, releases the GIL
(cffi does so around every call) and turns status codes into exceptions."""

from __future__ import annotations

import os
from dataclasses import dataclass
import threading
from typing import Callable, Sequence

try:
    from ._native import ffi, lib
except ImportError as exc:  # a system library the core links is missing: name its package
    from ._missing_library import hint

    if hint(exc) is None:
        raise
    raise ImportError(hint(exc)) from exc
from .errors import FormatError, IntegrityError

MAX_DIMS = lib.SS_MAX_DIMS

#: dtype code -> reported name, and safetensors name -> reported name.
DTYPE_NAMES: tuple[str, ...] = tuple(ffi.string(lib.ss_dtype_name(i)).decode() for i in range(lib.SS_DTYPE_COUNT))
ST_DTYPE_NAMES: dict[str, str] = {
    ffi.string(lib.ss_dtype_st_name(i)).decode(): DTYPE_NAMES[i] for i in range(lib.SS_DTYPE_COUNT)
}
#: dtype name -> the C core's value kind, for every dtype whose NaN/Inf it counts.
VALUE_KINDS: dict[str, int] = {
    ffi.string(lib.ss_value_kind_name(i)).decode(): i for i in range(1, lib.SS_VALUE_KIND_COUNT)
}


def value_kind_for(dtype: str) -> str | None:
    """`dtype` when the engine counts its NaN/Inf (a HashJob's `value_kind`), else None."""
    return dtype if dtype in VALUE_KINDS else None


#: The exception class of every status that is not a FormatError (the structural ones).
_EXCEPTIONS: dict[int, type[Exception]] = {
    lib.SS_E_NOMEM: MemoryError,
    lib.SS_E_IO: OSError,
    lib.SS_E_NOT_REGULAR: OSError,
    lib.SS_E_CHANGED: IntegrityError,
    lib.SS_E_CRC: IntegrityError,
    lib.SS_E_ARGUMENT: ValueError,
}


#: The KINDS word of the statuses that are not plain format violations ("format").
_KINDS: dict[int, str] = {
    lib.SS_E_CHANGED: "changed",
    lib.SS_E_CRC: "crc",
    lib.SS_E_RANGE: "truncated",
    lib.SS_E_ST_TRUNCATED: "truncated",
    lib.SS_E_ST_HEADER_PAST_EOF: "truncated",
    lib.SS_E_ZIP_NO_EOCD: "truncated",
    lib.SS_E_ZIP_PAST_EOF: "truncated",
    lib.SS_E_ZIP_TOO_MANY: "budget",
}


def error_for(status: int, message: str, path: str | None, key: str | None = None) -> Exception:
    """The exception for a failed status, from one table: MemoryError, OSError (its strerror
    the message alone), IntegrityError for bytes that changed or do not match their CRC, ValueError for
    a call the core refused, FormatError for everything structural."""
    cls = _EXCEPTIONS.get(status, FormatError)
    if issubclass(cls, (FormatError, IntegrityError)):
        return cls(message, path=path, key=key, kind=_KINDS.get(status, cls.kind))
    if cls is OSError:
        exc = OSError(f"{path}: {message}" if path else message)
        exc.strerror = message  # the problem without the path, as for errors the OS raises
        return exc
    return cls(message)


def _message(err) -> str:
    """The core's message: what is wrong, never which file (the caller adds that)."""
    return ffi.string(err.message).decode("utf-8", "replace")


class NativeFile:
    """A file mapped read-only by the core. Close it (or use `with`) to unmap."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        out = ffi.new("ss_file **")
        err = ffi.new("ss_error *")
        status = lib.ss_file_open(os.fsencode(self.path), out, err)
        if status != lib.SS_OK:
            raise error_for(status, _message(err), self.path)
        self._handle = ffi.gc(out[0], lib.ss_file_close)

    @property
    def handle(self):
        if self._handle is None:
            raise ValueError(f"{self.path}: file is closed")
        return self._handle

    @property
    def size(self) -> int:
        return lib.ss_file_size(self.handle)

    def read(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length); FormatError outside the file, IntegrityError if
        the file shrank since it was opened."""
        buf = ffi.new("char[]", max(length, 1))
        err = ffi.new("ss_error *")
        status = lib.ss_file_read(self.handle, offset, buf, length, err)
        if status != lib.SS_OK:
            raise error_for(status, _message(err), self.path)
        return ffi.buffer(buf, length)[:]

    def close(self) -> None:
        if self._handle is not None:
            ffi.release(self._handle)
            self._handle = None

    def __enter__(self) -> "NativeFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class SafetensorsHeader:
    """Validated columns of one safetensors header (tensors in data-offset order).
    `error` is set when the file is truncated: the header survived and the columns are still
    complete, so callers can tell intact tensors from cut and lost ones."""

    keys: list[str]
    dtypes: list[str]
    shapes: list[tuple[int, ...]]  # shared by the tensors of one (dtype, shape)
    offsets: list[int]
    nbytes: list[int]
    metadata: dict[str, str]
    data_end: int
    error: FormatError | None


def parse_safetensors(file: NativeFile) -> SafetensorsHeader:
    """Parses and validates; raises FormatError for any violation but truncation."""
    listing = ffi.new("ss_st_listing *")
    err = ffi.new("ss_error *")
    status = lib.ss_st_parse(file.handle, listing, err)
    try:
        if status not in (lib.SS_OK, lib.SS_E_ST_TRUNCATED):
            raise error_for(status, _message(err), file.path)
        n = listing.count
        keys = _names(listing.keys, listing.key_offsets, n)
        shape_offsets = ffi.unpack(listing.shape_offsets, listing.shape_count + 1)
        dims = tuple(ffi.unpack(listing.dims, shape_offsets[-1]))  # sliced into tuples
        distinct = list(map(dims.__getitem__, map(slice, shape_offsets[:-1], shape_offsets[1:])))
        # One shape object per distinct (dtype, shape), shared by its tensors.
        shapes = list(map(distinct.__getitem__, ffi.unpack(listing.shape_of, n)))
        dtypes = list(map(DTYPE_NAMES.__getitem__, ffi.unpack(listing.dtypes, n)))
        meta_offsets = ffi.unpack(listing.metadata_offsets, 2 * listing.metadata_count + 1)
        strings = _strings(listing.metadata, meta_offsets)
        return SafetensorsHeader(
            keys=keys,
            dtypes=dtypes,
            shapes=shapes,
            offsets=ffi.unpack(listing.offsets, n),
            nbytes=ffi.unpack(listing.nbytes, n),
            metadata=dict(zip(strings[0::2], strings[1::2])),
            data_end=listing.data_end,
            error=error_for(status, _message(err), file.path) if status != lib.SS_OK else None,
        )
    finally:
        lib.ss_st_listing_free(listing)


def _strings(blob, offsets: list[int]) -> list[str]:
    """The UTF-8 strings laid end to end in `blob` (a C char*) at `offsets` (count + 1)."""
    raw = ffi.buffer(blob, offsets[-1])[:]
    # Sliced by map over slice objects: the loops run in C, not one bytecode step per string.
    slices = map(slice, offsets[:-1], offsets[1:])
    text = raw.decode()
    if len(text) == len(raw):  # ASCII: byte offsets are character offsets
        return list(map(text.__getitem__, slices))
    return list(map(bytes.decode, map(raw.__getitem__, slices)))


def _names(blob, offsets, count: int) -> list[str]:
    """The `count` names of a listing's `blob` (C char*), each followed by a NUL, name i ending
    at offsets[i + 1] - 1 (`offsets`: a C array of count + 1, read only when a name holds a
    NUL of its own)."""
    if count == 0:
        return []
    size = offsets[count] - 1
    names = str(ffi.buffer(blob, size), "utf-8").split("\0")  # at C speed, with no copy of the bytes
    if len(names) == count:
        return names
    raw = ffi.buffer(blob, size)[:]
    bounds = ffi.unpack(offsets, count + 1)
    return list(map(bytes.decode, map(raw.__getitem__, map(slice, bounds[:-1], [end - 1 for end in bounds[1:]]))))


class ShardIndex:
    """A plain shard index held by the core (see ss_index_parse): its shards, each key's shard
    as a number into them, and total_size. The keys become Python strings only when asked
    for: compare() measures a checkpoint's names against them in C."""

    def __init__(self, listing) -> None:
        self._listing = ffi.gc(listing, lib.ss_index_listing_free)
        self.shards = _strings(listing.shards, ffi.unpack(listing.shard_offsets, listing.shard_count + 1))
        self.shard_of: list[int] = ffi.unpack(listing.shard_of, listing.count)
        self.total_size = listing.total_size if listing.total_size >= 0 else None

    @property
    def keys(self) -> list[str]:
        return _names(self._listing.keys, self._listing.key_offsets, self._listing.count)

    def key(self, k: int) -> str:
        offsets = self._listing.key_offsets  # read in C: only the keys a check reports are asked for
        start, end = offsets[k], offsets[k + 1] - 1
        return ffi.buffer(self._listing.keys + start, end - start)[:].decode()

    def compare(self, names: Names, file_of: list[int]) -> tuple[bytes, list[int], bytes] | None:
        """(state of each index key: 0 no name equals it, 1 one does in its shard, 2 one does in
        another file; that file's number for each key of state 2; whether the index holds each
        name) for distinct `names`, name i in the file numbered file_of[i] (as shards, or
        larger). None when the core cannot carry the names."""
        if names.blob is None:
            return None
        n, count = len(self.shard_of), len(names)
        state, found, listed = ffi.new("uint8_t[]", n or 1), ffi.new("uint32_t[]", n or 1), ffi.new("uint8_t[]", count or 1)
        err = ffi.new("ss_error *")
        # The core takes the names separated by NULs: the last one's is left out.
        status = lib.ss_index_compare(self._listing, ffi.from_buffer(names.blob), max(len(names.blob) - 1, 0), count,
                                      ffi.new("uint32_t[]", file_of or [0]), state, found, listed, err)
        if status == lib.SS_E_ARGUMENT:  # more NULs than separators
            return None
        if status != lib.SS_OK:
            raise error_for(status, _message(err), None)
        return ffi.buffer(state, n)[:], ffi.unpack(found, n), ffi.buffer(listed, count)[:]


def parse_index(data: bytes) -> ShardIndex | None:
    """A plain shard index read in C (see ss_index_parse), or None for anything else: the
    caller then reads the file with the json module, whose reading is the one that counts."""
    listing = ffi.new("ss_index_listing *")
    err = ffi.new("ss_error *")
    if lib.ss_index_parse(ffi.from_buffer(data), len(data), listing, err) != lib.SS_OK:
        lib.ss_index_listing_free(listing)
        return None
    return ShardIndex(listing)


class Names:
    """Names as the core reads them (UTF-8, each followed by a NUL), joined once for every
    measure taken of them: block_split, first_repeat, ShardIndex.compare. `blob` is None when
    a name holds a lone surrogate, which UTF-8 cannot carry; a name holding a NUL, which the
    separator cannot, is found by the core. Either way the measures answer None and the caller
    works in Python."""

    __slots__ = ("items", "blob")

    def __init__(self, items: list[str]) -> None:
        self.items = items
        try:
            # joined with an empty name last: each name then ends in a NUL, with no copy of the text
            self.blob: bytes | None = "\0".join([*items, ""]).encode() if items else b""
        except UnicodeEncodeError:
            self.blob = None

    def __len__(self) -> int:
        return len(self.items)


def block_split(names: Names, containers: Sequence[str]) -> tuple[list[tuple[str, int, int]], list[str]] | None:
    """The blocks of the names (see ss_block_split): (head, first name, end name) of each run
    of consecutive names in one block, the head "" for names in none, and the suffix of each
    name ("" in no block); equal parts are one shared string. None when the core cannot carry
    the names."""
    if not names.items:
        return [], []
    if names.blob is None:
        return None
    listing = ffi.new("ss_block_listing *")
    err = ffi.new("ss_error *")
    wanted = b"".join(name.encode() + b"\0" for name in containers) + b"\0"
    status = lib.ss_block_split(ffi.from_buffer(names.blob), len(names.blob), len(names), wanted, listing, err)
    try:
        if status == lib.SS_E_ARGUMENT:  # more NULs than names
            return None
        if status != lib.SS_OK:
            raise error_for(status, _message(err), None)
        heads = _names(listing.heads, listing.head_offsets, listing.head_count)
        suffixes = _names(listing.suffixes, listing.suffix_offsets, listing.suffix_count)
        ends = ffi.unpack(listing.run_end, listing.run_count)
        runs = list(zip(map(heads.__getitem__, ffi.unpack(listing.run_head, listing.run_count)), [0, *ends[:-1]], ends))
        return runs, list(map(suffixes.__getitem__, ffi.unpack(listing.suffix_of, listing.count)))
    finally:
        lib.ss_block_listing_free(listing)


def first_repeat(names: Names) -> int | None:
    """The position of the first name equal to an earlier one, len(names) when they are
    distinct; None when the core cannot carry the names."""
    if names.blob is None:
        return None
    first = ffi.new("uint32_t *")
    err = ffi.new("ss_error *")
    status = lib.ss_first_repeat(ffi.from_buffer(names.blob), len(names.blob), len(names), first, err)
    if status == lib.SS_E_ARGUMENT:  # more NULs than names
        return None
    if status != lib.SS_OK:
        raise error_for(status, _message(err), None)
    return first[0]


@dataclass(frozen=True, slots=True)  # one per tensor: no __dict__
class Segment:
    """A strided view (shape, byte strides) or, with shape=None, a contiguous run of nbytes."""

    file: int
    offset: int
    nbytes: int = 0
    shape: tuple[int, ...] | None = None
    strides: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)  # one per tensor: no __dict__
class HashJob:
    """The bytes of one tensor: one contiguous run (file, offset, nbytes) or `segments`.
    `value_kind` is a dtype name of VALUE_KINDS ("float32", "bfloat16", "float8_e4m3fn",
    "complex64", ...) to count its NaN and Inf values while hashing; None counts nothing but
    whether every byte is zero."""

    file: int
    offset: int = 0
    nbytes: int = 0
    segments: tuple[Segment, ...] = ()
    itemsize: int = 1
    byteswap: bool = False
    crc32: bool = False
    value_kind: str | None = None


@dataclass(frozen=True, slots=True)  # one per tensor: no __dict__
class HashResult:
    """One job's outcome. On failure (status != 0) every value is None and `message` says why.
    `nan_count` / `inf_count` count elements (each part of a complex one) and are None when
    the job had no value_kind; `all_zero` is True when every byte is zero (an empty job too)."""

    checksum: str | None  # 32 lowercase hex digits, None on failure
    crc32: int | None
    status: int
    message: str  # on failure: what went wrong, without the file
    failed_file: int = 0  # on failure: the index (into the batch's files) of the file at fault
    nan_count: int | None = None
    inf_count: int | None = None
    all_zero: bool | None = None


#: Jobs per native batch: a C job costs a few hundred bytes, so a million tiny tensors run as
#: several batches (each still parallel) rather than one allocation proportional to all of them.
BATCH_JOBS = 1 << 16


def hash_jobs(
    files: Sequence[NativeFile],
    jobs: Sequence[HashJob],
    threads: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[HashResult]:
    """Runs all jobs in parallel batches of at most BATCH_JOBS; one result per job, in order.
    With `progress`, each batch runs on a helper thread while this one reports bytes hashed
    so far (about ten times a second)."""
    results: list[HashResult] = []
    done = [0, 0]  # bytes of the batches finished, bytes of this batch so far

    def report(n: int) -> None:
        done[1] = n
        if progress is not None:
            progress(done[0] + n)

    for start in range(0, len(jobs), BATCH_JOBS):
        results += _hash_batch(files, jobs[start : start + BATCH_JOBS], threads, report if progress else None)
        done[0], done[1] = done[0] + done[1], 0
    return results


def _hash_batch(files: Sequence[NativeFile], jobs: Sequence[HashJob], threads: int | None,
                progress: Callable[[int], None] | None) -> list[HashResult]:
    n = len(jobs)
    batch = _Batch(files, jobs)
    status = batch.run(threads or 0, progress)
    if status != lib.SS_OK:
        raise error_for(status, ffi.string(lib.ss_strerror(status)).decode(), None)
    hexes = ffi.new("char[]", 32 * n)
    lib.ss_hex_digests(batch.cjobs, n, hexes)
    blob = ffi.buffer(hexes, 32 * n)[:].decode("ascii")
    results = []
    for i, cjob in enumerate(batch.cjobs):
        if cjob.status == lib.SS_OK:
            counted = jobs[i].value_kind is not None
            results.append(HashResult(
                blob[32 * i : 32 * i + 32], cjob.crc32 if jobs[i].crc32 else None, 0, "",
                nan_count=cjob.nan_count if counted else None,
                inf_count=cjob.inf_count if counted else None,
                all_zero=bool(cjob.all_zero),
            ))
        else:
            results.append(HashResult(None, None, cjob.status, _message(cjob), cjob.failed_file))
    return results


class _Batch:
    """The native memory of one ss_hash_batch call, owned in one place: the file handles, the
    jobs and their segment arrays, and the Python files that own the mappings. `run` returns
    only once the C workers are done with all of it, whatever happens on this thread."""

    def __init__(self, files: Sequence[NativeFile], jobs: Sequence[HashJob]) -> None:
        self.files = list(files)  # keeps the mappings alive while C reads them
        self.handles = ffi.new("ss_file *[]", [f.handle for f in self.files])
        self.cjobs = ffi.new("ss_job[]", len(jobs))
        self.segments = []
        for cjob, job in zip(self.cjobs, jobs):
            cjob.file = job.file
            cjob.offset = job.offset
            cjob.nbytes = job.nbytes
            cjob.itemsize = job.itemsize
            cjob.flags = (lib.SS_JOB_BYTESWAP if job.byteswap else 0) | (lib.SS_JOB_CRC32 if job.crc32 else 0)
            if job.value_kind is not None:
                try:
                    cjob.value_kind = VALUE_KINDS[job.value_kind]
                except KeyError:
                    raise ValueError(f"no value counts for dtype {job.value_kind!r}; use value_kind_for()") from None
            if job.segments:
                segs = self._segments(job.segments)
                cjob.segments = segs
                cjob.nsegments = len(job.segments)
                self.segments.append(segs)

    @staticmethod
    def _segments(segments: tuple[Segment, ...]):
        segs = ffi.new("ss_segment[]", len(segments))
        for cseg, seg in zip(segs, segments):
            cseg.file = seg.file
            cseg.offset = seg.offset
            cseg.nbytes = seg.nbytes
            if seg.shape is not None:
                if len(seg.shape) > MAX_DIMS:
                    raise ValueError(f"strided view with {len(seg.shape)} dimensions; at most {MAX_DIMS}")
                cseg.ndim = len(seg.shape)
                cseg.shape[0 : len(seg.shape)] = list(seg.shape)
                cseg.strides[0 : len(seg.shape)] = list(seg.strides or ())
        return segs

    def _call(self, threads: int, counter) -> int:
        return lib.ss_hash_batch(self.handles, len(self.files), self.cjobs, len(self.cjobs), threads, counter)

    def run(self, threads: int, progress: Callable[[int], None] | None) -> int:
        return _with_progress(lambda counter: self._call(threads, counter), progress)


def _with_progress(call: Callable[[object], int], progress: Callable[[int], None] | None) -> int:
    """call(counter) -> status, with counter NULL when there is no `progress`; otherwise the
    call runs on a helper thread while this one reports the counter about ten times a second.
    The caller's objects must outlive the call: this returns only once it has returned, even
    when progress() raises or Ctrl-C lands while polling."""
    if progress is None:
        return call(ffi.NULL)
    counter = ffi.new("uint64_t *")
    outcome: list[int] = []
    # cffi drops the GIL for the call, so this thread is free to poll the counter.
    worker = threading.Thread(target=lambda: outcome.append(call(counter)), name="shardscan-hash", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.1)
            progress(counter[0])
        progress(counter[0])
    finally:
        while worker.is_alive():
            try:
                worker.join()
            except KeyboardInterrupt:
                continue
    return outcome[0]


# ---- whole-file digests (csrc/digest.c) ------------------------------------------------------


@dataclass(frozen=True)
class FileDigest:
    """SHA-256 and XXH3-128 (lowercase hex) of every byte of one file and its size at open time.
    On failure the digests (and, when the file could not be opened, the size) are None and
    `error` is the exception: OSError for the OS, IntegrityError for a file that shrank while
    it was read."""

    path: str
    sha256: str | None
    xxh3: str | None
    size: int | None
    error: Exception | None = None


def file_digests(
    files: Sequence[str | os.PathLike[str] | NativeFile],
    threads: int | None = None,
    progress: Callable[[int], None] | None = None,
    *,
    xxh3: bool = True,
) -> list[FileDigest]:
    """Digests every file in one parallel batch (one file per thread, largest first); one
    result per file, in order. Paths are opened (and closed) here, and a file that cannot be
    opened gets its error in its own result; NativeFiles stay open. `progress` as for hash_jobs.
    `xxh3=False`: SHA-256 only (each result's xxh3 None), about a tenth less work."""
    opened: list[NativeFile | None] = []
    results: list[FileDigest | None] = []
    owned: list[NativeFile] = []
    try:
        for item in files:
            if isinstance(item, NativeFile):
                opened.append(item)
                results.append(None)
                continue
            path = os.fspath(item)
            try:
                native = NativeFile(path)
            except (OSError, FormatError) as exc:
                opened.append(None)
                results.append(FileDigest(path, None, None, None, exc))
                continue
            owned.append(native)
            opened.append(native)
            results.append(None)
        todo = [i for i, f in enumerate(opened) if f is not None]
        if todo:
            handles = ffi.new("ss_file *[]", [opened[i].handle for i in todo])
            out = ffi.new("ss_file_digest[]", len(todo))
            status = _with_progress(lambda counter: lib.ss_digest_files(handles, len(todo), out, xxh3, threads or 0, counter),
                                    progress)
            if status != lib.SS_OK:
                raise error_for(status, ffi.string(lib.ss_strerror(status)).decode(), None)
            for slot, i in zip(out, todo):
                path = opened[i].path
                if slot.status == lib.SS_OK:
                    results[i] = FileDigest(path, bytes(ffi.buffer(slot.sha256, 32)).hex(),
                                            bytes(ffi.buffer(slot.xxh3, 16)).hex() if xxh3 else None, slot.size)
                else:
                    results[i] = FileDigest(path, None, None, slot.size, error_for(slot.status, _message(slot), path))
    finally:
        for native in owned:
            native.close()
    return results  # type: ignore[return-value]


# ---- torch zip archives (csrc/zip.c) ---------------------------------------------------------


class ZipTruncated(FormatError):
    """No end-of-central-directory record: the archive was cut short (or is not a zip)."""

    kind = "truncated"


class ZipForeign(FormatError):
    """A well-formed zip that torch.save does not write: compressed or encrypted records, no
    shared top-level folder, folder entries (zipfile, numpy.savez, TorchScript's code)."""


@dataclass(frozen=True)
class ZipRecord:
    """One stored record: `name` without the archive's top-level folder, `offset` the absolute
    position of its first data byte, `crc32` as written (0 may mean "none computed"),
    `intact` False for the record a truncation cut short."""

    name: str
    offset: int
    size: int
    crc32: int
    intact: bool = True


@dataclass(frozen=True)
class ZipListing:
    prefix: str  # the top-level folder, without its "/"
    records: tuple[ZipRecord, ...]

    def by_name(self) -> dict[str, ZipRecord]:
        return {r.name: r for r in self.records}


def _collect(file: NativeFile, status: int, listing, err) -> ZipListing:
    message = _message(err)
    if status == lib.SS_E_ZIP_NO_EOCD:
        raise ZipTruncated(message, path=file.path)
    if status in (lib.SS_E_ZIP_COMPRESSED, lib.SS_E_ZIP_PREFIX, lib.SS_E_ZIP_DIRECTORY, lib.SS_E_ZIP_ENCRYPTED):
        raise ZipForeign(message, path=file.path)
    if status != lib.SS_OK:
        raise error_for(status, message, file.path)
    n = listing.count
    if n == 0:
        return ZipListing("", ())
    name_offsets = ffi.unpack(listing.name_offsets, n + 1)
    blob = ffi.buffer(listing.names, name_offsets[-1])[:]
    plen = listing.prefix_len
    names = [blob[name_offsets[i] + plen : name_offsets[i + 1]].decode("utf-8", "replace") for i in range(n)]
    offsets = ffi.unpack(listing.data_offsets, n)
    sizes = ffi.unpack(listing.sizes, n)
    crcs = ffi.unpack(listing.crc32s, n)
    intact = ffi.unpack(listing.intact, n)
    prefix = blob[: max(plen - 1, 0)].decode("utf-8", "replace")
    return ZipListing(prefix, tuple(ZipRecord(*row[:4], bool(row[4])) for row in zip(names, offsets, sizes, crcs, intact)))


def parse_zip(file: NativeFile, base: int = 0, length: int | None = None) -> ZipListing:
    """The validated central directory of the archive at [base, base + length) (default: the
    whole file). Raises ZipTruncated without an end record, FormatError for any violation."""
    listing = ffi.new("ss_zip_listing *")
    err = ffi.new("ss_error *")
    if length is None:
        length = file.size - base
    if base < 0 or length < 0:
        raise FormatError(f"archive range {base}+{length} is negative", path=file.path)
    status = lib.ss_zip_parse_range(file.handle, base, length, listing, err)
    try:
        return _collect(file, status, listing, err)
    finally:
        lib.ss_zip_listing_free(listing)


def walk_zip(file: NativeFile) -> ZipListing:
    """Forensics for an archive without an end record: the records found by walking local
    headers from byte 0; the last may have `intact` False."""
    listing = ffi.new("ss_zip_listing *")
    err = ffi.new("ss_error *")
    status = lib.ss_zip_walk_local(file.handle, listing, err)
    try:
        return _collect(file, status, listing, err)
    finally:
        lib.ss_zip_listing_free(listing)
