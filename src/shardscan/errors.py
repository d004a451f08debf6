"""The exception tree. Callers catch a class, never parse a message.

ShardscanError              base, never raised directly; carries .path and, where known, .key
├── FormatError             the file is not what it claims to be (also a ValueError)
│   ├── NotACheckpointError no reader knows the file: not a checkpoint file at all
│   └── UnsafePickleError   a pickle names a global outside the allowlist; nothing was trusted
└── IntegrityError          the structure is fine but the bytes are not (CRC mismatch, changed
                            while being read)
Operating-system failures (missing file, permission) stay OSError.

Every instance carries a `kind`: one word from KINDS saying what went wrong, set where the
problem is found (docs/report-json.md documents the list; it only ever grows). kind_of()
gives the kind of any exception a file can fail with (OSError: "io").

`message` is the problem alone; str() names the file once, as "<path>: <message>". The C core's
messages carry no path, so no layer ever has to strip one.
"""

from __future__ import annotations

#: The `kind` of every error shardscan reports, in the order they were introduced. Append
#: only: automation branches on these words (re-download, re-save, alert).
KINDS: tuple[str, ...] = (
    "format",          # any other violation of the file's format
    "truncated",       # the file ends before its structure says it does
    "absent",          # a file the checkpoint names or needs is not there
    "crc",             # a zip record's bytes do not match the CRC-32 written with them
    "changed",         # the file changed while being read, or since its manifest was written
    "unsafe-global",   # a pickle names a global outside the allowlist
    "budget",          # the file asks for more work or memory than its size allows
    "io",              # the operating system could not read it
    "unfinished",      # the save did not finish (a completeness marker is missing or newer)
    "duplicate",       # a tensor held by two files
    "misplaced",       # an index maps tensors to one file but they are in another
    "layout",          # an index, manifest or config.json of the checkpoint cannot be read
    "not-a-checkpoint",  # no reader knows the file and it is none of the kinds below
    "lfs-pointer", "html", "json", "xml", "empty", "zeros", "gzip", "tar", "zstd", "zip", "gguf",
    "onnx", "npy", "npz", "torchscript",  # a wrong file: what it is instead (shardscan.formats.wrong)
    "sha256",          # the file's SHA-256 differs from the digest published for it
    "zero-tensors",    # all-zero matrices, an error under check --strict (a warning otherwise)
)


class ShardscanError(Exception):
    """Base class. `path` is the file at fault; `key` the tensor, when one is known; `kind`
    the word from KINDS (each class has a default; the code that finds a problem may be
    more precise)."""

    kind = "format"

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None,
                 kind: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.key = key
        if kind is not None:
            assert kind in KINDS, kind
            self.kind = kind

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class FormatError(ShardscanError, ValueError):
    """The file's structure violates its format (truncated, bad header, bad offsets, ...)."""


class NotACheckpointError(FormatError):
    """No format reader recognises the file; `kind` says what it is instead, where known."""

    kind = "not-a-checkpoint"


class UnsafePickleError(FormatError):
    """A pickle refers to a global that is not on the allowlist; `global_name` says which."""

    kind = "unsafe-global"

    def __init__(self, message: str, *, global_name: str, path: str | None = None) -> None:
        super().__init__(message, path=path)
        self.global_name = global_name


class IntegrityError(ShardscanError):
    """The bytes are wrong or moved: a CRC mismatch ("crc"), a file that changed while being
    read ("changed")."""

    kind = "crc"


def message_of(exc: BaseException) -> str:
    """The problem an exception describes, without the file it happened in."""
    if isinstance(exc, ShardscanError):
        return exc.message
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def kind_of(exc: BaseException) -> str:
    """The KINDS word for an exception a file failed with: its own `kind`, "io" for the
    operating system's errors, "budget" for memory, "format" for anything else."""
    if isinstance(exc, ShardscanError):
        return exc.kind
    if isinstance(exc, OSError):
        return "io"
    if isinstance(exc, MemoryError):
        return "budget"
    return "format"
