"""torch.save archives that torch's reader and an exact, by-the-spec reader resolve differently.

torch.load reads a checkpoint through caffe2/serialize/inline_container.cc over miniz. Where
miniz differs from a careful reader, a file can be built whose directory (the one shardscan
checks) holds one thing while torch loads another. Each case here starts from real torch.save
output (its records, read back with zipfile) and rebuilds the archive with `stored_zip`, a
plain writer of stored records, changing one thing:

  second end record    miniz scans backwards for the last "PK\\5\\6" with 22 bytes after it and
                       ignores the comment length; a second archive hidden in the first one's
                       comment is what torch loads
  names equal but for case
                       miniz looks names up ignoring ASCII case (by binary search over the
                       case-folded directory), so of data/0 and DATA/0 torch loads whichever
                       the search meets; a lone BYTEORDER is torch's byteorder record
  names not UTF-8      torch lists record names as Python str and fails; a lenient decoder
                       makes two distinct names one
  not starting PK\\3\\4  torch.load only treats a file as a zip if it starts with a local
                       header; otherwise it unpickles it as a legacy (pre-1.6) file
  masked headers       general-purpose bit 13 (local headers encrypted): miniz refuses the
                       archive, a reader that only knows bit 0 does not

Run it to write the files into a directory (default: tests/hostile/zip):

    python tests/hostile/make_zips.py [OUT_DIR]

Each case names:
  status       the core's ss_status for it (csrc/shardscan.h)
  message      a fragment of the core's message for it
  ours         the state dict held by the records an exact reader resolves (the directory
               our end record describes, records looked up by their exact names)
  torch_loads  what torch.load(weights_only=True) returns, None where it refuses the file,
               UNREAD where it returns tensors without reading their record
  cli_message  what `shardscan check` says, where an earlier rule than the core's speaks
"""

from __future__ import annotations

import io
import pickle
import struct
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

SIG_LOCAL, SIG_CENTRAL, SIG_EOCD = 0x04034B50, 0x02014B50, 0x06054B50
SIG_EOCD64, SIG_LOCATOR64 = 0x06064B50, 0x07064B50
DOS_DIRECTORY = 0x10  # MS-DOS attribute bit in a central entry's external attributes
Records = list[tuple[bytes, bytes]]
# torch_loads for a file torch loads without reading the record's bytes: what it returns is
# whatever memory it allocated, so only "not ours" can be said of it.
UNREAD = "unread"


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    status: str
    message: str
    ours: dict
    torch_loads: dict | str | None
    cli_message: str = ""


def stored_zip(records: Records, base: int = 0, comment: bytes = b"", comment_len: int | None = None,
               flags: int = 0, folders: frozenset[bytes] = frozenset()) -> bytes:
    """A zip of stored records, offsets counted from `base` (where the archive will sit in
    its file). `comment_len` overrides the end record's comment length field; `flags` is
    every header's general-purpose bit field; records named in `folders` carry the MS-DOS
    directory attribute."""
    body, directory = bytearray(), bytearray()
    for name, data in records:
        offset, crc, n = base + len(body), zlib.crc32(data), len(data)
        body += struct.pack("<IHHHHHIIIHH", SIG_LOCAL, 20, flags, 0, 0, 0, crc, n, n, len(name), 0) + name + data
        attrs = DOS_DIRECTORY if name in folders else 0
        directory += struct.pack("<IHHHHHHIIIHHHHHII", SIG_CENTRAL, 20, 20, flags, 0, 0, 0, crc, n, n, len(name),
                                 0, 0, 0, 0, attrs, offset) + name
    count, cd_offset = len(records), base + len(body)
    length = len(comment) if comment_len is None else comment_len
    eocd = struct.pack("<IHHHHIIH", SIG_EOCD, 0, 0, count, count, len(directory), cd_offset, length)
    return bytes(body + directory + eocd + comment)


def torch_saved(state: object) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def patched(blob: bytes, signature: int, field: int, fmt: str, value: int) -> bytes:
    """`blob` with the field at `field` bytes into its last `signature` record set to `value`."""
    out = bytearray(blob)
    struct.pack_into(fmt, out, out.rfind(struct.pack("<I", signature)) + field, value)
    return bytes(out)


def torch_records(state: dict) -> Records:
    """The records torch.save writes for `state` (into a buffer: folder "archive/"), in order."""
    buf = io.BytesIO()
    torch.save(state, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        return [(i.filename.encode(), z.read(i)) for i in z.infolist()]


def record(records: Records, name: bytes) -> bytes:
    return next(data for n, data in records if n == name)


def with_twin(records: Records, name: bytes, data: bytes, neighbour: bytes, after: bool = True) -> Records:
    """`records` plus (name, data), placed right after (or before) the record `neighbour`.
    Which of two case-twins torch loads depends on where they sit: miniz heap-sorts the
    directory by case-folded name (not a stable sort) and binary-searches it."""
    out = list(records)
    at = next(i for i, (n, _) in enumerate(out) if n == neighbour) + (1 if after else 0)
    out.insert(at, (name, data))
    return out


def renamed(records: Records, old: bytes, new: bytes, data: bytes | None = None) -> Records:
    return [(new, n_data if data is None else data) if n == old else (n, n_data) for n, n_data in records]


def two_archives(outer: Records, inner: Records) -> bytes:
    """`outer`, whose end record's comment is a complete second archive: `inner`, with
    offsets counted from the start of the file and an end record that claims a 1-byte
    comment it does not have, so that only `outer`'s comment runs exactly to the end."""
    first = stored_zip(outer)
    hidden = stored_zip(inner, base=len(first))
    hidden = hidden[:-2] + struct.pack("<H", 1)
    return first[:-2] + struct.pack("<H", len(hidden)) + hidden


def legacy_then_zip(legacy_state: object, records: Records) -> bytes:
    """A legacy torch.save file (its first pickle re-marked as protocol 3, so it no longer
    starts with the usual bytes) followed by a zip whose offsets count from the file start."""
    buf = io.BytesIO()
    torch.save(legacy_state, buf, _use_new_zipfile_serialization=False)
    legacy = buf.getvalue()
    assert legacy.startswith(b"\x80\x02")
    legacy = b"\x80\x03" + legacy[2:]
    return legacy + stored_zip(records, base=len(legacy))


def dcp_checkpoint(directory: Path, name: str, like: torch.Tensor, archive: bytes) -> None:
    """A one-tensor torch.distributed.checkpoint folder whose only chunk is `archive` (which
    should hold a tensor of `like`'s dtype and shape), at offset 0 of __0_0.distcp; the
    .metadata is what DCP's own writer pickles."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, Metadata, MetadataIndex,
                                                       TensorProperties, TensorStorageMetadata)

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "__0_0.distcp").write_bytes(archive)
    origin = torch.Size([0] * like.dim())
    storage = {MetadataIndex(name, origin, 0): _StorageInfo("__0_0.distcp", 0, len(archive))}
    chunks = [ChunkStorageMetadata(offsets=origin, sizes=like.size())]
    tensors = {name: TensorStorageMetadata(TensorProperties(dtype=like.dtype), like.size(), chunks)}
    (directory / ".metadata").write_bytes(pickle.dumps(Metadata(state_dict_metadata=tensors, storage_data=storage)))


def cases() -> list[Case]:
    """Every case, built afresh from fixed tensors; byte for byte the same each time except
    the legacy file's storage key, which legacy torch.save takes from a memory address."""
    ours = {"w": torch.arange(4, dtype=torch.float32)}
    other = {"w": -torch.arange(4, dtype=torch.float32)}
    hidden = {"evil": torch.arange(4, dtype=torch.float32)}  # same storage size, other names
    marked = {"w": torch.randn(1024, generator=torch.Generator().manual_seed(12))}
    base, alt = torch_records(ours), torch_records(other)
    data0, pkl, order = b"archive/data/0", b"archive/data.pkl", b"archive/byteorder"
    # A "big" byteorder record makes torch swap each element's bytes: little-endian floats
    # read as big-endian ones.
    big = {"w": torch.tensor(struct.unpack(">4f", bytes(ours["w"].untyped_storage())), dtype=torch.float32)}
    return [
        Case("second_end_record_in_comment", two_archives(base, alt), "SS_E_ZIP_TWO_EOCD",
             "second end-of-central-directory signature", ours, other),
        # A bare signature whose own comment does not reach the end: not ours, but miniz's.
        Case("stray_end_signature_in_comment", stored_zip(base, comment=struct.pack("<I", SIG_EOCD) + bytes(19)),
             "SS_E_ZIP_TWO_EOCD", "second end-of-central-directory signature", ours, None),
        Case("storage_twin_in_capitals_after", stored_zip(with_twin(base, b"archive/DATA/0", record(alt, data0), data0)),
             "SS_E_ZIP_CASE", "differ only in case", ours, other),
        Case("storage_twin_in_capitals_before",
             stored_zip(with_twin(base, b"archive/DATA/0", record(alt, data0), data0, after=False)),
             "SS_E_ZIP_CASE", "differ only in case", ours, ours),
        Case("pickle_twin_in_capitals",
             stored_zip(with_twin(base, b"archive/DATA.PKL", record(torch_records(hidden), pkl), pkl)),
             "SS_E_ZIP_CASE", "differ only in case", ours, hidden),
        Case("byteorder_twin_in_capitals", stored_zip(with_twin(base, b"archive/BYTEORDER", b"big", order)),
             "SS_E_ZIP_CASE", "differ only in case", ours, big),
        Case("lone_byteorder_in_capitals", stored_zip(renamed(base, order, b"archive/BYTEORDER", b"big")),
             "SS_E_ZIP_CASE", "differs from 'byteorder' only in case", ours, big),
        Case("names_not_utf8", stored_zip(base + [(b"archive/extra/\xff", b"x"), (b"archive/extra/\xfe", b"y")]),
             "SS_E_ZIP_NAME_UTF8", "not valid UTF-8", ours, None),
        Case("masked_local_headers", stored_zip(base, flags=0x2000), "SS_E_ZIP_ENCRYPTED", "is encrypted", ours, None),
        # Its own 4 KiB of seeded random floats: torch's uninitialised buffer cannot plausibly
        # hold exactly these bytes.
        Case("storage_marked_as_folder", stored_zip(torch_records(marked), folders=frozenset({data0})),
             "SS_E_ZIP_DIRECTORY", "marked as a folder", marked, UNREAD),
        # torch.save's own ZIP64 end records, one field each set to what miniz refuses.
        Case("locator_counts_no_disks", patched(torch_saved(ours), SIG_LOCATOR64, 16, "<I", 0), "SS_E_ZIP_CORRUPT",
             "multi-disk", ours, None),
        Case("zip64_end_record_too_short", patched(torch_saved(ours), SIG_EOCD64, 4, "<Q", 0), "SS_E_ZIP_CORRUPT",
             "fewer than its own fields", ours, None),
        Case("record_on_another_disk", patched(torch_saved(ours), SIG_CENTRAL, 34, "<H", 2), "SS_E_ZIP_CORRUPT",
             "multi-disk", ours, None),
        # The CLI never gets as far as the zip: by its first bytes the file is no checkpoint.
        Case("legacy_file_before_zip", legacy_then_zip(other, base), "SS_E_ZIP_NOT_AT_START",
             "not a zip local header", ours, other, cli_message="not a safetensors or torch checkpoint"),
    ]


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for case in cases():
        (out / f"{case.name}.pt").write_bytes(case.data)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("zip"))
