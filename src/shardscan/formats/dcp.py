"""torch.distributed.checkpoint (DCP) directories: `.metadata` plus `__<rank>_<n>.distcp` files.

`.metadata` is a pickle of DCP's dataclasses, described by the restricted pickle reader with
its DCP allowlist (nothing is imported or called). Each chunk of a tensor lives at
`_StorageInfo.offset/length` inside a .distcp file, where it is itself a small torch.save zip
archive; the chunk's bytes are found through that archive's `data.pkl` and storage record.

One row per logical tensor, with its full shape. The checksum covers the whole logical tensor in
row-major order however it was split: the chunks are streamed as segments in the order the
tensor's elements come (for a split along rows that is chunk after chunk; for a split along
columns, row pieces of each chunk interleave). A row's `file` is the .distcp file holding the
first element and `offset` that element's position there.

Validated here, since DCP checks it only at save time: chunks lie inside the tensor, do not
overlap and their volumes add up to it; every referenced file exists and every byte range lies
inside its file; each chunk's archive holds a tensor of the chunk's dtype and shape. A directory
without `.metadata` is an incomplete save (the coordinator writes it last).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Collection

from .. import pickle_reader
from .._core import HashJob, NativeFile, Segment, parse_zip
from ..errors import FormatError
from ..pickle_reader import DType, Global, Handler, Instance, Policy, TensorRef
from . import _views
from .base import FileProblem, Format, Job, Listing
from .torch_pickle import COMPLEX, TORCH_POLICY
from .torch_zip import byteorder_is_big, itemsize_of, place_tensor, read_pickle, storage_nbytes

NAME = "dcp"
METADATA = ".metadata"
SUFFIX = ".distcp"
_MAX_METADATA = 1 << 30
#: Bound on the segments one tensor may need (a column split of a tall matrix needs one per row
#: and chunk); beyond it the layout is refused rather than streamed slowly.
MAX_SEGMENTS = 1 << 20


# `.metadata` holds dataclasses pickled by the default protocol (NEWOBJ + BUILD), plus the few
# torch values their fields hold. The module moved between torch releases; both spellings count.
_DCP_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed._shard.checkpoint.metadata")
_DCP_CLASSES = (
    "Metadata",
    "TensorStorageMetadata",
    "BytesStorageMetadata",
    "ChunkStorageMetadata",
    "TensorProperties",
    "MetadataIndex",
    "StorageMeta",
    "_MEM_FORMAT_ENCODING",
)
_DCP_OTHER = (
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.distributed._shard.checkpoint.filesystem", "_StorageInfo"),
    ("torch.distributed.checkpoint._extension", "StreamTransformExtension"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
)
#: The torch values the metadata's fields may hold, built as the torch policy builds them.
_TORCH_VALUES = ("torch.Size", "torch.device", "torch.serialization._get_layout", "collections.OrderedDict",
                 "builtins.set", "_codecs.encode")


def _describe(full: str) -> Handler:
    module, _, name = full.rpartition(".")

    def handler(args: tuple[Any, ...]) -> Instance:
        return Instance(Global(module, name), args)

    return handler


def _dcp_policy() -> Policy:
    classes = [f"{m}.{c}" for m in _DCP_MODULES for c in _DCP_CLASSES] + [f"{m}.{c}" for m, c in _DCP_OTHER]
    reduce = {k: TORCH_POLICY.reduce[k] for k in _TORCH_VALUES}
    for full in classes:
        # Enums (_MEM_FORMAT_ENCODING) and paths are pickled as Class(value): a description.
        reduce[full] = _describe(full)
    values = {k: v for k, v in TORCH_POLICY.values.items() if isinstance(v, DType)}
    return Policy("dcp", values, reduce, frozenset(classes), None)


DCP_POLICY = _dcp_policy()


def _fail(name: str, msg: str, key: str | None = None) -> FormatError:
    return FormatError(msg, path=name, key=key)


def _cls(obj: Any) -> str:
    return obj.cls.name if isinstance(obj, Instance) else type(obj).__name__


def _ints(value: Any, what: str, name: str, key: str) -> tuple[int, ...]:
    if type(value) not in (tuple, list) or not all(type(v) is int and v >= 0 for v in value):
        raise _fail(name, f"{key}: {what} is not a list of non-negative integers", key)
    return tuple(value)


def _dtype_of(props: Any, name: str, key: str) -> str:
    # TensorProperties pickles either as a dataclass dict or through its own __setstate__ as
    # (dtype, layout, requires_grad, memory_format, pin_memory).
    if not isinstance(props, Instance):
        raise _fail(name, f"{key}: tensor properties missing", key)
    dtype = props.get("dtype")
    state = props.get("__setstate__")
    if dtype is None and type(state) is tuple and state:
        dtype = state[0]
    if not isinstance(dtype, DType):
        raise _fail(name, f"{key}: tensor properties carry no dtype", key)
    return dtype.name


def _index_storage(md: Instance, name: str) -> dict[tuple[str, tuple[int, ...] | None], Instance]:
    """_StorageInfo by (fqn, chunk offsets) (how DCP itself looks chunks up)."""
    storage_data = md.get("storage_data")
    if type(storage_data) is not dict:
        raise _fail(name, ".metadata has no storage_data mapping")
    index: dict[tuple[str, tuple[int, ...] | None], Instance] = {}
    for mi, info in storage_data.items():
        if _cls(mi) != "MetadataIndex" or _cls(info) != "_StorageInfo":
            raise _fail(name, ".metadata storage_data is not MetadataIndex -> _StorageInfo")
        fqn, offset = mi.get("fqn"), mi.get("offset")
        if type(fqn) is not str:
            raise _fail(name, ".metadata storage_data has a MetadataIndex without fqn")
        index[(fqn, tuple(offset) if type(offset) in (tuple, list) else None)] = info
    return index


def _overlaps(a: tuple[tuple[int, ...], tuple[int, ...]], b: tuple[tuple[int, ...], tuple[int, ...]]) -> bool:
    return all(ao < bo + bs and bo < ao + as_ for ao, as_, bo, bs in zip(a[0], a[1], b[0], b[1]))


class _Chunk:
    def __init__(self, offsets: tuple[int, ...], sizes: tuple[int, ...]) -> None:
        self.offsets, self.sizes = offsets, sizes
        self.file_index = 0
        self.base = 0  # absolute offset of the chunk's element 0
        self.strides: tuple[int, ...] = ()  # byte strides of the chunk tensor
        self.record = ""
        self.whole = False
        self.record_offset = 0
        self.record_size = 0
        self.record_crc = 0
        self.big = False


def _row_major_segments(size: tuple[int, ...], chunks: list[_Chunk], itemsize: int, complex_unit: int | None,
                        name: str, key: str) -> list[Segment]:
    """Segments that stream the logical tensor in row-major order across its chunks
    (`complex_unit` as in _views.segment)."""
    ndim = len(size)
    # k: the last dimension some chunk does not span in full. Inside dims > k every chunk is
    # whole, so for a fixed index over dims < k the chunks met along dim k are each one block.
    k = -1
    for d in range(ndim):
        if any(c.offsets[d] != 0 or c.sizes[d] != size[d] for c in chunks):
            k = d
    if k < 0:
        c = chunks[0]
        return [_views.segment(c.file_index, c.base, c.sizes, c.strides, itemsize, complex_unit)]
    outer = _views.numel(size[:k])
    if outer * len(chunks) > 4 * MAX_SEGMENTS:
        raise _fail(name, f"{key}: {len(chunks)} chunks over {outer} outer positions are too fragmented to stream", key)
    order = sorted(chunks, key=lambda c: c.offsets[k])
    segments: list[Segment] = []
    prefix = [0] * k
    for _ in range(outer):
        for c in order:
            if all(c.offsets[d] <= prefix[d] < c.offsets[d] + c.sizes[d] for d in range(k)):
                off = c.base + sum((prefix[d] - c.offsets[d]) * c.strides[d] for d in range(k))
                segments.append(_views.segment(c.file_index, off, c.sizes[k:], c.strides[k:], itemsize, complex_unit))
                if len(segments) > MAX_SEGMENTS:
                    raise _fail(name, f"{key}: needs more than {MAX_SEGMENTS} segments to stream", key)
        for d in range(k - 1, -1, -1):  # next prefix, row-major
            prefix[d] += 1
            if prefix[d] < size[d]:
                break
            prefix[d] = 0
    return segments


def read_dir(path: Path, name: str) -> Listing:
    """Rows for every tensor of a DCP checkpoint directory. Raises FormatError when .metadata
    is missing (incomplete save), unsafe (UnsafePickleError) or malformed; per-tensor problems
    (missing file, range outside a file, bad chunks) become FileProblems naming the tensor."""
    meta_path = path / METADATA
    if not meta_path.is_file():
        raise _fail(name, "DCP checkpoint without .metadata: an incomplete save (the coordinator writes it last)")
    meta = NativeFile(meta_path)
    if meta.size > _MAX_METADATA:
        raise _fail(name, f".metadata is {meta.size} bytes (limit {_MAX_METADATA})")
    try:
        md = pickle_reader.load(meta.read(0, meta.size), DCP_POLICY)
    except FormatError as e:
        e.path, e.message = name, f"{METADATA}: {e.message}"
        raise
    if _cls(md) != "Metadata" or type(md.get("state_dict_metadata")) is not dict:
        raise _fail(name, ".metadata does not hold a DCP Metadata object")
    index = _index_storage(md, name)

    listing = Listing(format=NAME, files=[meta], names=[name])
    opened: dict[str, int] = {}

    def open_file(rel: Any, key: str) -> int:
        if type(rel) is not str or not rel or "/" in rel or "\\" in rel or rel in (".", "..") or "\0" in rel:
            raise _fail(name, f"{key}: storage path {rel!r:.80} is not a file name inside the directory", key)
        if rel not in opened:
            fpath = path / rel
            if not fpath.is_file():
                raise _fail(name, f"{key}: {rel} is missing", key)
            listing.files.append(NativeFile(fpath))
            listing.names.append(rel)
            opened[rel] = len(listing.files) - 1
        return opened[rel]

    for key, entry in md.get("state_dict_metadata").items():
        if type(key) is not str:
            raise _fail(name, ".metadata has a non-string tensor name")
        kind = _cls(entry)
        if kind == "BytesStorageMetadata":
            listing.non_tensor_leaves += 1
            continue
        if kind != "TensorStorageMetadata":
            raise _fail(name, f"{key}: unknown storage metadata {kind}", key)
        try:
            _read_tensor(listing, key, entry, index, open_file, name)
        except (FormatError, OSError) as e:
            listing.problems.append(FileProblem(name, e, lost=(key,)))
    return listing


def _read_tensor(listing: Listing, key: str, entry: Instance, index: dict, open_file: Any, name: str) -> None:
    dtype = _dtype_of(entry.get("properties"), name, key)
    itemsize = itemsize_of(dtype)
    size = _ints(entry.get("size"), "size", name, key)
    raw_chunks = entry.get("chunks")
    if type(raw_chunks) is not list or not raw_chunks:
        raise _fail(name, f"{key}: no chunks", key)
    numel = _views.numel(size)
    chunks: list[_Chunk] = []
    volume = 0
    for rc in raw_chunks:
        if _cls(rc) != "ChunkStorageMetadata":
            raise _fail(name, f"{key}: chunk is {_cls(rc)}, not ChunkStorageMetadata", key)
        offsets = _ints(rc.get("offsets"), "chunk offsets", name, key)
        sizes = _ints(rc.get("sizes"), "chunk sizes", name, key)
        if len(offsets) != len(size) or len(sizes) != len(size):
            raise _fail(name, f"{key}: chunk at {offsets} has {len(sizes)} dimensions, the tensor {len(size)}", key)
        if any(o + s > d for o, s, d in zip(offsets, sizes, size)):
            raise _fail(name, f"{key}: chunk at {offsets} of size {sizes} lies outside the tensor's {size}", key)
        volume += _views.numel(sizes)
        chunks.append(_Chunk(offsets, sizes))
    if len(chunks) <= 4096:
        boxes = [(c.offsets, c.sizes) for c in chunks]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                if _overlaps(boxes[i], boxes[j]) and all(s > 0 for s in boxes[i][1] + boxes[j][1]):
                    raise _fail(name, f"{key}: chunks at {boxes[i][0]} and {boxes[j][0]} overlap", key)
    else:
        raise _fail(name, f"{key}: {len(chunks)} chunks (limit 4096)", key)
    # Inside the bounds and disjoint, the volumes add up exactly when the chunks tile the tensor.
    if volume != numel:
        raise _fail(name, f"{key}: chunks hold {volume} elements, the tensor {numel}", key)

    for c in chunks:
        info = index.get((key, c.offsets))
        if info is None:
            raise _fail(name, f"{key}: no storage entry for the chunk at {c.offsets}", key)
        rel, offset, length = info.get("relative_path"), info.get("offset"), info.get("length")
        if type(offset) is not int or type(length) is not int or offset < 0 or length < 0:
            raise _fail(name, f"{key}: chunk at {c.offsets} has no valid byte range", key)
        if info.get("transform_descriptors"):
            raise _fail(name, f"{key}: chunk at {c.offsets} is stored through transforms "
                        f"({info.get('transform_descriptors')!r:.60}); not supported", key)
        fi = open_file(rel, key)
        file = listing.files[fi]
        if offset + length > file.size:
            raise _fail(name, f"{key}: chunk at {c.offsets} is bytes {offset}..{offset + length} of {rel}, "
                        f"which has only {file.size}", key)
        zl = parse_zip(file, offset, length)
        records = zl.by_name()
        if "data.pkl" not in records:
            raise _fail(name, f"{key}: chunk at {c.offsets} in {rel} holds no torch.save archive", key)
        t = read_pickle(file, records["data.pkl"])
        if not isinstance(t, TensorRef) or t.storage is None:
            raise _fail(name, f"{key}: chunk at {c.offsets} in {rel} does not hold a tensor", key)
        if t.dtype != dtype or t.shape != c.sizes:
            raise _fail(name, f"{key}: chunk at {c.offsets} holds {t.dtype}{list(t.shape)}, "
                        f"expected {dtype}{list(c.sizes)}", key)
        rec = records.get(f"data/{t.storage.key}")
        if rec is None:
            raise _fail(name, f"{key}: chunk at {c.offsets} in {rel} lacks its storage record", key)
        if rec.size != storage_nbytes(t.storage):
            raise _fail(name, f"{key}: chunk at {c.offsets}: record holds {rec.size} bytes, the pickle says "
                        f"{storage_nbytes(t.storage)}", key)
        c.big = byteorder_is_big(file, records)
        placed = place_tensor(t, rec, fi, c.big)  # validates the view against the record
        c.file_index, c.base = fi, placed.offset
        c.strides = tuple(s * itemsize for s in t.stride)
        c.record, c.whole = f"{rel}:{rec.name}@{rec.offset}", placed.whole_record
        c.record_offset, c.record_size, c.record_crc = rec.offset, rec.size, rec.crc32
    if len({c.big for c in chunks}) > 1:
        raise _fail(name, f"{key}: chunks disagree on byte order", key)
    big = chunks[0].big and itemsize > 1

    unit = itemsize // 2 if dtype in COMPLEX else itemsize  # complex: swap each real part
    segments = _row_major_segments(size, chunks, itemsize, unit if big else None, name, key)
    first = min(chunks, key=lambda c: c.offsets)
    origin = next((c for c in chunks if all(o == 0 for o in c.offsets)), first)
    read = HashJob(file=origin.file_index, segments=tuple(segments), itemsize=unit if big else itemsize, byteswap=big)
    single_whole = len(chunks) == 1 and chunks[0].whole and chunks[0].record_crc != 0
    job = Job.checked(read, chunks[0].record_crc, chunks[0].record) if single_whole else Job(read)
    listing.add(job, file=origin.file_index, key=key, dtype=dtype, shape=list(size), offset=origin.base,
                nbytes=numel * itemsize)
    if not single_whole:
        for c in chunks:
            if c.record_crc:
                check = HashJob(file=c.file_index, offset=c.record_offset, nbytes=c.record_size)
                listing.checks.append(Job.checked(check, c.record_crc, c.record))



def is_directory(entry_names: Collection[str]) -> bool:
    """A DCP checkpoint directory: a .metadata file or any .distcp file (a save cut short
    before .metadata was written is still one, and read_dir names what is missing)."""
    return METADATA in entry_names or any(n.endswith(SUFFIX) for n in entry_names)


def unfinished(entry_names: Collection[str]) -> str | None:
    if METADATA not in entry_names:
        return "no .metadata: torch.distributed.checkpoint writes it last, so the save did not finish"
    return None


FORMAT = Format(NAME, suffixes=(SUFFIX,), is_directory=is_directory, read_directory=read_dir, unfinished=unfinished)
