"""torch.save files (torch >= 1.6: a zip archive), read without torch and without executing
anything they contain.

The C core validates the zip (stored records, one top-level folder, no overlaps, ZIP64);
`data.pkl` is described by the restricted pickle reader under the torch policy
(shardscan.formats.torch_pickle); every tensor becomes one row whose bytes are located through
its storage record `data/<key>`:

* key: the path through nested dicts, lists and tuples joined with "." (a Lightning checkpoint
  gives `state_dict.model.layers.0.weight`); a file holding one bare tensor gives the key "".
  Non-tensor leaves (epoch, lr, ...) are counted, not listed.
* a view (storage offset, strides) is located inside its record and must lie within it; a
  non-contiguous one is hashed in row-major logical order through a strided segment, so its
  checksum equals that of `t.contiguous()` (and of the same tensor in safetensors).
* `byteorder` "big": elements are byte-swapped before hashing, so checksums always mean
  little-endian bytes.
* `storage` column: the record ("data/3"); tied tensors share it.
* torch writes a CRC32 for every record and never checks it. A tensor covering its whole record
  has it verified in the same pass as hashing; every other record gets a CRC-only job. A CRC of
  0 means the writer computed none (`compute_crc32=False`) and is not checked.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from .. import pickle_reader
from .._core import HashJob, NativeFile, ZipForeign, ZipListing, ZipRecord, ZipTruncated, parse_zip, walk_zip
from ..errors import FormatError, IntegrityError, NotACheckpointError
from . import _views, wrong
from .base import BUDGET, FileProblem, Format, Job, Listing
from .torch_pickle import COMPLEX, ITEMSIZE, OBJECTS_POLICY, TORCH_POLICY

NAME = "torch"

_ZIP_MAGIC = b"PK\x03\x04"
_MAX_PICKLE = 1 << 30


def sniff(head: bytes) -> bool:
    """A zip archive (legacy torch.save files are shardscan.formats.torch_legacy's)."""
    return head.startswith(_ZIP_MAGIC)


@dataclass(frozen=True)
class TensorPlacement:
    """Where a tensor's logical bytes are: the job that streams them in row-major order."""

    dtype: str
    shape: list[int]
    offset: int  # absolute offset of the first element
    nbytes: int
    job: HashJob
    whole_record: bool  # the job streams exactly the record's bytes, in order


def itemsize_of(dtype: str) -> int:
    try:
        return ITEMSIZE[dtype]
    except KeyError:
        raise FormatError(f"unknown dtype {dtype}") from None


def storage_nbytes(storage: pickle_reader.StorageRef) -> int:
    """Bytes the pickle says a storage holds (UntypedStorage counts bytes)."""
    return storage.numel * (itemsize_of(storage.dtype) if storage.dtype else 1)


def place_tensor(t: pickle_reader.TensorRef, record: ZipRecord, file_index: int, big_endian: bool) -> TensorPlacement:
    """The hash job for tensor `t` stored in `record`. Raises FormatError when the view does
    not lie inside the record."""
    itemsize = itemsize_of(t.dtype)
    shape = list(t.shape)
    count = _views.numel(shape)
    if count.bit_length() > BUDGET.max_int_bits:
        # torch counts a view's elements in int64 and refuses the file ("numel: integer
        # multiplication overflow"); so does this reader.
        raise FormatError(f"view of shape {tuple(shape)} has {count} elements, more than int64 counts (torch refuses it)")
    nbytes = count * itemsize
    start = record.offset + t.storage_offset * itemsize
    if nbytes == 0:
        # No bytes to find: torch accepts any storage offset here (torch.empty(2, 0)[1:] points
        # past its empty storage), so report the position clamped to the record.
        start = min(start, record.offset + record.size)
        return TensorPlacement(t.dtype, shape, start, 0, HashJob(file=file_index, offset=start, nbytes=0, itemsize=itemsize), False)
    last = t.storage_offset + sum((d - 1) * s for d, s in zip(shape, t.stride))
    if (last + 1) * itemsize > record.size:
        raise FormatError(
            f"view (offset {t.storage_offset}, shape {tuple(shape)}, stride {tuple(t.stride)}) reaches element {last} "
            f"of a {record.size}-byte record of {itemsize}-byte elements")
    swap = big_endian and itemsize > 1
    unit = itemsize // 2 if t.dtype in COMPLEX else itemsize  # complex: swap each real part
    seg = _views.segment(file_index, start, shape, [s * itemsize for s in t.stride], itemsize,
                         complex_unit=unit if swap else None)
    if seg.shape is None:
        job = HashJob(file=file_index, offset=start, nbytes=nbytes, itemsize=unit, byteswap=swap)
        return TensorPlacement(t.dtype, shape, start, nbytes, job, start == record.offset and nbytes == record.size)
    job = HashJob(file=file_index, segments=(seg,), itemsize=unit if swap else itemsize, byteswap=swap)
    return TensorPlacement(t.dtype, shape, start, nbytes, job, False)


def _not_a_checkpoint(records: dict[str, ZipRecord], path: str) -> NotACheckpointError | None:
    """Why an archive with these records is no torch.save checkpoint, or None when it is one."""
    return wrong.zip_refusal(records, path)


#: The archive format versions torch's reader accepts (caffe2/serialize/versions.h).
_VERSIONS = range(1, 11)


def _small_record(file: NativeFile, records: dict[str, ZipRecord], name: str) -> bytes | None:
    rec = records.get(name)
    if rec is None or not rec.intact:
        return None
    if rec.size > 64:
        raise FormatError(f"{name} record of {rec.size} bytes", path=file.path)
    return file.read(rec.offset, rec.size)


def check_records(file: NativeFile, records: dict[str, ZipRecord], truncated: bool) -> None:
    """The records torch's reader insists on before reading any tensor: a `version` it
    supports, written as a decimal number, and a `.storage_alignment` that is one."""
    version = _small_record(file, records, "version")
    if version is None:
        if not truncated:  # a cut archive is reported as cut; the record may be lost with it
            raise FormatError("no version record: torch refuses the archive", path=file.path)
        return
    digits = version.strip()
    if not digits.isdigit() or int(digits) not in _VERSIONS:
        raise FormatError(f"archive format version {version[:16]!r} is not one torch reads "
                          f"({_VERSIONS.start}..{_VERSIONS.stop - 1})", path=file.path)
    alignment = _small_record(file, records, ".storage_alignment")
    if alignment is not None and not alignment.strip().isdigit():
        raise FormatError(f".storage_alignment record {alignment[:16]!r} is not a number", path=file.path)


def byteorder_is_big(file: NativeFile, records: dict[str, ZipRecord]) -> bool:
    """True for big-endian files. An absent record means little (torch < 1.10 wrote none)."""
    rec = records.get("byteorder")
    if rec is None or not rec.intact:
        return False
    if rec.size > 16:
        raise FormatError(f"byteorder record of {rec.size} bytes", path=file.path)
    value = file.read(rec.offset, rec.size)
    if value not in (b"little", b"big"):
        raise FormatError(f"byteorder record says {value[:16]!r}, not 'little' or 'big'", path=file.path)
    return value == b"big"


def read_pickle(file: NativeFile, record: ZipRecord, policy: pickle_reader.Policy = TORCH_POLICY) -> object:
    """Describes a pickle record. The CRC of the pickle is checked here, since we read it anyway."""
    if record.size > _MAX_PICKLE:
        raise FormatError(f"{record.name} is {record.size} bytes (limit {_MAX_PICKLE})", path=file.path)
    data = file.read(record.offset, record.size)
    if record.crc32 and zlib.crc32(data) != record.crc32:
        raise IntegrityError(f"CRC32 mismatch in zip record {record.name}: the pickle is corrupt", path=file.path)
    try:
        return pickle_reader.load(data, policy)
    except FormatError as e:
        e.path = file.path
        raise


def _directory(file: NativeFile) -> tuple[ZipListing, bool]:
    """The archive's records and whether it was truncated (no end record: then the records a
    walk of local headers finds)."""
    try:
        return parse_zip(file), False
    except ZipTruncated:
        return walk_zip(file), True
    except FormatError as violation:
        # TorchScript archives compress their code records, and so may any other zip (an
        # .npz): name the file for what it is rather than for the first rule it breaks.
        try:
            walked = walk_zip(file).by_name()
        except FormatError:
            raise wrong.refusal(file) or violation from None
        # Only a well-formed zip of another tool is named for what it is: a broken directory
        # says more about a hostile file than any guess at its contents.
        refusal = wrong.zip_refusal(walked, file.path)
        if refusal is not None and (isinstance(violation, ZipForeign) or refusal.kind == "torchscript"):
            raise refusal from None
        raise


def read(file: NativeFile, name: str, policy: pickle_reader.Policy = TORCH_POLICY) -> Listing:
    """Rows for every tensor of a torch.save file. Raises FormatError for a TorchScript archive,
    a damaged directory or an unsafe pickle (UnsafePickleError: a global outside `policy`); a
    truncated archive still yields the tensors whose records survived, with a FileProblem."""
    zl, truncated = _directory(file)
    records = zl.by_name()
    refusal = _not_a_checkpoint(records, file.path)
    if refusal is not None:
        raise refusal
    check_records(file, records, truncated)
    pkl = records["data.pkl"]
    if not pkl.intact:
        raise FormatError("truncated inside data.pkl: no tensor can be named", path=file.path, kind="truncated")
    obj = read_pickle(file, pkl, policy)
    listing = Listing(format=NAME, files=[file], names=[name])
    found = _list_tensors(listing, obj, records, byteorder_is_big(file, records))
    covered = {job.record for job in listing.jobs or () if job.record} | {"data.pkl"}
    for rec in zl.records:
        if rec.name not in covered and rec.intact and rec.crc32 != 0:
            job = HashJob(file=0, offset=rec.offset, nbytes=rec.size)
            listing.checks.append(Job.checked(job, rec.crc32, rec.name))
    _report(listing, name, file.path, truncated, found)
    return listing


@dataclass
class _Found:
    """What became of the tensors the pickle names, by key."""

    intact: list[str]
    cut: list[str]
    lost: list[str]
    broken: list[tuple[str, str]]  # ("key: why", kind) for views that do not fit their record


def pickle_limits(pickle_size: int) -> pickle_reader.Limits:
    """The bounds of flattening a pickle of this many bytes (rows and key paths, BUDGET)."""
    return pickle_reader.Limits(max_leaves=BUDGET.rows(pickle_size), max_key_bytes=BUDGET.key_bytes(pickle_size))


def expansion(t: pickle_reader.TensorRef, nbytes: int, record_size: int, spent: int, budget: int) -> str | None:
    """Why hashing a view of `nbytes` logical bytes would pass the file's budget of logical
    bytes (`spent` of `budget` used already), or None. An expanded view (a zero or
    overlapping stride: torch.zeros(1).expand(n)) is named as one."""
    if spent + nbytes <= budget:
        return None
    what = (f"an expanded view (stride {tuple(t.stride)}) of {nbytes} logical bytes over a {record_size}-byte record"
            if nbytes > record_size else f"a view of {nbytes} bytes")
    return f"{what} passes the file's budget of {budget} logical bytes to hash ({BUDGET.view_bytes_per_byte}x its size)"


def _list_tensors(listing: Listing, obj: object, records: dict[str, ZipRecord], big: bool) -> _Found:
    found = _Found([], [], [], [])
    crc_owner: set[str] = set()
    size = listing.files[0].size
    limits = pickle_limits(records["data.pkl"].size)
    budget, spent = BUDGET.view_bytes(size), 0
    for path, leaf in pickle_reader.iter_leaves(obj, limits):
        if not isinstance(leaf, pickle_reader.TensorRef) or leaf.storage is None:
            listing.non_tensor_leaves += 1
            continue
        key = ".".join(path)
        rec_name = f"data/{leaf.storage.key}"
        rec = records.get(rec_name)
        if rec is None:
            found.lost.append(key)
            continue
        if not rec.intact:
            found.cut.append(key)
            continue
        if rec.size != storage_nbytes(leaf.storage):
            found.broken.append((f"{key}: record {rec_name} holds {rec.size} bytes, the pickle says "
                                 f"{storage_nbytes(leaf.storage)}", "format"))
            continue
        try:
            placed = place_tensor(leaf, rec, 0, big)
        except FormatError as e:
            found.broken.append((f"{key}: {e.message}", e.kind))
            continue
        too_much = expansion(leaf, placed.nbytes, rec.size, spent, budget)
        if too_much is not None:
            found.broken.append((f"{key}: {too_much}", "budget"))
            continue
        spent += placed.nbytes
        job = Job(placed.job)
        if placed.whole_record and rec.crc32 and rec_name not in crc_owner:
            job = Job.checked(placed.job, rec.crc32, rec_name)  # the row covers its record: check the CRC in the same pass
            crc_owner.add(rec_name)
        listing.add(job, key=key, dtype=placed.dtype, shape=placed.shape, offset=placed.offset, nbytes=placed.nbytes,
                    storage=rec_name)
        found.intact.append(key)
    return found


def _report(listing: Listing, name: str, path: str, truncated: bool, found: _Found) -> None:
    if truncated:
        error = FormatError("zip has no end-of-central-directory record: the file is truncated", path=path, kind="truncated")
        listing.problems.append(FileProblem(name, error, lost=tuple(found.lost), cut=tuple(found.cut),
                                            intact=tuple(found.intact)))
    elif found.lost:
        error = FormatError(f"storage records missing from the archive for {', '.join(found.lost)}", path=path)
        listing.problems.append(FileProblem(name, error, lost=tuple(found.lost)))
    for message, kind in found.broken:
        listing.problems.append(FileProblem(name, FormatError(message, path=path, kind=kind)))


def load_objects(file: NativeFile) -> object:
    """The description of a torch.save file's whole pickle (every global described, none
    called), for reading a framework's bookkeeping values such as a world size."""
    zl, _ = _directory(file)
    records = zl.by_name()
    refusal = _not_a_checkpoint(records, file.path)
    if refusal is not None:
        raise refusal
    return read_pickle(file, records["data.pkl"], OBJECTS_POLICY)


def read_objects(file: NativeFile, name: str) -> Listing:
    """read() for a file its framework unpickles in full: any global is described, none
    refused (and none imported or called); the archive and every CRC are checked the same."""
    return read(file, name, OBJECTS_POLICY)


FORMAT = Format(
    name=NAME,
    suffixes=(".bin", ".pt", ".pth", ".ckpt"),
    sniff=sniff,
    read=read,
    read_objects=read_objects,
    kinds={".ckpt": "lightning"},
)
