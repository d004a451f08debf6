"""`audit` over a Ray cluster (extra `shardscan[ray]`): one task per checkpoint.

The driver walks the tree (cheap: names and stats), then every checkpoint becomes one Ray task
that runs the same per-checkpoint step as the local audit (shardscan.auditing.audit_group: the C
scanner and `check`) on whichever node Ray schedules it, and sends back its verdict row and
its per-tensor pyarrow.Table. The driver assembles them with the same function the local
audit uses, so both print the same rows, summaries and Parquet.

Every node must see the tree at the same path (a shared filesystem: NFS, Lustre, a mounted
bucket) and have shardscan installed; see docs/audit.md.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .auditing import AuditResult, AuditRow, assemble, audit_group
from .checker import files_to_scan
from .discover import Checkpoint, find_checkpoints

if TYPE_CHECKING:
    import pyarrow as pa

PathLike = str | os.PathLike[str]

#: `--ray` without an address: join the cluster this machine belongs to if there is one
#: (RAY_ADDRESS or a running `ray start`), else start a local one.
AUTO = "auto"


def _audit_one(
    checkpoint: Checkpoint, against: str | None, hash: bool, threads: int | None
) -> tuple[AuditRow, "pa.Table | None"]:
    """The Ray task: one checkpoint through the local per-checkpoint step."""
    ((row, table),) = audit_group([checkpoint], against, hash=hash, threads=threads)
    return row, table


def audit_ray(
    root: PathLike,
    against: PathLike | None = None,
    *,
    address: str | None = AUTO,
    hash: bool = True,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AuditResult:
    """`shardscan.audit` with one Ray task per checkpoint. `address`: a cluster address
    ("ray://head:10001", "head:6379"), AUTO to join the local machine's cluster or start
    one, or None to use a Ray that the caller has already initialised. `threads`: hashing
    threads per task, also the CPUs each task reserves (default 1, so tasks never
    oversubscribe a node). `progress(done, total)` counts bytes of finished checkpoints.
    Raises ImportError when ray is not installed, FileNotFoundError for a missing root."""
    try:
        import ray
    except ImportError:
        raise ImportError("ray is not installed: pip install 'shardscan[ray]'") from None

    started = time.perf_counter()
    found = find_checkpoints(root)
    started_here = False
    if not ray.is_initialized():
        if address == AUTO:
            # Join an existing cluster if one is configured; otherwise a local one.
            address = os.environ.get("RAY_ADDRESS") or None
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        started_here = True
    try:
        cpus = threads or 1
        task = ray.remote(num_cpus=cpus, max_retries=1)(_audit_one)
        against_abs = os.fspath(Path(against).absolute()) if against is not None else None
        sizes = [_size(c) for c in found.checkpoints]
        total = sum(sizes)
        refs = [
            # Absolute paths: a worker's working directory is not the driver's.
            task.remote(replace(c, path=c.path.absolute()), against_abs, hash, cpus)
            for c in found.checkpoints
        ]
        if progress is not None and refs:
            position = {ref: i for i, ref in enumerate(refs)}
            pending, done = list(refs), 0
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                done += sizes[position[ready[0]]]
                progress(done, total)
        verdicts = ray.get(refs)
    finally:
        if started_here:
            ray.shutdown()
    # Rows name checkpoints as the local audit does (as found under `root`, not absolute).
    shown = [(replace(row, path=os.fspath(c.path)), table) for (row, table), c in zip(verdicts, found.checkpoints)]
    return assemble(found, shown, hashed=hash, elapsed=time.perf_counter() - started)


def _size(checkpoint: Checkpoint) -> int:
    """Bytes the checkpoint's task will read, for progress; 0 when unknown."""
    if not checkpoint.readable:
        return 0
    total = 0
    try:
        for path in files_to_scan(checkpoint.path):
            if path.is_dir():  # DCP: every file of the directory
                total += sum(p.stat().st_size for p in path.iterdir() if p.is_file())
            else:
                total += path.stat().st_size
    except OSError:
        pass
    return total


def available() -> bool:
    """Whether ray can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None


__all__ = ["AUTO", "audit_ray", "available"]
