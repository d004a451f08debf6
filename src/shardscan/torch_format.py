"""torch.save files (torch >= 1.6: a zip archive), read without torch and without executing
anything they contain.

The C core validates the zip (stored records, one top-level folder, no overlaps, ZIP64);
`data.pkl` is described by our restricted pickle reader (shardscan.pickle_reader); every tensor
becomes one row whose bytes are located through its storage record `data/<key>`:

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
from dataclasses import dataclass, field, replace

from . import pickle_reader
from ._core import MAX_DIMS, HashJob, HashResult, NativeFile, Segment
from ._core import ZipListing, ZipRecord, ZipTruncated, parse_zip, walk_zip
from .errors import FormatError
from .listing import FileProblem, Listing

FORMAT = "torch"

#: Bytes per element of every dtype torch can save (sub-byte types occupy one byte each).
ITEMSIZE = {
    "float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
    "int8": 1, "uint8": 1, "bool": 1, "complex32": 4, "complex64": 8, "complex128": 16,
    "float8_e4m3fn": 1, "float8_e4m3fnuz": 1, "float8_e5m2": 1, "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1, "float4_e2m1fn_x2": 1, "uint16": 2, "uint32": 4, "uint64": 8,
    "uint1": 1, "uint2": 1, "uint3": 1, "uint4": 1, "uint5": 1, "uint6": 1, "uint7": 1,
    "int1": 1, "int2": 1, "int3": 1, "int4": 1, "int5": 1, "int6": 1, "int7": 1,
    "bits8": 1, "bits16": 2, "bits1x8": 1, "bits2x4": 1, "bits4x2": 1,
    "qint8": 1, "quint8": 1, "qint32": 4, "quint4x2": 1, "quint2x4": 1,
}
_COMPLEX = {"complex32", "complex64", "complex128"}

#: The pickle of a legacy (pre-1.6) torch.save file starts with protocol 2 and this magic number.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_ZIP_MAGIC = b"PK\x03\x04"
_MAX_PICKLE = 1 << 30


def sniff(head: bytes) -> bool:
    """A zip archive, or a legacy torch pickle (which read() then refuses by name)."""
    return head.startswith(_ZIP_MAGIC) or head.startswith(_LEGACY_MAGIC)


@dataclass
class TorchListing(Listing):
    """A Listing plus the CRC checks the scanner runs alongside hashing: `crc_expected[i]` is
    the CRC row i's job must produce (None: not checked there); `check_jobs` are CRC-only jobs
    for records no row covers whole, with `check_expected` / `check_names` aligned."""

    crc_expected: list[int | None] = field(default_factory=list)
    crc_records: list[str | None] = field(default_factory=list)
    check_expected: list[int] = field(default_factory=list)
    check_names: list[str] = field(default_factory=list)
    records_without_crc: int = 0

    def verify(self, row_results: list[HashResult], check_results: list[HashResult]) -> list[FileProblem]:
        """Problems found by the CRCs computed during hashing (one per corrupt record)."""
        bad: dict[str, list[str]] = {}
        for key, expected, record, result in zip(self.keys, self.crc_expected, self.crc_records, row_results):
            if expected is not None and result.crc32 is not None and result.crc32 != expected:
                bad.setdefault(record or "?", []).append(key)
        for name, expected, result in zip(self.check_names, self.check_expected, check_results):
            if result.crc32 is not None and result.crc32 != expected:
                bad.setdefault(name, [])
        problems = []
        for record, keys in bad.items():
            holders = f" (holding {', '.join(keys)})" if keys else ""
            holders = holders or "".join(
                f" (holding {', '.join(k for k, s in zip(self.keys, self.storages) if s == record)})"
                for _ in [0] if record in self.storages)
            problems.append(FileProblem(self.names[0], f"CRC32 mismatch in zip record {record}{holders}: bytes are corrupt",
                                        cut=tuple(keys)))
        return problems


# ---------------------------------------------------------------------------------------------


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
    numel = 1
    for d in shape:
        numel *= d
    nbytes = numel * itemsize
    start = record.offset + t.storage_offset * itemsize
    if numel == 0:
        # No bytes to find: torch accepts any storage offset here (torch.empty(2, 0)[1:] points
        # past its empty storage), so report the position clamped to the record.
        start = min(start, record.offset + record.size)
        return TensorPlacement(t.dtype, shape, start, 0, HashJob(file=file_index, offset=start, nbytes=0, itemsize=itemsize), False)
    last = t.storage_offset + sum((d - 1) * s for d, s in zip(shape, t.stride))
    if (last + 1) * itemsize > record.size:
        raise FormatError(
            f"view (offset {t.storage_offset}, shape {tuple(shape)}, stride {tuple(t.stride)}) reaches element {last} "
            f"of a {record.size}-byte record of {itemsize}-byte elements")
    # Drop unit dimensions and merge dimensions that are contiguous with the next: a plain tensor
    # becomes one run, a column slice becomes (rows, row bytes).
    dims = [(d, s * itemsize) for d, s in zip(shape, t.stride) if d != 1]
    merged: list[list[int]] = []
    for d, s in reversed(dims):
        if merged and s == merged[-1][0] * merged[-1][1]:
            merged[-1] = [merged[-1][0] * d, merged[-1][1]]
        else:
            merged.append([d, s])
    merged.reverse()
    swap = big_endian and itemsize > 1
    unit = itemsize // 2 if t.dtype in _COMPLEX else itemsize  # complex: swap each real part
    contiguous = not merged or (len(merged) == 1 and merged[0][1] == itemsize)
    if contiguous:
        job = HashJob(file=file_index, offset=start, nbytes=nbytes, itemsize=unit, byteswap=swap)
        whole = start == record.offset and nbytes == record.size
        return TensorPlacement(t.dtype, shape, start, nbytes, job, whole)
    if swap and unit != itemsize:
        merged.append([2, unit])  # complex: an extra dimension over the two halves
    ndim_shape = [d for d, _ in merged]
    strides = [s for _, s in merged]
    if len(ndim_shape) > MAX_DIMS:
        raise FormatError(f"view has {len(ndim_shape)} non-mergeable dimensions; at most {MAX_DIMS} are supported")
    seg = Segment(file=file_index, offset=start, shape=tuple(ndim_shape), strides=tuple(strides))
    job = HashJob(file=file_index, segments=(seg,), itemsize=unit if swap else itemsize, byteswap=swap)
    return TensorPlacement(t.dtype, shape, start, nbytes, job, False)


def _reject_non_checkpoints(records: dict[str, ZipRecord], path: str) -> None:
    if "constants.pkl" in records or any(n.startswith("code/") for n in records):
        raise FormatError(f"{path}: a TorchScript archive (torch.jit.save), not a torch.save checkpoint; not supported",
                          path=path)
    if "data.pkl" not in records:
        raise FormatError(f"{path}: a zip archive without data.pkl: not a torch.save checkpoint", path=path)


def _byteorder(file: NativeFile, records: dict[str, ZipRecord]) -> bool:
    """True for big-endian files. An absent record means little (torch < 1.10 wrote none)."""
    rec = records.get("byteorder")
    if rec is None or not rec.intact:
        return False
    if rec.size > 16:
        raise FormatError(f"{file.path}: byteorder record of {rec.size} bytes", path=file.path)
    value = file.read(rec.offset, rec.size)
    if value not in (b"little", b"big"):
        raise FormatError(f"{file.path}: byteorder record says {value[:16]!r}, not 'little' or 'big'", path=file.path)
    return value == b"big"


def read_pickle(file: NativeFile, record: ZipRecord, policy: pickle_reader.Policy = pickle_reader.TORCH_POLICY) -> object:
    """Describes a pickle record. The CRC of the pickle is checked here, since we read it anyway."""
    if record.size > _MAX_PICKLE:
        raise FormatError(f"{file.path}: {record.name} is {record.size} bytes (limit {_MAX_PICKLE})", path=file.path)
    data = file.read(record.offset, record.size)
    if record.crc32 and zlib.crc32(data) != record.crc32:
        raise FormatError(f"{file.path}: CRC32 mismatch in zip record {record.name}: the pickle is corrupt", path=file.path)
    try:
        return pickle_reader.load(data, policy)
    except FormatError as e:
        e.path = file.path
        if not str(e).startswith(file.path):
            e.args = (f"{file.path}: {e}",)
        raise


def _join(path: tuple[str, ...]) -> str:
    return ".".join(path)


def read(file: NativeFile, name: str) -> Listing:
    """Rows for every tensor of a torch.save file. Raises FormatError for a legacy file, a
    TorchScript archive, a damaged directory or an unsafe pickle (UnsafePickleError); a
    truncated archive still yields the tensors whose records survived, with a FileProblem."""
    head = file.read(0, min(file.size, len(_LEGACY_MAGIC)))
    if head.startswith(_LEGACY_MAGIC):
        raise FormatError(f"{file.path}: a legacy torch.save file (torch < 1.6, not a zip archive); not supported",
                          path=file.path)
    listing = TorchListing(format=FORMAT, files=[file], names=[name])
    truncated = False
    try:
        zl = parse_zip(file)
    except ZipTruncated:
        zl = walk_zip(file)
        truncated = True
    except FormatError:
        # TorchScript archives compress their code records: name the file for what it is
        # rather than for the first rule it breaks.
        try:
            _reject_non_checkpoints(walk_zip(file).by_name(), file.path)
        except FormatError as named:
            if "TorchScript" in str(named):
                raise named from None
        raise
    records = zl.by_name()
    _reject_non_checkpoints(records, file.path)
    pkl = records["data.pkl"]
    if not pkl.intact:
        raise FormatError(f"{file.path}: truncated inside data.pkl: no tensor can be named", path=file.path)
    obj = read_pickle(file, pkl)
    big = _byteorder(file, records)

    verified: set[str] = {"data.pkl"}
    intact, cut, lost, broken = [], [], [], []
    for path, leaf in pickle_reader.iter_leaves(obj):
        if not isinstance(leaf, pickle_reader.TensorRef) or leaf.storage is None:
            listing.non_tensor_leaves += 1
            continue
        key = _join(path)
        rec_name = f"data/{leaf.storage.key}"
        rec = records.get(rec_name)
        if rec is None:
            lost.append(key)
            continue
        if not rec.intact:
            cut.append(key)
            continue
        if rec.size != storage_nbytes(leaf.storage):
            broken.append(f"{key}: record {rec_name} holds {rec.size} bytes, the pickle says {storage_nbytes(leaf.storage)}")
            continue
        try:
            placed = place_tensor(leaf, rec, 0, big)
        except FormatError as e:
            broken.append(f"{key}: {e}")
            continue
        job, expected = placed.job, None
        if placed.whole_record and rec.crc32 and rec_name not in verified:
            job = replace(job, crc32=True)  # the row covers its record: check the CRC in the same pass
            expected = rec.crc32
            verified.add(rec_name)
        listing.add(key, placed.dtype, placed.shape, placed.offset, placed.nbytes, job, storage=rec_name)
        listing.crc_expected.append(expected)
        listing.crc_records.append(rec_name if expected is not None else None)
        intact.append(key)

    for rec in zl.records:
        if rec.name in verified or not rec.intact:
            continue
        if rec.crc32 == 0:
            listing.records_without_crc += 1
            continue
        listing.check_jobs.append(HashJob(file=0, offset=rec.offset, nbytes=rec.size, crc32=True))
        listing.check_expected.append(rec.crc32)
        listing.check_names.append(rec.name)

    if truncated:
        listing.problems.append(FileProblem(
            name, "zip has no end-of-central-directory record: the file is truncated",
            lost=tuple(lost), cut=tuple(cut), intact=tuple(intact)))
    elif lost:
        listing.problems.append(FileProblem(name, f"storage records missing from the archive for {', '.join(lost)}",
                                            lost=tuple(lost)))
    for message in broken:
        listing.problems.append(FileProblem(name, message))
    return listing
