"""safetensors shards: the core validates the header; every tensor is one contiguous run."""

from __future__ import annotations

from .._core import NativeFile, parse_safetensors
from ..errors import FormatError
from . import wrong
from .base import FileProblem, Format, Listing

NAME = "safetensors"


def sniff(head: bytes) -> bool:
    """A safetensors file starts with an 8-byte little-endian length, then (after optional
    JSON whitespace) '{'."""
    return len(head) >= 9 and head[8:].lstrip(b" \t\r\n")[:1] == b"{" and int.from_bytes(head[:8], "little") <= 100_000_000


def read(file: NativeFile, name: str) -> Listing:
    """Rows for every tensor whose bytes are present. A truncated file still yields its
    intact tensors, with the cut and lost ones named in a FileProblem; any other violation
    raises FormatError."""
    try:
        header = parse_safetensors(file)
    except FormatError as violation:
        # An LFS pointer or an HTML page breaks the first rule (a huge header length): say
        # what the file is rather than which rule.
        raise wrong.refusal(file) or violation from None
    # Tensors are in offset order, so the ones a truncation left whole are a prefix.
    size = file.size
    whole = len(header.keys)
    if header.error is not None:
        whole = next((i for i, (o, n) in enumerate(zip(header.offsets, header.nbytes)) if o + n > size), whole)
    rows = header.keys, header.dtypes, header.shapes, header.offsets, header.nbytes
    if whole < len(header.keys):
        rows = tuple(column[:whole] for column in rows)
    columns = dict(zip(("key", "dtype", "shape", "offset", "nbytes"), rows), storage=[None] * whole)
    listing = Listing(format=NAME, files=[file], names=[name], columns=columns, row_file=[0] * whole, jobs=None)
    if header.error is not None:
        rest = list(zip(header.keys[whole:], header.offsets[whole:]))
        listing.problems.append(FileProblem(
            name, header.error, intact=tuple(listing.keys),
            cut=tuple(key for key, offset in rest if offset < size),
            lost=tuple(key for key, offset in rest if offset >= size),
        ))
    return listing


# A file named .safetensors whose first bytes do not say so still goes to this reader: its
# validator names the actual violation (too small, header too large, not starting with '{').
FORMAT = Format(NAME, suffixes=(".safetensors",), sniff=sniff, read=read, by_name=True)
