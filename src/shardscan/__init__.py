"""shardscan: check model checkpoints for missing, truncated and corrupt tensors without
loading them.

    >>> import shardscan
    >>> table = shardscan.scan("out/checkpoint-500")   # pyarrow.Table, one row per tensor

Attributes are imported lazily so that `import shardscan` (and the CLI's start-up) stays cheap.
"""

from __future__ import annotations

from typing import Any

from .errors import FormatError, IntegrityError, ShardscanError, UnsafePickleError

__all__ = [
    "__version__",
    "FormatError",
    "IntegrityError",
    "ShardscanError",
    "UnsafePickleError",
    "SCHEMA",
    "audit",
    "latest",
    "ScanResult",
    "scan",
    "scan_paths",
    "check",
    "diff",
    "Report",
    "write_manifest",
    "file_digests",
]

_LAZY = {
    "audit": "auditing",
    "latest": "auditing",
    "scan": "scanner",
    "scan_paths": "scanner",
    "ScanResult": "scanner",
    "SCHEMA": "schema",
    "check": "checker",
    "diff": "checker",
    "Report": "report",
    "write_manifest": "manifest",
    "file_digests": "digests",
}


def _version() -> str:
    """The installed distribution's version; "0+unknown" when run from a source tree that
    was never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shardscan")
    except PackageNotFoundError:
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return _version()
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shardscan' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    # The lazily loaded names too, so that completion and help() see the whole API.
    return sorted({*globals(), *_LAZY, "__version__"})
