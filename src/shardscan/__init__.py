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
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shardscan' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)
