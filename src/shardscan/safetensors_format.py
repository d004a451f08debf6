"""safetensors shards: the core validates the header; every tensor is one contiguous run."""

from __future__ import annotations

from ._core import HashJob, NativeFile, parse_safetensors
from .listing import FileProblem, Listing

FORMAT = "safetensors"


def sniff(head: bytes) -> bool:
    """A safetensors file starts with an 8-byte little-endian length, then (after optional
    JSON whitespace) '{'."""
    return len(head) >= 9 and head[8:].lstrip(b" \t\r\n")[:1] == b"{" and int.from_bytes(head[:8], "little") <= 100_000_000


def read(file: NativeFile, name: str) -> Listing:
    """Rows for every tensor whose bytes are present. A truncated file still yields its
    intact tensors, with the cut and lost ones named in a FileProblem; any other violation
    raises FormatError."""
    header = parse_safetensors(file)
    listing = Listing(format=FORMAT, files=[file], names=[name])
    size = file.size
    intact, cut, lost = [], [], []
    for key, dtype, shape, offset, nbytes in zip(header.keys, header.dtypes, header.shapes, header.offsets, header.nbytes):
        if offset + nbytes <= size:
            listing.add(key, dtype, shape, offset, nbytes, HashJob(file=0, offset=offset, nbytes=nbytes))
            intact.append(key)
        elif offset < size:
            cut.append(key)
        else:
            lost.append(key)
    if header.error is not None:
        listing.problems.append(
            FileProblem.of(name, header.error, file.path, lost=tuple(lost), cut=tuple(cut), intact=tuple(intact))
        )
    return listing
