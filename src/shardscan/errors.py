"""The exception tree. Callers catch a class, never parse a message.

ShardscanError              base, never raised directly; carries .path and, where known, .key
├── FormatError             the file is not what it claims to be (also a ValueError)
│   ├── NotACheckpointError no reader knows the file: not a checkpoint file at all
│   └── UnsafePickleError   a pickle names a global outside the allowlist; nothing was trusted
└── IntegrityError          the structure is fine but the bytes are not (CRC mismatch, changed
                            while being read)
Operating-system failures (missing file, permission) stay OSError.

`message` is the problem alone; str() names the file once, as "<path>: <message>". The C core's
messages carry no path, so no layer ever has to strip one.
"""

from __future__ import annotations


class ShardscanError(Exception):
    """Base class. `path` is the file at fault; `key` the tensor, when one is known."""

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.key = key

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class FormatError(ShardscanError, ValueError):
    """The file's structure violates its format (truncated, bad header, bad offsets, ...)."""


class NotACheckpointError(FormatError):
    """No format reader recognises the file."""


class UnsafePickleError(FormatError):
    """A pickle refers to a global that is not on the allowlist; `global_name` says which."""

    def __init__(self, message: str, *, global_name: str, path: str | None = None) -> None:
        super().__init__(message, path=path)
        self.global_name = global_name


class IntegrityError(ShardscanError):
    """The bytes are wrong or moved: a CRC mismatch, a file that changed while being read."""


def message_of(exc: BaseException) -> str:
    """The problem an exception describes, without the file it happened in."""
    if isinstance(exc, ShardscanError):
        return exc.message
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
