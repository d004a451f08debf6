"""`audit` over a Ray cluster (extra `shardscan[ray]`): one task per checkpoint, or per shard
for huge ones.

The driver walks the tree (cheap: names and stats), then every checkpoint becomes one Ray task
that runs the same per-checkpoint step as the local audit (shardscan.auditing.audit_group: the C
scanner and `check`) on whichever node Ray schedules it, and sends back its verdict row and
its per-tensor pyarrow.Table. A checkpoint larger than `split_bytes` is instead scanned one task
per tensor file (the byte work), and the driver combines those scans and judges the checkpoint
itself with `check` (reading only its index and config). The driver assembles the rows with the
same function the local audit uses, so both print the same rows, summaries and Parquet.

Every node must see the tree at the same path (a shared filesystem: NFS, Lustre, a mounted
bucket) and have shardscan installed; see docs/audit.md.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ._typing import PathLike
from .auditing import AuditResult, AuditRow, assemble, audit_group, judge
from .checker import files_to_scan
from .discover import Checkpoint, find_checkpoints
from .scanner import ScanResult

if TYPE_CHECKING:
    import pyarrow as pa


#: `--ray` without an address: join the cluster this machine belongs to if there is one
#: (RAY_ADDRESS or a running `ray start`), else start a local one.
AUTO = "auto"

#: Checkpoints larger than this are scanned one task per tensor file.
SPLIT_BYTES = 32 << 30


def _audit_one(
    checkpoint: Checkpoint, against: str | None, hash: bool, threads: int | None
) -> tuple[AuditRow, "pa.Table | None"]:
    """The Ray task: one checkpoint through the local per-checkpoint step."""
    ((row, table),) = audit_group([checkpoint], against, hash=hash, threads=threads)
    return row, table


def _scan_one(path: str, hash: bool, threads: int | None) -> ScanResult:
    """The Ray task for one shard of a huge checkpoint: the byte work only."""
    from .scanner import scan_paths

    return scan_paths([path], hash=hash, threads=threads)


def audit_ray(
    root: PathLike,
    against: PathLike | None = None,
    *,
    address: str | None = AUTO,
    hash: bool = True,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    split_bytes: int = SPLIT_BYTES,
) -> AuditResult:
    """`shardscan.audit` with one Ray task per checkpoint, or per tensor file for checkpoints
    larger than `split_bytes`. `address`: a cluster address
    ("ray://head:10001", "head:6379"), AUTO to join the local machine's cluster or start
    one, or None to use a Ray that the caller has already initialised. `threads`: hashing
    threads per task, also the CPUs each task reserves (default 1, so tasks never
    oversubscribe a node). `progress(done, total)` counts bytes of finished checkpoints.
    Raises ImportError when ray is not installed, FileNotFoundError for a missing root."""
    from .ray_scan import _Cluster

    cluster = _Cluster(address)  # raises ImportError first, before the walk
    started = time.perf_counter()
    found = find_checkpoints(root)
    # Joins the cluster RAY_ADDRESS names (or starts a local one), with Ray's lines kept off
    # the terminal, and leaves a Ray the caller initialised alone.
    with cluster as ray:
        cpus = threads or 1
        whole = ray.remote(num_cpus=cpus, max_retries=1)(_audit_one)
        shard = ray.remote(num_cpus=cpus, max_retries=1)(_scan_one)
        against_abs = os.fspath(Path(against).absolute()) if against is not None else None
        # Absolute paths: a worker's working directory is not the driver's.
        checkpoints = [replace(c, path=c.path.absolute()) for c in found.checkpoints]
        refs: list = []     # one per checkpoint: its (row, table), or the list of its shard scans
        sizes: dict = {}    # ref -> bytes it reads, for progress
        for checkpoint in checkpoints:
            files = _files(checkpoint)
            if sum(files.values()) > split_bytes and len(files) > 1:
                parts = [shard.remote(os.fspath(path), hash, cpus) for path in files]
                sizes.update(zip(parts, files.values()))
                refs.append(parts)
            else:
                ref = whole.remote(checkpoint, against_abs, hash, cpus)
                sizes[ref] = sum(files.values())
                refs.append(ref)
        if progress is not None and sizes:
            pending, done, total = list(sizes), 0, sum(sizes.values())
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                done += sizes[ready[0]]
                progress(done, total)
        verdicts = []
        for checkpoint, ref in zip(checkpoints, refs):
            if isinstance(ref, list):
                part = ScanResult.combine(ray.get(ref))
                verdicts.append(judge(checkpoint, against_abs, part, hash=hash, threads=cpus))
            else:
                verdicts.append(ray.get(ref))
    # Rows name checkpoints as the local audit does (as found under `root`, not absolute).
    shown = [(replace(row, path=os.fspath(c.path)), table) for (row, table), c in zip(verdicts, found.checkpoints)]
    return assemble(found, shown, hashed=hash, elapsed=time.perf_counter() - started)


def _files(checkpoint: Checkpoint) -> dict[Path, int]:
    """The tensor files (or DCP directory) the checkpoint's check reads, with their sizes in
    bytes; empty when they cannot be listed (the task then says why)."""
    if not checkpoint.readable:
        return {}
    sizes: dict[Path, int] = {}
    try:
        for path in files_to_scan(checkpoint.path):
            if path.is_dir():  # DCP: every file of the directory, read as one
                sizes[path] = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
            else:
                sizes[path] = path.stat().st_size
    except OSError:
        return {}
    return sizes


__all__ = ["AUTO", "audit_ray"]
