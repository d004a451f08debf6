"""Auditing a whole tree of checkpoints, and naming the newest one that is safe to resume.

    >>> result = shardscan.audit("out/")           # every checkpoint under out/, one shared pool
    >>> result.latest_ok                            # "out/checkpoint-1000" or None
    >>> shardscan.latest("out/")                    # Path of the newest clean checkpoint, or None

`audit` finds the checkpoints (shardscan.discover), reads the files `check` would read of every
checkpoint (shardscan.checker.files_to_scan) in ONE scan (one parallel hashing batch: a tree of
many small checkpoints keeps every core busy instead of running one small pool per checkpoint),
then hands each checkpoint its part of that scan (ScanResult.select, by file path) and `check`
judges it. What the audit adds is only what `check` cannot see from one checkpoint: completeness
markers found by discovery, frozen tensors and identical checkpoints. The same per-checkpoint
step (`audit_group`) is what a Ray task runs in shardscan.ray_audit, so the two produce the same
rows.

The module is not named `audit`: a submodule shadows the package attribute of the same name
once imported, and `shardscan.audit` must stay the function.

`latest` does not audit the tree: it checks from the newest checkpoint backwards and stops at the
first clean one, since older checkpoints do not change the answer.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ._typing import PathLike
from .discover import Checkpoint, Discovery, find_checkpoints
from .report import FileError

if TYPE_CHECKING:
    import pyarrow as pa

    from .report import Report
    from .scanner import ScanResult

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class AuditRow:
    """The verdict on one checkpoint. Counts come from its check report; `errors` also counts
    the completeness-marker problems discovery found (`markers`). `problem` is the first
    problem in words (None when ok); `problems` all of them, one line each."""

    path: str
    step: int | None
    format: str
    files: int
    tensors: int
    bytes: int
    ok: bool
    missing: int
    unexpected: int
    mismatched: int
    errors: int
    problem: str | None
    problems: tuple[str, ...] = ()
    markers: tuple[str, ...] = ()
    nonfinite: int = 0  # tensors holding NaN or Inf
    file_errors: tuple[FileError, ...] = ()  # every error, with its kind (errors.KINDS)

    def to_dict(self) -> dict[str, Any]:
        """The row as it appears in `audit --json` under "checkpoints"."""
        return {
            "path": self.path,
            "step": self.step,
            "format": self.format,
            "ok": self.ok,
            "files": self.files,
            "tensors": self.tensors,
            "bytes": self.bytes,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "mismatched": self.mismatched,
            "errors": self.errors,
            "problem": self.problem,
            "problems": list(self.problems),
            "nonfinite": self.nonfinite,
            "kinds": sorted({e.kind for e in self.file_errors}),
            "file_errors": [e.to_dict() for e in self.file_errors],
        }


@dataclass(frozen=True)
class AuditResult:
    """Every checkpoint under `root`, oldest first (step, then mtime).

    `tables[i]` is the per-tensor table of `rows[i]` (schema shardscan.schema.SCHEMA; None
    for a checkpoint that could not be read at all). `frozen` are the tensor keys whose
    checksum is the same in every checkpoint holding them (at least two, all hashed);
    `identical` pairs (later, earlier) checkpoints holding the same tensors bit for bit;
    `skipped` the entries discovery left alone on purpose, as (path, reason)."""

    root: str
    rows: tuple[AuditRow, ...]
    tables: tuple["pa.Table | None", ...] = field(repr=False)
    frozen: tuple[str, ...] = ()
    frozen_across: int = 0
    identical: tuple[tuple[str, str], ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()
    hashed: bool = True
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every checkpoint checks clean (and there is at least one)."""
        return bool(self.rows) and all(row.ok for row in self.rows)

    @property
    def first_nonfinite(self) -> str | None:
        """The path of the oldest checkpoint holding NaN or Inf values (where training
        diverged), or None."""
        return next((row.path for row in self.rows if row.nonfinite), None)

    @property
    def latest_ok(self) -> str | None:
        """The path of the newest checkpoint that checks clean, or None."""
        return next((row.path for row in reversed(self.rows) if row.ok), None)

    @property
    def table(self) -> "pa.Table":
        """Every checkpoint's per-tensor table, stacked, with a leading `checkpoint` column
        (the row's path): the table `audit -o` writes."""
        import pyarrow as pa

        from .scanner import arrow_text
        from .schema import SCHEMA

        schema = pa.schema([pa.field("checkpoint", pa.string(), nullable=False), *SCHEMA])
        parts = [
            table.add_column(0, schema.field("checkpoint"), pa.array([arrow_text(row.path)] * table.num_rows, pa.string()))
            for row, table in zip(self.rows, self.tables)
            if table is not None
        ]
        return pa.concat_tables(parts) if parts else schema.empty_table()

    def to_dict(self) -> dict[str, Any]:
        """The `audit --json` object: {"checkpoints": [...], "latest_ok": path|null, ...}."""
        return {
            "root": self.root,
            "ok": self.ok,
            "checkpoints": [row.to_dict() for row in self.rows],
            "latest_ok": self.latest_ok,
            "first_nonfinite": self.first_nonfinite,
            "frozen": list(self.frozen),
            "frozen_across": self.frozen_across,
            "identical": [{"path": a, "same_as": b} for a, b in self.identical],
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "elapsed": round(self.elapsed, 6),
        }


def audit(
    root: PathLike,
    against: PathLike | None = None,
    *,
    hash: bool = True,
    threads: int | None = None,
    progress: Progress | None = None,
    sha256: bool | None = None,
) -> AuditResult:
    """Checks every checkpoint under `root` (each against what it declares itself, plus
    `against` for all when given). Problems are collected into the rows, never raised.
    `progress(done, total)` receives bytes hashed over the whole tree. Raises
    FileNotFoundError when `root` does not exist; an unusable `against` makes every
    checkpoint's row say "cannot check: ..." instead. `sha256` as for `check`."""
    started = time.perf_counter()
    found = find_checkpoints(root)
    verdicts = audit_group(found.checkpoints, against, hash=hash, threads=threads, progress=progress, sha256=sha256)
    return assemble(found, verdicts, hashed=hash, elapsed=time.perf_counter() - started)


# ----------------------------------------------------------------------------------------
# The per-checkpoint step, shared by the local audit and the Ray tasks.


def audit_group(
    checkpoints: Sequence[Checkpoint],
    against: PathLike | None = None,
    *,
    hash: bool = True,
    threads: int | None = None,
    progress: Progress | None = None,
    sha256: bool | None = None,
) -> list[tuple[AuditRow, "pa.Table | None"]]:
    """(row, per-tensor table) for each checkpoint, in order: every file of every checkpoint
    is read in one scan, then each checkpoint is checked on its own part of it. A checkpoint
    that cannot be checked at all (a directory that cannot be listed, an `against` it cannot
    be measured with) fails with the reason; the others go on."""
    from .checker import files_to_scan
    from .scanner import scan_paths

    files: dict[int, list[str]] = {}
    failed: dict[int, FileError] = {}  # checkpoint index -> why it could not be checked
    for i, checkpoint in enumerate(checkpoints):
        if checkpoint.readable:
            try:
                files[i] = [os.fspath(p) for p in files_to_scan(checkpoint.path)]
            except OSError as exc:
                failed[i] = FileError(os.fspath(checkpoint.path), f"cannot check: {exc}", kind="io")
    # Full paths keep names unique across checkpoints; check shows them relative again.
    paths = [path for i in sorted(files) for path in files[i]]
    try:
        shared = scan_paths(paths, hash=hash, threads=threads, progress=progress)
    except FileNotFoundError:
        # A file vanished between listing and reading (a Trainer rotating its checkpoints):
        # each checkpoint is then checked with its own scan, so only the one that changed fails.
        shared = None
    out: list[tuple[AuditRow, "pa.Table | None"]] = []
    for i, checkpoint in enumerate(checkpoints):
        if i in files:
            part = shared.select(files[i]) if shared is not None else None
            out.append(judge(checkpoint, against, part, hash=hash, threads=threads, sha256=sha256))
        else:  # unreadable (discovery said why) or not listable (`failed` says why)
            out.append((_unreadable_row(checkpoint, (failed[i],) if i in failed else ()), None))
    return out


def judge(checkpoint: Checkpoint, against: PathLike | None, part: "ScanResult | None", *, hash: bool,
          threads: int | None, sha256: bool | None = None) -> tuple[AuditRow, "pa.Table | None"]:
    """One checkpoint's row and per-tensor table from `check` on its part of a scan (None: it
    scans itself); a checkpoint that cannot be checked gets a failed row saying why."""
    verdict = _checked(checkpoint, against, part, hash=hash, threads=threads, sha256=sha256)
    if isinstance(verdict, tuple):
        return verdict
    return _unreadable_row(checkpoint, (verdict,)), None


def _checked(checkpoint: Checkpoint, against: PathLike | None, part: "ScanResult | None", *, hash: bool,
             threads: int | None, sha256: bool | None = None) -> tuple[AuditRow, "pa.Table | None"] | FileError:
    """`check` of one checkpoint on its part of the shared scan (None: it scans itself): its
    row and table, or why it could not be checked."""
    from .checker import check, files_to_scan
    from .errors import ShardscanError, kind_of
    from .scanner import scan_paths

    try:
        if part is None:
            part = scan_paths(files_to_scan(checkpoint.path), hash=hash, threads=threads)
        report = check(checkpoint.path, against, hash=hash, threads=threads, scan=part, sha256=sha256)
    except (ShardscanError, OSError, ValueError) as exc:
        return FileError(os.fspath(checkpoint.path), f"cannot check: {exc}", kind=kind_of(exc))
    return _row(checkpoint, report), part.table


def _row(checkpoint: Checkpoint, report: "Report") -> AuditRow:
    """One checkpoint's row: its check report plus the markers discovery found missing."""
    from .report import families, plural

    words: list[str] = list(checkpoint.problems)
    for error in sorted(report.errors, key=lambda e: e.file):
        if error.error not in checkpoint.problems:  # check reports the markers too
            words.append(f"{error.file}: {error.error}")
    for label, keys in (("missing", report.missing), ("unexpected", report.unexpected)):
        if keys:
            words.append(f"{label} {plural(len(keys), 'tensor')}: {', '.join(families(keys))}")
    if report.nonfinite:
        words.append(f"{plural(len(report.nonfinite), 'tensor')} with NaN or Inf: "
                     f"{', '.join(families(n.key for n in report.nonfinite))}")
    if report.mismatched:
        fields = sorted({m.field for m in report.mismatched})
        words.append(f"{len(report.mismatched)} mismatched ({', '.join(fields)}): "
                     f"{', '.join(families(m.key for m in report.mismatched))}")
    ok = report.ok and not words
    return AuditRow(
        path=os.fspath(checkpoint.path), step=checkpoint.step, format=checkpoint.kind,
        files=report.files, tensors=report.tensors, bytes=report.bytes, ok=ok,
        missing=len(report.missing), unexpected=len(report.unexpected), mismatched=len(report.mismatched),
        errors=len({e.error for e in report.errors} | set(checkpoint.problems)),
        problem=words[0] if words and not ok else None, problems=tuple(words), markers=checkpoint.problems,
        nonfinite=len(report.nonfinite), file_errors=_file_errors(checkpoint, report.errors),
    )


def _file_errors(checkpoint: Checkpoint, errors: Sequence[FileError]) -> tuple[FileError, ...]:
    """What discovery found (markers of a save that did not finish; for an entry that cannot
    be opened, why: "io") and then `errors`, once each. Files are named relative to the
    checkpoint, "." for the checkpoint itself (wherever, and from whichever directory, it
    was checked: a Ray worker sees absolute paths)."""
    kind = "unfinished" if checkpoint.readable else "io"
    found = [FileError(".", p, kind=kind) for p in checkpoint.problems]
    itself = os.fspath(checkpoint.path)
    for error in errors:
        if error.error not in checkpoint.problems:  # check reports the markers too
            found.append(replace(error, file=".") if error.file in (itself, os.path.abspath(itself)) else error)
    return tuple(found)


def _unreadable_row(checkpoint: Checkpoint, failures: tuple[FileError, ...]) -> AuditRow:
    problems = checkpoint.problems + tuple(f.error for f in failures)
    return AuditRow(
        path=os.fspath(checkpoint.path), step=checkpoint.step, format=checkpoint.kind,
        files=0, tensors=0, bytes=0, ok=False, missing=0, unexpected=0, mismatched=0,
        errors=len(problems), problem=problems[0] if problems else "unreadable", problems=problems,
        markers=checkpoint.problems, file_errors=_file_errors(checkpoint, failures),
    )


# ----------------------------------------------------------------------------------------
# Across checkpoints


def assemble(
    found: Discovery, verdicts: Sequence[tuple[AuditRow, "pa.Table | None"]], *, hashed: bool, elapsed: float
) -> AuditResult:
    """The AuditResult from per-checkpoint verdicts (in discovery order), with the
    across-checkpoint summaries. Used unchanged by the Ray audit."""
    rows = tuple(row for row, _ in verdicts)
    tables = tuple(table for _, table in verdicts)
    frozen, across, identical = ((), 0, ()) if not hashed else _compare(rows, tables)
    return AuditResult(
        root=os.fspath(found.root), rows=rows, tables=tables, frozen=frozen, frozen_across=across,
        identical=identical, skipped=found.skipped, hashed=hashed, elapsed=elapsed,
    )


def _compare(
    rows: Sequence[AuditRow], tables: Sequence["pa.Table | None"]
) -> tuple[tuple[str, ...], int, tuple[tuple[str, str], ...]]:
    """Frozen keys and identical checkpoints. A key counts as frozen only when at least two
    checkpoints hold it with a checksum and every one of those checksums is equal; a
    checkpoint is identical to an earlier one when both hold the same (key, dtype, shape,
    checksum) rows, all hashed."""
    from .report import natural_sorted

    seen: dict[str, set[tuple[str, ...]]] = {}
    holders: dict[str, int] = {}
    fingerprints: dict[tuple, str] = {}
    identical: list[tuple[str, str]] = []
    compared = 0
    for row, table in zip(rows, tables):
        if table is None or table.num_rows == 0:
            continue
        keys = table.column("key").to_pylist()
        sums = table.column("checksum").to_pylist()
        dtypes = table.column("dtype").to_pylist()
        shapes = [tuple(s) for s in table.column("shape").to_pylist()]
        compared += 1
        per_key: dict[str, list[str]] = {}
        for key, checksum in zip(keys, sums):
            if checksum is not None:
                per_key.setdefault(key, []).append(checksum)
        for key, values in per_key.items():
            # A key stored twice in one checkpoint (a model and its EMA copy in one file) is
            # compared as the sorted set of its checksums.
            seen.setdefault(key, set()).add(tuple(sorted(values)))
            holders[key] = holders.get(key, 0) + 1
        if None not in sums:
            fingerprint = tuple(sorted(zip(keys, dtypes, shapes, sums)))
            earlier = fingerprints.setdefault(fingerprint, row.path)
            if earlier != row.path:
                identical.append((row.path, earlier))
    frozen = tuple(natural_sorted(k for k, values in seen.items() if holders[k] >= 2 and len(values) == 1))
    return frozen, (compared if frozen else 0), tuple(identical)


# ----------------------------------------------------------------------------------------
# Human output


def render_audit(result: AuditResult, *, colour: bool = False) -> str:
    """One aligned row per checkpoint (paths relative to the root) with its first problem
    indented below a failed one, then one line per summary (frozen, identical, skipped) and
    a closing count naming the newest clean checkpoint."""
    from .report import families, human_bytes, plural, printable_lines

    root = result.root.rstrip(os.sep) + os.sep

    def shown(path: str) -> str:
        return path[len(root):] if path.startswith(root) else path

    header = ("STEP", "FORMAT", "FILES", "TENSORS", "SIZE", "STATUS", "MISS", "UNEXP", "MISM", "ERR", "PATH")
    table = [header] + [
        ("-" if r.step is None else str(r.step), r.format, str(r.files), str(r.tensors), human_bytes(r.bytes),
         "OK" if r.ok else "FAILED", str(r.missing), str(r.unexpected), str(r.mismatched), str(r.errors), shown(r.path))
        for r in result.rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header) - 1)]
    paint = {"OK": "\x1b[32m", "FAILED": "\x1b[31m"}
    lines = []
    for n, line in enumerate(table):
        cells = [cell.ljust(width) for cell, width in zip(line, widths)]
        if colour and n and line[5] in paint:
            cells[5] = f"{paint[line[5]]}{cells[5]}\x1b[0m"
        lines.append("  ".join(cells + [line[-1]]).rstrip())
        row = result.rows[n - 1] if n else None
        if row is not None and not row.ok and row.problem:
            lines.append(f"    {row.problem}")
    if result.frozen:
        lines.append(f"frozen across {plural(result.frozen_across, 'checkpoint')}: {plural(len(result.frozen), 'tensor')}: "
                     + ", ".join(families(result.frozen)))
    if result.identical:
        lines.append("identical: " + "; ".join(f"{shown(a)} = {shown(b)}" for a, b in result.identical))
    for path, reason in result.skipped:
        lines.append(f"skipped {shown(path)}: {reason}")
    if result.first_nonfinite:
        lines.append(f"non-finite values (NaN/Inf) first appear in {shown(result.first_nonfinite)}")
    if not result.rows:
        lines.append(f"{result.root}: no checkpoints found")
    good = sum(r.ok for r in result.rows)
    newest = shown(result.latest_ok) if result.latest_ok else "none"
    lines.append(f"{plural(len(result.rows), 'checkpoint')}, {good} OK, {len(result.rows) - good} FAILED; "
                 f"latest OK: {newest} ({result.elapsed:.2f} s)")
    return printable_lines(lines, colour)


# ----------------------------------------------------------------------------------------
# latest


@dataclass(frozen=True)
class LatestPick:
    """The outcome of `pick_latest`: `path` is the newest clean checkpoint (None when there is
    none), `reason` one line saying why there is none, `rejected` the newer checkpoints
    passed over, each as (path, first problem); `kinds[i]` the error kinds (errors.KINDS) of
    rejected[i], sorted (empty when only tensors are missing or mismatched)."""

    path: Path | None
    reason: str | None
    rejected: tuple[tuple[str, str], ...] = ()
    kinds: tuple[tuple[str, ...], ...] = ()


def pick_latest(root: PathLike, *, hash: bool = True, threads: int | None = None,
                sha256: bool | None = None) -> LatestPick:
    """Checks checkpoints from the newest back and returns the first clean one, with the
    ones passed over. Raises FileNotFoundError when `root` does not exist."""
    found = find_checkpoints(root)
    if not found.checkpoints:
        return LatestPick(None, f"{root}: no checkpoints found")
    rejected: list[tuple[str, str]] = []
    kinds: list[tuple[str, ...]] = []
    for checkpoint in reversed(found.checkpoints):
        if checkpoint.problems:
            # A missing completeness marker is decisive; no need to read the tensors.
            rejected.append((os.fspath(checkpoint.path), checkpoint.problems[0]))
            kinds.append(("unfinished",) if checkpoint.readable else ("io",))
            continue
        # One checkpoint at a time, newest first, so a plain full check is the right tool:
        # it stops reading as soon as a clean one is found.
        from .checker import check
        from .errors import ShardscanError, kind_of

        try:
            row = _row(checkpoint, check(checkpoint.path, hash=hash, threads=threads, sha256=sha256))
        except (ShardscanError, OSError, ValueError) as exc:
            rejected.append((os.fspath(checkpoint.path), f"cannot check: {exc}"))
            kinds.append((kind_of(exc),))
            continue
        if row.ok:
            return LatestPick(checkpoint.path, None, tuple(rejected), tuple(kinds))
        rejected.append((row.path, row.problem or "not ok"))
        kinds.append(tuple(sorted({e.kind for e in row.file_errors})))
    count = len(found.checkpoints)
    newest_path, newest_problem = rejected[0]
    from .report import plural

    return LatestPick(
        None,
        f"{root}: none of {plural(count, 'checkpoint')} checks clean; newest {newest_path}: {newest_problem}",
        tuple(rejected),
        tuple(kinds),
    )


def latest(root: PathLike, *, hash: bool = True, threads: int | None = None,
           sha256: bool | None = None) -> Path | None:
    """The newest checkpoint under `root` (by step, then mtime) that checks clean, or None.
    Use it before resuming: `trainer.train(resume_from_checkpoint=str(latest("out")))`.
    Raises FileNotFoundError when `root` does not exist."""
    return pick_latest(root, hash=hash, threads=threads, sha256=sha256).path
