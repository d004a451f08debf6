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

import heapq
from pathlib import Path
from typing import Any, Collection

from .. import pickle_reader
from .._core import HashJob, NativeFile, Segment, parse_zip
from ..errors import FormatError
from ..pickle_reader import DType, Global, Handler, Instance, Policy, TensorRef
from . import _views, wrong
from .base import BUDGET, FileProblem, Format, Job, Listing
from .torch_pickle import COMPLEX, TORCH_POLICY
from .torch_zip import byteorder_is_big, itemsize_of, place_tensor, read_pickle, storage_nbytes

NAME = "dcp"
METADATA = ".metadata"
SUFFIX = ".distcp"
_MAX_METADATA = 1 << 30
#: Bound on the segments one tensor may need (a column split of a tall matrix needs one per row
#: and chunk); beyond it the layout is refused rather than streamed slowly.
MAX_SEGMENTS = 1 << 20
#: Bound on the chunks of one tensor (a real save has one per rank and shard).
MAX_CHUNKS = 4096


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
    # Metadata.all_local_plans: every rank's SavePlan, kept by savers that reuse the plan of the
    # previous save (megatron-core's torch_dist strategy fills it on every save).
    ("torch.distributed.checkpoint.planner", "SavePlan"),
    ("torch.distributed.checkpoint.planner", "WriteItem"),
    ("torch.distributed.checkpoint.planner", "WriteItemType"),
    ("torch.distributed.checkpoint.planner", "TensorWriteData"),
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


def _fail(name: str, msg: str, key: str | None = None, kind: str | None = None) -> FormatError:
    return FormatError(msg, path=name, key=key, kind=kind)


def _cls(obj: Any) -> str:
    return obj.cls.name if isinstance(obj, Instance) else type(obj).__name__


def _ints(value: Any, what: str) -> tuple[int, ...]:
    # Counted and sized before any arithmetic, as for torch.save shapes (BUDGET).
    if type(value) not in (tuple, list) or len(value) > BUDGET.max_dims:
        raise FormatError(f"{what} is not a list of at most {BUDGET.max_dims} non-negative integers")
    if not all(type(v) is int and 0 <= v and v.bit_length() <= BUDGET.max_int_bits for v in value):
        raise FormatError(f"{what} is not a list of non-negative int64 integers")
    return tuple(value)


def _dtype_of(props: Any) -> str:
    # TensorProperties pickles either as a dataclass dict or through its own __setstate__ as
    # (dtype, layout, requires_grad, memory_format, pin_memory).
    if not isinstance(props, Instance):
        raise FormatError("tensor properties missing")
    dtype = props.get("dtype")
    state = props.get("__setstate__")
    if dtype is None and type(state) is tuple and state:
        dtype = state[0]
    if not isinstance(dtype, DType):
        raise FormatError("tensor properties carry no dtype")
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


def first_overlap(boxes: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> tuple[int, int] | None:
    """Two chunks (offsets, sizes) that share an element, or None. A sweep along the dimension
    whose chunks start at the most distinct offsets: sorted by start there, each chunk is
    compared only with the chunks still open at its start (for a row or column split, one),
    so a tiling costs n log n rather than the n^2 of comparing every pair."""
    live = [i for i, (_, sizes) in enumerate(boxes) if all(s > 0 for s in sizes)]  # empty chunks hold nothing
    if len(live) < 2:
        return None
    ndim = len(boxes[live[0]][0])
    if ndim == 0:
        return live[0], live[1]  # two chunks of a 0-dim tensor are the same element
    d = max(range(ndim), key=lambda k: len({boxes[i][0][k] for i in live}))
    open_chunks: list[tuple[int, int]] = []  # heap of (end along d, chunk)
    for i in sorted(live, key=lambda i: boxes[i][0][d]):
        start = boxes[i][0][d]
        while open_chunks and open_chunks[0][0] <= start:
            heapq.heappop(open_chunks)
        for _, j in open_chunks:
            if _overlaps(boxes[i], boxes[j]):
                return j, i
        heapq.heappush(open_chunks, (start + boxes[i][1][d], i))
    return None


class _Chunk:
    __slots__ = ("offsets", "sizes", "file_index", "base", "strides", "record", "whole", "record_offset",
                 "record_size", "record_crc", "big")

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


class _DirBudget:
    """What one DCP directory may still cost (BUDGET, relative to the bytes of its .metadata and
    .distcp files): segments to stream and logical bytes to hash, over all its tensors; and
    the chunk archives already read, so chunks that point at one archive parse it once."""

    def __init__(self, path: Path) -> None:
        size = 0
        for entry in path.iterdir():
            if entry.name == METADATA or entry.name.endswith(SUFFIX):
                try:
                    size += entry.stat().st_size
                except OSError:
                    pass
        self.size = size
        self.segments = BUDGET.segments(size)
        self.view_bytes = BUDGET.view_bytes(size)
        self.archives: dict[tuple[int, int, int], tuple[dict, Any, bool]] = {}

    def spend(self, segments: int, nbytes: int, name: str, key: str) -> None:
        if segments > self.segments:
            raise _fail(name, f"{key}: needs more segments to stream than the directory's budget leaves ({self.segments} "
                        f"of {BUDGET.segments(self.size)} for {self.size} bytes of files); chunks over expanded views?",
                        key, "budget")
        if nbytes > self.view_bytes:
            raise _fail(name, f"{key}: {nbytes} logical bytes to hash pass the directory's budget ({self.view_bytes} left "
                        f"of {BUDGET.view_bytes(self.size)}, {BUDGET.view_bytes_per_byte}x its files); chunks over "
                        f"expanded views?", key, "budget")
        self.segments -= segments
        self.view_bytes -= nbytes


def _row_major_segments(size: tuple[int, ...], chunks: list[_Chunk], itemsize: int, complex_unit: int | None,
                        name: str, key: str, budget: _DirBudget) -> list[Segment]:
    """Segments that stream the logical tensor in row-major order across its chunks
    (`complex_unit` as in _views.segment), at most the segments `budget` leaves."""
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
        raise _fail(name, f"{key}: {len(chunks)} chunks over {outer} outer positions are too fragmented to stream", key, "budget")
    order = sorted(chunks, key=lambda c: c.offsets[k])
    segments: list[Segment] = []
    prefix = [0] * k
    for _ in range(outer):
        for c in order:
            if all(c.offsets[d] <= prefix[d] < c.offsets[d] + c.sizes[d] for d in range(k)):
                off = c.base + sum((prefix[d] - c.offsets[d]) * c.strides[d] for d in range(k))
                segments.append(_views.segment(c.file_index, off, c.sizes[k:], c.strides[k:], itemsize, complex_unit))
                if len(segments) > MAX_SEGMENTS:
                    raise _fail(name, f"{key}: needs more than {MAX_SEGMENTS} segments to stream", key, "budget")
                if len(segments) > budget.segments:
                    budget.spend(len(segments), 0, name, key)  # raises: the budget is spent
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
        raise _fail(name, "DCP checkpoint without .metadata: an incomplete save (the coordinator writes it last)",
                    kind="unfinished")
    meta = NativeFile(meta_path)
    if meta.size > _MAX_METADATA:
        raise _fail(name, f".metadata is {meta.size} bytes (limit {_MAX_METADATA})")
    try:
        md = pickle_reader.load(meta.read(0, meta.size), DCP_POLICY)
    except FormatError as e:
        # A .metadata fetched as an LFS pointer (or an error page) is named for what it is.
        e = wrong.refusal(meta) or e
        e.path, e.message = name, f"{METADATA}: {e.message}"
        raise e from None
    if _cls(md) != "Metadata" or type(md.get("state_dict_metadata")) is not dict:
        raise _fail(name, ".metadata does not hold a DCP Metadata object")
    index = _index_storage(md, name)
    budget = _DirBudget(path)
    geometries: dict[int, _Geometry] = {}  # by id(): the entries stay alive in md

    listing = Listing(format=NAME, files=[meta], names=[name])
    opened: dict[str, int] = {}

    def open_file(rel: Any, key: str) -> int:
        if type(rel) is not str or not rel or "/" in rel or "\\" in rel or rel in (".", "..") or "\0" in rel:
            raise _fail(name, f"{key}: storage path {rel!r:.80} is not a file name inside the directory", key)
        if rel not in opened:
            fpath = path / rel
            if not fpath.is_file():
                raise _fail(name, f"{key}: {rel} is missing", key, "absent")
            listing.files.append(NativeFile(fpath))
            listing.names.append(rel)
            opened[rel] = len(listing.files) - 1
        return opened[rel]

    cut: dict[str, list] = {}  # .distcp file -> [its size, bytes its chunks need, tensors lost]
    for key, entry in md.get("state_dict_metadata").items():
        if type(key) is not str:
            raise _fail(name, ".metadata has a non-string tensor name")
        kind = _cls(entry)
        if kind == "BytesStorageMetadata":
            listing.non_tensor_leaves += 1
            continue
        if kind != "TensorStorageMetadata":
            raise _fail(name, f"{key}: unknown storage metadata {kind}", key)
        geometry = geometries.get(id(entry))
        if geometry is None:
            geometry = geometries[id(entry)] = _Geometry(entry)
        try:
            _read_tensor(listing, key, geometry, index, open_file, name, budget)
        except _CutShort as e:
            seen = cut.setdefault(e.rel, [e.size, 0, []])
            seen[1] = max(seen[1], e.needed)
            seen[2].append(key)
        except (FormatError, OSError) as e:
            # Without its traceback: the frames would keep every name's chunks alive.
            listing.problems.append(FileProblem(name, e.with_traceback(None), lost=(key,)))
    listing.problems += _cut_problems(name, cut)
    return listing


class _CutShort(FormatError):
    """A chunk's bytes run past the end of its .distcp file: the file was cut short. Grouped
    per file into one problem, like a truncated safetensors shard, not one per tensor."""

    def __init__(self, rel: str, size: int, needed: int) -> None:
        super().__init__(f"{rel} is truncated")
        self.rel, self.size, self.needed = rel, size, needed


def _cut_problems(name: str, cut: dict[str, list]) -> list[FileProblem]:
    return [FileProblem(name, FormatError(f"{rel} is truncated: {size} bytes present, its chunks reach byte {needed}",
                                          path=name), lost=tuple(keys))
            for rel, (size, needed, keys) in cut.items()]


class _Geometry:
    """A TensorStorageMetadata entry once validated (dtype, size, chunk boxes), or why it is
    invalid. Many names may share one entry object through the pickle memo: it is checked once."""

    def __init__(self, entry: Instance) -> None:
        self.dtype = ""
        self.size: tuple[int, ...] = ()
        self.boxes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        self.error: str | None = None
        try:
            self._validate(entry)
        except FormatError as e:
            self.error = e.message

    def _validate(self, entry: Instance) -> None:
        self.dtype = _dtype_of(entry.get("properties"))
        self.size = size = _ints(entry.get("size"), "size")
        raw_chunks = entry.get("chunks")
        if type(raw_chunks) is not list or not raw_chunks:
            raise FormatError("no chunks")
        if len(raw_chunks) > MAX_CHUNKS:
            raise FormatError(f"{len(raw_chunks)} chunks (limit {MAX_CHUNKS})")
        volume = 0
        for rc in raw_chunks:
            if _cls(rc) != "ChunkStorageMetadata":
                raise FormatError(f"chunk is {_cls(rc)}, not ChunkStorageMetadata")
            offsets = _ints(rc.get("offsets"), "chunk offsets")
            sizes = _ints(rc.get("sizes"), "chunk sizes")
            if len(offsets) != len(size) or len(sizes) != len(size):
                raise FormatError(f"chunk at {offsets} has {len(sizes)} dimensions, the tensor {len(size)}")
            if any(o + s > d for o, s, d in zip(offsets, sizes, size)):
                raise FormatError(f"chunk at {offsets} of size {sizes} lies outside the tensor's {size}")
            volume += _views.numel(sizes)
            self.boxes.append((offsets, sizes))
        pair = first_overlap(self.boxes)
        if pair is not None:
            raise FormatError(f"chunks at {self.boxes[pair[0]][0]} and {self.boxes[pair[1]][0]} overlap")
        # Inside the bounds and disjoint, the volumes add up exactly when the chunks tile the tensor.
        if volume != _views.numel(size):
            raise FormatError(f"chunks hold {volume} elements, the tensor {_views.numel(size)}")


def _chunk_archive(file: NativeFile, fi: int, offset: int, length: int, budget: _DirBudget, name: str, key: str,
                   where: str) -> tuple[dict, Any, bool]:
    """The records, the described data.pkl and the byte order of the torch.save archive at
    bytes offset..offset+length of listing file `fi`, read once however many chunks name it."""
    cached = budget.archives.get((fi, offset, length))
    if cached is not None:
        return cached
    records = parse_zip(file, offset, length).by_name()
    if "data.pkl" not in records:
        raise _fail(name, f"{key}: {where} holds no torch.save archive", key)
    t = read_pickle(file, records["data.pkl"])
    found = (records, t, byteorder_is_big(file, records))
    budget.archives[(fi, offset, length)] = found
    return found


def _locate_chunk(listing: Listing, key: str, c: _Chunk, dtype: str, index: dict, open_file: Any, name: str,
                  budget: "_DirBudget") -> None:
    """Finds the chunk's bytes: its storage entry, file, archive and storage record, each
    checked against the metadata; fills the chunk's placement."""
    itemsize = itemsize_of(dtype)
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
        raise _CutShort(rel, file.size, offset + length)
    records, t, c.big = _chunk_archive(file, fi, offset, length, budget, name, key, f"chunk at {c.offsets} in {rel}")
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
    placed = place_tensor(t, rec, fi, c.big)  # validates the view against the record
    c.file_index, c.base = fi, placed.offset
    c.strides = tuple(s * itemsize for s in t.stride)
    c.record, c.whole = f"{rel}:{rec.name}@{rec.offset}", placed.whole_record
    c.record_offset, c.record_size, c.record_crc = rec.offset, rec.size, rec.crc32


def _read_tensor(listing: Listing, key: str, geometry: _Geometry, index: dict, open_file: Any, name: str,
                 budget: "_DirBudget") -> None:
    if geometry.error is not None:
        raise _fail(name, f"{key}: {geometry.error}", key)
    dtype, size = geometry.dtype, geometry.size
    itemsize = itemsize_of(dtype)
    numel = _views.numel(size)
    chunks = [_Chunk(offsets, sizes) for offsets, sizes in geometry.boxes]
    # A chunk without elements (a rank holding an empty shard) has no bytes to find, and DCP's
    # loader never reads it: its entry, file or record may be absent without loss.
    chunks = [c for c in chunks if _views.numel(c.sizes) > 0]
    if not chunks:  # the tensor has no elements: a row with no bytes, at the checkpoint itself
        listing.add(Job(HashJob(file=0, offset=0, nbytes=0, itemsize=itemsize)), key=key, dtype=dtype,
                    shape=list(size), offset=0, nbytes=0)
        return
    for c in chunks:
        _locate_chunk(listing, key, c, dtype, index, open_file, name, budget)
    if len({c.big for c in chunks}) > 1:
        raise _fail(name, f"{key}: chunks disagree on byte order", key)
    big = chunks[0].big and itemsize > 1

    unit = itemsize // 2 if dtype in COMPLEX else itemsize  # complex: swap each real part
    segments = _row_major_segments(size, chunks, itemsize, unit if big else None, name, key, budget)
    budget.spend(len(segments), numel * itemsize, name, key)
    origin = min(chunks, key=lambda c: c.offsets)  # holds element 0: the others are empty or after it
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
