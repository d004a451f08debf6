"""The exception tree. Callers catch a class, never parse a message.

ShardscanError            base, never raised directly; carries .path and, where known, .key
├── FormatError           the file is not what it claims to be (also a ValueError)
│   └── UnsafePickleError a pickle names a global outside the allowlist; nothing was trusted
└── IntegrityError        the structure is fine but the bytes are not (CRC mismatch, changed
                          while being read)
Operating-system failures (missing file, permission) stay OSError.
"""

from __future__ import annotations


class ShardscanError(Exception):
    """Base class. `path` is the file at fault; `key` the tensor, when one is known."""

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.key = key


class FormatError(ShardscanError, ValueError):
    """The file's structure violates its format (truncated, bad header, bad offsets, ...)."""


class UnsafePickleError(FormatError):
    """A pickle refers to a global that is not on the allowlist; `global_name` says which."""

    def __init__(self, message: str, *, global_name: str, path: str | None = None) -> None:
        super().__init__(message, path=path)
        self.global_name = global_name


class IntegrityError(ShardscanError):
    """The bytes are wrong or moved: a CRC mismatch, a file that changed while being read."""
