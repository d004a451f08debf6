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
from typing import Any

from . import pickle_reader
from ._core import HashJob, NativeFile, Segment
from ._core import parse_zip
from .errors import FormatError
from .listing import FileProblem
from .pickle_reader import DType, Instance, TensorRef
from .torch_format import TorchListing, _byteorder, itemsize_of, place_tensor, read_pickle, storage_nbytes

FORMAT = "dcp"
METADATA = ".metadata"
_MAX_METADATA = 1 << 30
#: Bound on the segments one tensor may need (a column split of a tall matrix needs one per row
#: and chunk); beyond it the layout is refused rather than streamed slowly.
MAX_SEGMENTS = 1 << 20


def _fail(name: str, msg: str, key: str | None = None) -> FormatError:
    return FormatError(f"{name}: {msg}", path=name, key=key)


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


def _simplify(offset: int, shape: list[int], strides: list[int], itemsize: int, file_index: int) -> Segment:
    """A segment with unit dimensions dropped and contiguous dimensions merged; a fully
    contiguous one becomes a plain run."""
    merged: list[list[int]] = []
    for d, s in reversed([(d, s) for d, s in zip(shape, strides) if d != 1]):
        if merged and s == merged[-1][0] * merged[-1][1]:
            merged[-1] = [merged[-1][0] * d, merged[-1][1]]
        else:
            merged.append([d, s])
    merged.reverse()
    numel = 1
    for d in shape:
        numel *= d
    if not merged or (len(merged) == 1 and merged[0][1] == itemsize):
        return Segment(file=file_index, offset=offset, nbytes=numel * itemsize)
    return Segment(file=file_index, offset=offset, shape=tuple(d for d, _ in merged), strides=tuple(s for _, s in merged))


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


def _row_major_segments(size: tuple[int, ...], chunks: list[_Chunk], itemsize: int, name: str, key: str) -> list[Segment]:
    """Segments that stream the logical tensor in row-major order across its chunks."""
    ndim = len(size)
    # k: the last dimension some chunk does not span in full. Inside dims > k every chunk is
    # whole, so for a fixed index over dims < k the chunks met along dim k are each one block.
    k = -1
    for d in range(ndim):
        if any(c.offsets[d] != 0 or c.sizes[d] != size[d] for c in chunks):
            k = d
    if k < 0:
        c = chunks[0]
        return [_simplify(c.base, list(c.sizes), list(c.strides), itemsize, c.file_index)]
    outer = 1
    for d in size[:k]:
        outer *= d
    if outer * len(chunks) > 4 * MAX_SEGMENTS:
        raise _fail(name, f"{key}: {len(chunks)} chunks over {outer} outer positions are too fragmented to stream", key)
    order = sorted(chunks, key=lambda c: c.offsets[k])
    segments: list[Segment] = []
    prefix = [0] * k
    for _ in range(outer):
        for c in order:
            if all(c.offsets[d] <= prefix[d] < c.offsets[d] + c.sizes[d] for d in range(k)):
                off = c.base + sum((prefix[d] - c.offsets[d]) * c.strides[d] for d in range(k))
                segments.append(_simplify(off, list(c.sizes[k:]), list(c.strides[k:]), itemsize, c.file_index))
                if len(segments) > MAX_SEGMENTS:
                    raise _fail(name, f"{key}: needs more than {MAX_SEGMENTS} segments to stream", key)
        for d in range(k - 1, -1, -1):  # next prefix, row-major
            prefix[d] += 1
            if prefix[d] < size[d]:
                break
            prefix[d] = 0
    return segments


def read_dir(path: Path, name: str) -> TorchListing:
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
        md = pickle_reader.load(meta.read(0, meta.size), pickle_reader.DCP_POLICY)
    except FormatError as e:
        e.args = (f"{name}/{METADATA}: {e}",)
        e.path = name
        raise
    if _cls(md) != "Metadata" or type(md.get("state_dict_metadata")) is not dict:
        raise _fail(name, ".metadata does not hold a DCP Metadata object")
    index = _index_storage(md, name)

    listing = TorchListing(format=FORMAT, files=[meta], names=[name])
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
        except FormatError as e:
            listing.problems.append(FileProblem(name, str(e)[len(name) + 2:] if str(e).startswith(name + ": ") else str(e),
                                                lost=(key,)))
        except OSError as e:
            listing.problems.append(FileProblem.of(name, e, lost=(key,)))
    return listing


def _read_tensor(listing: TorchListing, key: str, entry: Instance, index: dict, open_file: Any, name: str) -> None:
    dtype = _dtype_of(entry.get("properties"), name, key)
    itemsize = itemsize_of(dtype)
    size = _ints(entry.get("size"), "size", name, key)
    raw_chunks = entry.get("chunks")
    if type(raw_chunks) is not list or not raw_chunks:
        raise _fail(name, f"{key}: no chunks", key)
    numel = 1
    for d in size:
        numel *= d
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
        v = 1
        for s in sizes:
            v *= s
        volume += v
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
        c.big = _byteorder(file, records)
        placed = place_tensor(t, rec, fi, c.big)  # validates the view against the record
        c.file_index, c.base = fi, placed.offset
        c.strides = tuple(s * itemsize for s in t.stride)
        c.record, c.whole = f"{rel}:{rec.name}@{rec.offset}", placed.whole_record
        c.record_offset, c.record_size, c.record_crc = rec.offset, rec.size, rec.crc32
    if len({c.big for c in chunks}) > 1:
        raise _fail(name, f"{key}: chunks disagree on byte order", key)
    big = chunks[0].big and itemsize > 1

    segments = _row_major_segments(size, chunks, itemsize, name, key)
    first = min(chunks, key=lambda c: c.offsets)
    origin = next((c for c in chunks if all(o == 0 for o in c.offsets)), first)
    unit = itemsize // 2 if dtype.startswith("complex") else itemsize
    if big and unit != itemsize:
        segments = [_split_complex(s, unit) for s in segments]
    single_whole = len(chunks) == 1 and chunks[0].whole and chunks[0].record_crc != 0
    job = HashJob(file=origin.file_index, segments=tuple(segments), itemsize=unit if big else itemsize,
                  byteswap=big, crc32=single_whole)
    listing.add(key, dtype, list(size), origin.base, numel * itemsize, job, storage=None, file=origin.file_index)
    listing.crc_expected.append(chunks[0].record_crc if single_whole else None)
    listing.crc_records.append(chunks[0].record if single_whole else None)
    if not single_whole:
        for c in chunks:
            if c.record_crc:
                listing.check_jobs.append(HashJob(file=c.file_index, offset=c.record_offset, nbytes=c.record_size, crc32=True))
                listing.check_expected.append(c.record_crc)
                listing.check_names.append(c.record)


def _split_complex(seg: Segment, unit: int) -> Segment:
    """A big-endian complex segment with an extra inner dimension over the two halves, so each
    half is byte-swapped on its own."""
    if seg.shape is None:
        return Segment(file=seg.file, offset=seg.offset, shape=(seg.nbytes // unit,), strides=(unit,))
    return Segment(file=seg.file, offset=seg.offset, shape=seg.shape + (2,), strides=seg.strides + (unit,))


__all__ = ["FORMAT", "read_dir"]
