"""Legacy torch.save files (torch < 1.6, or `_use_new_zipfile_serialization=False` since),
read without torch and without executing anything they contain.

The layout (torch/serialization.py `_legacy_save`), with no index and no checksums:

1. five pickles back to back: the magic number, the protocol version (1001), a `sys_info`
   dict, the object itself, and the sorted list of the storage keys it names;
2. then every storage of that list, in its order: an 8-byte little-endian element count and
   the elements, always little-endian whatever the writer's byte order.

The object's pickle is described by the restricted pickle reader under torch's weights-only
policy (shardscan.formats.torch_pickle), with the legacy form of its persistent ids:
`('storage', storage_type, key, location, numel, view_metadata)`. As torch's loader does, the
first id naming a key decides the storage's type and size; `view_metadata` (written by torch
< 1.0 only) is `(view_key, offset, numel)`, a window of that storage.

Rows are those of the zip format (key paths, views, ties, no bytes for empty tensors), with
`format` "torch" (a torch.save file either way; loaders read both with torch.load) and
`storage` the key the pickle names. Nothing in the file is trusted: every count is checked
against the pickle and every range against the file's size. A truncated file yields the
tensors whose storages survived, with a FileProblem naming the cut and the lost ones.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from typing import Any

from .. import pickle_reader
from .._core import NativeFile, ZipRecord
from ..errors import FormatError
from ..pickle_reader import Policy, StorageClass, StorageRef, TensorRef, expect, is_int
from . import torch_zip
from .base import FileProblem, Format, Job, Listing
from .torch_pickle import ITEMSIZE, OBJECTS_POLICY, TORCH_POLICY

NAME = torch_zip.NAME

#: torch.serialization.MAGIC_NUMBER and PROTOCOL_VERSION.
MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
# The first pickle is the magic number alone: LONG1 of 10 bytes, then STOP.
_MAGIC_PICKLE = b"\x8a\x0a" + MAGIC_NUMBER.to_bytes(10, "little") + b"."
_COUNT = struct.Struct("<q")
_FIRST_WINDOW = 1 << 20  # bytes read for a pickle at first; a longer one is read again, 8x longer
_MAX_PICKLE = 1 << 30

# The magic, version, sys_info and key-list pickles hold plain values only.
_PLAIN = Policy("torch-legacy-header", {}, {}, frozenset(), None)


def sniff(head: bytes) -> bool:
    """The magic-number pickle torch writes first, in any protocol torch.save can use (2 by
    default; 4 and 5 open with a FRAME)."""
    if len(head) < 2 or head[0] != 0x80 or not 2 <= head[1] <= 5:
        return False
    body = head[2:]
    if body[:1] == b"\x95":
        body = body[9:]
    return body.startswith(_MAGIC_PICKLE)


@dataclass(frozen=True, eq=False)
class LegacyStorageRef(StorageRef):
    """A legacy storage id: `numel` elements of the storage `key`; with a view, the tensor sees
    only `view_numel` elements from element `view_offset` on."""

    view_offset: int = 0
    view_numel: int | None = None


def _text(value: Any, what: str) -> str:
    # Python 2 writers pickle these as byte strings, which torch decodes as ASCII.
    if type(value) is bytes:
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise pickle_reader.fail(f"persistent id {what} is not ASCII") from None
    expect(type(value) is str and len(value) <= 256, f"persistent id {what} is not a short string")
    return value


def _legacy_policy(base: Policy) -> tuple[Policy, dict[str, LegacyStorageRef]]:
    """`base` (torch's weights-only policy, or the objects one) with the legacy persistent ids,
    and the storages they name by key (first id wins, as in torch's `persistent_load`), filled
    while the pickle is read."""
    roots: dict[str, LegacyStorageRef] = {}
    views: dict[str, LegacyStorageRef] = {}

    def decode(pid: Any) -> LegacyStorageRef:
        expect(type(pid) is tuple and len(pid) >= 1, f"persistent id of type {type(pid).__name__} is not a storage")
        kind = pid[0].decode("ascii", "replace") if type(pid[0]) is bytes else pid[0]
        expect(kind == "storage", "persistent id is not a storage")
        expect(len(pid) == 6, "legacy storage persistent id is not a 6-tuple")
        _, stype, key, location, numel, view = pid
        expect(isinstance(stype, StorageClass), "persistent id storage type is not a storage class")
        # torch's legacy loader takes the element type from the class: an UntypedStorage (what
        # torch.save writes for float8, uint16 and the newer types) fails every torch.load.
        expect(stype.dtype is not None, f"a legacy storage of type {stype.name}, which torch.load cannot read")
        key = _text(key, "storage key")
        expect(len(key) > 0, "persistent id storage key is empty")
        location = _text(location, "location")
        expect(is_int(numel) and numel >= 0, "persistent id numel is not a non-negative integer")
        root = roots.setdefault(key, LegacyStorageRef(key, stype.name, stype.dtype, location, numel))
        if view is None:
            return root
        expect(type(view) is tuple and len(view) == 3, "storage view metadata is not a 3-tuple")
        view_key, offset, size = _text(view[0], "view key"), view[1], view[2]
        expect(is_int(offset) and offset >= 0 and is_int(size) and size >= 0, "storage view is not two counts")
        return views.setdefault(view_key, replace(root, view_offset=offset, view_numel=size))

    return replace(base, name=f"{base.name}-legacy", persistent_id=decode), roots


def _itemsize(ref: StorageRef) -> int:
    return ITEMSIZE.get(ref.dtype or "", 0)


class _Cut(Exception):
    """The file ends inside the pickle that starts at `at`."""

    def __init__(self, at: int) -> None:
        self.at = at


def _next_pickle(file: NativeFile, start: int, policy: Policy) -> tuple[Any, int]:
    """The description of the pickle at `start` and the offset past it. Reads a window, and a
    longer one while the pickle runs past it. Raises _Cut when the file ends first."""
    window = _FIRST_WINDOW
    while True:
        length = min(window, file.size - start, _MAX_PICKLE)
        try:
            obj, used = pickle_reader.load_prefix(file.read(start, length), policy)
            return obj, start + used
        except pickle_reader.PickleTruncated:
            if length == file.size - start:
                raise _Cut(start) from None
            if length == _MAX_PICKLE:
                raise FormatError(f"a pickle longer than {_MAX_PICKLE} bytes", path=file.path) from None
            window *= 8
        except FormatError as e:
            e.path = file.path
            raise


def _read_header(file: NativeFile) -> int:
    """Checks the magic number, version and sys_info pickles; the offset past them."""
    magic, pos = _next_pickle(file, 0, _PLAIN)
    if magic != MAGIC_NUMBER:
        raise FormatError("not a legacy torch.save file: wrong magic number", path=file.path)
    version, pos = _next_pickle(file, pos, _PLAIN)
    if version != PROTOCOL_VERSION:
        raise FormatError(f"legacy torch.save protocol version {version!r:.40}, not {PROTOCOL_VERSION}", path=file.path)
    sys_info, pos = _next_pickle(file, pos, _PLAIN)
    if type(sys_info) is not dict:
        raise FormatError("legacy torch.save sys_info is not a dict", path=file.path)
    return pos


def _storage_keys(value: Any, path: str) -> list[str]:
    if type(value) is not list:
        raise FormatError("the storage key list is not a list", path=path)
    keys = [v.decode("ascii", "replace") if type(v) is bytes else v for v in value]
    if not all(type(k) is str for k in keys):
        raise FormatError("the storage key list holds a non-string", path=path)
    if len(set(keys)) != len(keys):
        raise FormatError("the storage key list names a storage twice", path=path)
    return keys


@dataclass
class _Storages:
    """Where each storage's elements are (key -> absolute offset, bytes), and what stopped the
    walk through them: `failure` and the keys cut short or never reached."""

    spans: dict[str, tuple[int, int]]
    failure: FormatError | None = None
    cut: frozenset[str] = frozenset()
    lost: frozenset[str] = frozenset()


def _walk_storages(file: NativeFile, pos: int, keys: list[str], roots: dict[str, LegacyStorageRef]) -> _Storages:
    """Locates every storage of the key list from `pos`: count, then elements. The counts
    chain the offsets, so the first count that is cut or disagrees with the pickle stops the
    walk; the keys from there on cannot be located."""
    found = _Storages({})
    for i, key in enumerate(keys):
        ref = roots.get(key)
        if ref is None or _itemsize(ref) == 0:
            why = "never names" if ref is None else f"gives the unknown dtype {ref.dtype} to"
            found.failure = FormatError(f"the storage key list names {key}, which the pickle {why}", path=file.path)
            found.lost = frozenset(keys[i:])
            return found
        if pos + _COUNT.size > file.size:
            found.failure = FormatError(f"truncated: the file ends before storage {key}", path=file.path, kind="truncated")
            found.lost = frozenset(keys[i:])
            return found
        (count,) = _COUNT.unpack(file.read(pos, _COUNT.size))
        if count != ref.numel:
            found.failure = FormatError(f"storage {key} holds {count} elements by its header, {ref.numel} by the pickle",
                                        path=file.path)
            found.lost = frozenset(keys[i:])
            return found
        start, nbytes = pos + _COUNT.size, count * _itemsize(ref)
        if start + nbytes > file.size:
            found.failure = FormatError(f"truncated: {file.size - start} of the {nbytes} bytes of storage {key} are "
                                        "present", path=file.path, kind="truncated")
            found.cut, found.lost = frozenset([key]), frozenset(keys[i + 1 :])
            return found
        found.spans[key] = (start, nbytes)
        pos = start + nbytes
    if pos != file.size:
        found.failure = FormatError(f"{file.size - pos} bytes follow the last storage", path=file.path)
    return found


def _span_of(ref: StorageRef, spans: dict[str, tuple[int, int]]) -> ZipRecord | None:
    """The bytes a tensor on `ref` may reach (the storage, or the window of a storage view), as
    the record zip's placement checks views against; None when the storage was not located.
    Raises FormatError for a window outside its storage."""
    span = spans.get(ref.key)
    if span is None:
        return None
    start, nbytes = span
    if isinstance(ref, LegacyStorageRef) and ref.view_numel is not None:
        itemsize = _itemsize(ref)
        if (ref.view_offset + ref.view_numel) * itemsize > nbytes:
            raise FormatError(f"storage view of elements {ref.view_offset}..{ref.view_offset + ref.view_numel} "
                              f"reaches past its {nbytes}-byte storage")
        start, nbytes = start + ref.view_offset * itemsize, ref.view_numel * itemsize
    return ZipRecord(name=ref.key, offset=start, size=nbytes, crc32=0)


@dataclass
class _Found:
    """What became of the tensors the pickle names, by key."""

    intact: list[str] = field(default_factory=list)
    cut: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)  # "key: why" for tensors that cannot be placed


def _list_tensors(listing: Listing, obj: Any, storages: _Storages) -> _Found:
    found = _Found()
    for path, leaf in pickle_reader.iter_leaves(obj):
        if not isinstance(leaf, TensorRef) or leaf.storage is None:
            listing.non_tensor_leaves += 1
            continue
        key = ".".join(path)
        if leaf.storage.key in storages.cut:
            found.cut.append(key)
            continue
        if leaf.storage.key in storages.lost:
            found.lost.append(key)
            continue
        try:
            span = _span_of(leaf.storage, storages.spans)
            if span is None:
                found.broken.append(f"{key}: storage {leaf.storage.key} has no bytes in the file (not in the key list)")
                continue
            placed = torch_zip.place_tensor(leaf, span, 0, False)
        except FormatError as e:
            found.broken.append(f"{key}: {e.message}")
            continue
        listing.add(Job(placed.job), key=key, dtype=placed.dtype, shape=placed.shape, offset=placed.offset,
                    nbytes=placed.nbytes, storage=leaf.storage.key)
        found.intact.append(key)
    return found


def read(file: NativeFile, name: str, policy: Policy = TORCH_POLICY) -> Listing:
    """Rows for every tensor of a legacy torch.save file. Raises FormatError for a damaged or
    cut header or object pickle (no tensor can be named) and UnsafePickleError for a global
    outside `policy` (torch's weights-only allowlist); a file cut or damaged among its
    storages still yields the tensors located before the damage, with a FileProblem."""
    try:
        pos = _read_header(file)
        legacy_policy, roots = _legacy_policy(policy)
        obj, pos = _next_pickle(file, pos, legacy_policy)
    except _Cut:
        raise FormatError("truncated inside the pickle: no tensor can be named", path=file.path, kind="truncated") from None
    listing = Listing(format=NAME, files=[file], names=[name])
    try:
        value, pos = _next_pickle(file, pos, _PLAIN)
        storages = _walk_storages(file, pos, _storage_keys(value, file.path), roots)
    except _Cut:
        error = FormatError("truncated inside the storage key list: no storage can be located", path=file.path,
                            kind="truncated")
        storages = _Storages({}, error, lost=frozenset(roots))
    found = _list_tensors(listing, obj, storages)
    if storages.failure is not None and (found.lost or found.cut):
        listing.problems.append(FileProblem(name, storages.failure, lost=tuple(found.lost), cut=tuple(found.cut),
                                            intact=tuple(found.intact)))
    elif storages.failure is not None:
        listing.problems.append(FileProblem(name, storages.failure))
    for message in found.broken:
        listing.problems.append(FileProblem(name, FormatError(message, path=file.path)))
    return listing


def read_objects(file: NativeFile, name: str) -> Listing:
    """read() for a file its framework unpickles in full: any global is described, none
    refused (and none imported or called); the layout and every storage are checked the same."""
    return read(file, name, OBJECTS_POLICY)


FORMAT = Format(name=NAME, sniff=sniff, read=read, read_objects=read_objects)
