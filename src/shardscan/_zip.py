"""The C core's ZIP reader (csrc/zip.c), wrapped: columns in, a frozen dataclass out.

Kept apart from _core.py only because issue 3 was written alongside the core; it follows the
same rules (the only other module that touches `lib`/`ffi`, native memory freed in `finally`,
status codes turned into exceptions by `_core.error_for`)."""

from __future__ import annotations

from dataclasses import dataclass

from ._core import NativeFile, error_for
from ._native import ffi, lib
from .errors import FormatError


class ZipTruncated(FormatError):
    """No end-of-central-directory record: the archive was cut short (or is not a zip)."""


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
    message = ffi.string(err.message).decode("utf-8", "replace")
    if status == lib.SS_E_ZIP_NO_EOCD:
        raise ZipTruncated(message, path=file.path)
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
        raise FormatError(f"{file.path}: archive range {base}+{length} is negative", path=file.path)
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
