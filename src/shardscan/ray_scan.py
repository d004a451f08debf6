"""`scan --ray` and `check --ray` (extra `shardscan[ray]`): one Ray task per shard.

The driver discovers the files (names and stats only); every tensor file, or DCP directory,
becomes one task that reads and hashes it with the C scanner on whichever node Ray places it,
and sends back its ScanResult (rows as columns, problems). The driver combines the parts in
discovery order, so the table is the local one row for row; `check` then judges the combined
scan on the driver, reading only the index, manifest and config.

A worker that dies in the middle of a task (a node lost, a process killed) loses only that
task's result, which Ray runs again (`max_retries`); a part is a pure function of its file, so
a retry can neither lose rows nor count them twice. Every node must see the files at the same
absolute path (a shared filesystem); see docs/audit.md.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from ._typing import PathLike

if TYPE_CHECKING:
    from .report import Report
    from .scanner import ScanResult, Target

AUTO = "auto"
RETRIES = 3  # per task, for workers that die: a node lost, a process killed


def _scan_target(target: "Target", hash: bool, threads: int | None) -> "ScanResult":
    """The Ray task: one target, named as discovery named it."""
    from .scanner import scan_targets

    return scan_targets([target], hash=hash, threads=threads)


class _Cluster:
    """Joins (or starts) Ray for the duration of a `with`, its logs kept off the terminal,
    and leaves a Ray the caller had initialised alone."""

    def __init__(self, address: str | None) -> None:
        try:
            import ray
        except ImportError:
            raise ImportError("ray is not installed: pip install 'shardscan[ray]'") from None
        self.ray = ray
        self.address = address
        self.started_here = False

    def __enter__(self) -> Any:
        if not self.ray.is_initialized():
            address = (os.environ.get("RAY_ADDRESS") or None) if self.address == AUTO else self.address
            # log_to_driver=False keeps the workers' output off our stderr; logging_level
            # silences the driver's own "Connecting to existing Ray cluster" lines. The
            # raylet's notices ("A worker died or was killed while executing a task", printed
            # even for a task Ray then retries) are written to sys.stdout by a thread of the
            # driver, where they would break --json: they are kept aside while Ray runs, and
            # shown on stderr with SHARDSCAN_DEBUG=1. stderr stays as it is: our progress bar.
            self.captured = io.StringIO()
            self.redirects = contextlib.ExitStack()
            self.redirects.enter_context(contextlib.redirect_stdout(self.captured))
            try:
                self.ray.init(address=address, include_dashboard=False, log_to_driver=False,
                              logging_level=logging.ERROR, configure_logging=True)
            except BaseException:
                self._restore()
                raise
            self.started_here = True
        return self.ray

    def __exit__(self, *exc: object) -> None:
        if self.started_here:
            try:
                self.ray.shutdown()
            finally:
                self._restore()

    def _restore(self) -> None:
        self.redirects.close()
        if os.environ.get("SHARDSCAN_DEBUG") == "1" and self.captured.getvalue():
            sys.stderr.write(self.captured.getvalue())


def scan_paths_ray(
    paths: Sequence[PathLike] | PathLike,
    *,
    address: str | None = AUTO,
    hash: bool = True,
    threads: int | None = None,
) -> "ScanResult":
    """shardscan.scan_paths with one Ray task per tensor file (or DCP directory): the same
    rows in the same order and the same problems. `address` as for audit_ray; `threads` are
    the hashing threads and the CPUs of each task (default 1). Raises ImportError when ray
    is not installed, FileNotFoundError for a path that does not exist."""
    from .scanner import ScanResult, discover_given

    started = time.perf_counter()
    targets, problems = discover_given(paths)
    with _Cluster(address) as ray:
        task = ray.remote(num_cpus=threads or 1, max_retries=RETRIES)(_scan_target)
        # Absolute paths: a worker's working directory is not the driver's; names stay as given.
        refs = [task.remote(replace(t, path=t.path.absolute()), hash, threads or 1) for t in targets]
        parts = list(_gather(ray, refs))
    combined = ScanResult.combine(parts)
    return replace(combined, problems=tuple(problems) + combined.problems, elapsed=time.perf_counter() - started)


def _gather(ray: Any, refs: list) -> Iterator["ScanResult"]:
    for ref in refs:
        yield ray.get(ref)


def check_ray(path: PathLike, against: PathLike | None = None, *, address: str | None = AUTO, hash: bool = True,
              threads: int | None = None, **options: Any) -> "Report":
    """shardscan.check with its files scanned one Ray task each (scan_paths_ray), judged on
    the driver; `options` are check's other keyword arguments."""
    from .checker import check, files_to_scan

    root = Path(path)
    files = files_to_scan(root)
    scan = scan_paths_ray([os.fspath(f) for f in files], address=address, hash=hash, threads=threads)
    return check(root, against, hash=hash, threads=threads, scan=scan, **options)


__all__ = ["AUTO", "check_ray", "scan_paths_ray"]
