"""Integrity sweeps over archives of checkpoints: sampled, resumable, throttled, reported.

    >>> summary = shardscan.sweep.sweep("/archive", sample=Sample(1, 7), state="/var/lib/sweep.jsonl",
    ...                                 max_rate=parse_rate("500M"))

A sweep is `audit --no-hash` over the whole tree (every header, index, marker and manifest
size is checked on every run, since that costs seconds), then a hashing pass over a part of
the tensor files:

* `sample` (n/t): only the files whose relative path falls in the n-th of t subsets are hashed.
  The subset is a hash of the path relative to the root, so it is stable from run to run and
  t runs with n = 1..t hash every file exactly once.
* `state`: a JSON-lines file where each file's verdict is appended (and fsync'd) the moment it
  is known. A rerun with the same state resumes the last unfinished sweep with the same root
  and sample, skipping what it already verified; a torn last line (a kill -9 in the middle of a
  write) is ignored on read.
* `changed_only`: a file whose size, mtime_ns and inode are those of its last verified record
  is not read again. Metadata does not change when bits rot, so this is for the runs between
  full sampled reads, not instead of them.
* `max_rate`: files are hashed in batches of about `batch_bytes`; after each batch the sweep
  sleeps until its bytes divided by the time since the run began is at most the cap.

A hashed file fails when its scan finds a problem (a torn ZIP record, a CRC32 that does not
match), when the checkpoint's manifest holds other checksums for its tensors, or when its
size, mtime and inode are those of an earlier verified record but its digest is not (the
bytes changed under unchanged metadata: bit rot).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from ._typing import PathLike

if TYPE_CHECKING:
    import pyarrow as pa

    from .auditing import AuditResult
    from .scanner import ScanResult

BATCH_BYTES = 128 << 20  # between 64 and 256 MiB: long enough to hash at full speed, short enough to throttle evenly
_POWERS = {"K": 1, "M": 2, "G": 3, "T": 4}


@dataclass(frozen=True)
class Sample:
    """The `index`-th (1-based) of `total` deterministic subsets of the files."""

    index: int
    total: int

    def __str__(self) -> str:
        return f"{self.index}/{self.total}"

    def holds(self, relative: str) -> bool:
        """True when the file at `relative` (to the sweep's root) belongs to this subset."""
        digest = hashlib.blake2b(os.fsencode(relative), digest_size=8).digest()
        return int.from_bytes(digest, "little") % self.total == self.index - 1


def parse_sample(text: str) -> Sample:
    """"n/t" with 1 <= n <= t. Raises ValueError otherwise."""
    try:
        index, total = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"sample {text!r} is not n/t (for example 1/7)") from None
    if not 1 <= index <= total:
        raise ValueError(f"sample {text!r}: n must be between 1 and t")
    return Sample(index, total)


def parse_rate(text: str) -> float:
    """Bytes per second from "500M", "2G", "750K" or a plain number: decimal multiples, as
    the summary prints them ("500M" is 500 MB/s); "500Mi" or "500MiB" for binary ones. A
    trailing "B" or "/s" is allowed. Raises ValueError otherwise."""
    cleaned = text.strip().upper().removesuffix("/S").removesuffix("B")
    binary = cleaned.endswith("I")
    cleaned = cleaned.removesuffix("I")
    unit = cleaned[-1:] if cleaned[-1:] in _POWERS else ""
    try:
        number = float(cleaned[: len(cleaned) - len(unit)])
    except ValueError:
        raise ValueError(f"rate {text!r} is not a number of bytes per second (for example 500M)") from None
    if binary and not unit:
        raise ValueError(f"rate {text!r} is not a number of bytes per second (for example 500M)")
    value = number * (1024 if binary else 1000) ** _POWERS.get(unit, 0)
    if not value > 0:
        raise ValueError(f"rate {text!r} must be positive")
    return value


# ----------------------------------------------------------------------------------------
# What is hashed: units (a tensor file, or a DCP directory scanned as one) and their verdicts


@dataclass(frozen=True)
class Unit:
    """One thing the scanner reads as a whole, with the metadata --changed-only compares."""

    path: str  # absolute, as handed to scan_paths
    relative: str  # to the sweep's root: the name in the state, the sample and the summary
    checkpoint: str
    size: int
    mtime_ns: int
    inode: int


@dataclass(frozen=True)
class Verdict:
    """One unit's outcome, as recorded in the state file."""

    relative: str
    size: int
    mtime_ns: int
    inode: int
    ok: bool
    problem: str | None
    digest: str | None

    def record(self, sweep_id: str) -> dict[str, Any]:
        return {"kind": "file", "sweep": sweep_id, "path": self.relative, "size": self.size,
                "mtime_ns": self.mtime_ns, "inode": self.inode, "ok": self.ok, "problem": self.problem,
                "digest": self.digest}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Verdict":
        return cls(record["path"], record["size"], record["mtime_ns"], record["inode"], record["ok"],
                   record.get("problem"), record.get("digest"))


def _units(result: "AuditResult", root: Path) -> list[Unit]:
    """Every file `check` would read of every readable checkpoint, once each."""
    from .checker import files_to_scan
    from .discover import find_checkpoints

    units: dict[str, Unit] = {}
    for checkpoint in find_checkpoints(root).checkpoints:
        if not checkpoint.readable:
            continue
        try:
            paths = files_to_scan(checkpoint.path)
        except OSError:
            continue  # the header audit already failed this checkpoint and says why
        for path in paths:
            try:
                size, mtime_ns, inode = _measure(Path(path))
            except OSError:
                continue  # gone since the header pass; its checkpoint's row says so
            full = os.fspath(path)
            units.setdefault(full, Unit(full, os.path.relpath(full, root), os.fspath(checkpoint.path), size, mtime_ns, inode))
    return list(units.values())


def _measure(path: Path) -> tuple[int, int, int]:
    """(size, mtime_ns, inode); for a directory (a DCP checkpoint read as one), the sum of its
    files' sizes and the newest mtime among them."""
    info = path.stat()
    if not path.is_dir():
        return info.st_size, info.st_mtime_ns, info.st_ino
    entries = [entry.stat() for entry in os.scandir(path) if entry.is_file()]
    return (sum(e.st_size for e in entries), max([info.st_mtime_ns, *(e.st_mtime_ns for e in entries)]), info.st_ino)


def _digest(scan: "ScanResult") -> str | None:
    """One digest of a unit's tensors: its (key, checksum) rows in scan order."""
    if any(checksum is None for checksum in scan.columns.checksum):
        return None
    text = "\n".join(f"{key}\t{checksum}" for key, checksum in zip(scan.columns.key, scan.columns.checksum))
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


def _manifest_problem(unit: Unit, scan: "ScanResult", manifests: dict[str, dict | None]) -> str | None:
    """The first tensor of `unit` whose checksum differs from its checkpoint's manifest."""
    if unit.checkpoint not in manifests:
        manifests[unit.checkpoint] = _load_manifest(Path(unit.checkpoint))
    expected = manifests[unit.checkpoint]
    if not expected:
        return None
    name = os.path.relpath(unit.path, unit.checkpoint) if os.path.isdir(unit.checkpoint) else os.path.basename(unit.path)
    for key, checksum in zip(scan.columns.key, scan.columns.checksum):
        want = expected.get((name, key))
        if want is not None and checksum is not None and want != checksum:
            return f"tensor {key!r} changed since the manifest was written: XXH3-128 {checksum}, manifest {want}"
    return None


def _load_manifest(checkpoint: Path) -> dict | None:
    """(file, key) -> checksum of the checkpoint's manifest, or None without a readable one
    (the header audit reports an unreadable manifest)."""
    from .manifest import manifest_path

    path = manifest_path(checkpoint)
    if not path.is_file():
        return None
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=["file", "key", "checksum"])
    except Exception:  # noqa: BLE001 - any unreadable manifest is the header audit's finding
        return None
    columns = table.to_pydict()
    return {(f, k): c for f, k, c in zip(columns["file"], columns["key"], columns["checksum"]) if c is not None}


def _judge(unit: Unit, scan: "ScanResult", previous: Verdict | None, manifests: dict[str, dict | None]) -> Verdict:
    problems = [f"{p.error}" for p in scan.problems]
    digest = _digest(scan)
    if not problems:
        found = _manifest_problem(unit, scan, manifests)
        if found:
            problems.append(found)
    if (not problems and previous is not None and previous.ok and previous.digest and digest
            and _same_metadata(unit, previous) and previous.digest != digest):
        problems.append("content changed under unchanged size, mtime and inode (bit rot): "
                        f"digest {digest}, verified earlier as {previous.digest}")
    return Verdict(unit.relative, unit.size, unit.mtime_ns, unit.inode, not problems,
                   problems[0] if problems else None, digest)


def _same_metadata(unit: Unit, verdict: Verdict) -> bool:
    return (unit.size, unit.mtime_ns, unit.inode) == (verdict.size, verdict.mtime_ns, verdict.inode)


# ----------------------------------------------------------------------------------------
# The state file


class SweepState:
    """An append-only JSON-lines journal. Records: {"kind": "begin", "sweep", "root",
    "sample", "started"}, {"kind": "file", "sweep", "path", "size", "mtime_ns", "inode", "ok",
    "problem", "digest"}, {"kind": "end", "sweep"}. Every record is one write() of one line
    followed by fsync, so a kill leaves at most one torn line, at the end."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self.records = list(_read_records(self.path))
        self._fd: int | None = None

    def unfinished(self, root: str, sample: str) -> str | None:
        """The id of the last sweep of `root` and `sample` that began and never ended."""
        ended = {r["sweep"] for r in self.records if r.get("kind") == "end"}
        for record in reversed(self.records):
            if record.get("kind") == "begin" and record.get("root") == root and record.get("sample") == sample:
                return None if record["sweep"] in ended else record["sweep"]
        return None

    def verdicts(self, sweep_id: str) -> dict[str, Verdict]:
        return {r["path"]: Verdict.from_record(r) for r in self.records
                if r.get("kind") == "file" and r.get("sweep") == sweep_id}

    def last_verified(self) -> dict[str, Verdict]:
        """Per path, the newest record whose file verified clean with a digest."""
        out: dict[str, Verdict] = {}
        for record in self.records:
            if record.get("kind") == "file" and record.get("ok") and record.get("digest"):
                out[record["path"]] = Verdict.from_record(record)
        return out

    def append(self, record: dict[str, Any]) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if os.fstat(self._fd).st_size and not _ends_with_newline(self.path):
                os.write(self._fd, b"\n")  # close a torn line so the next record stands alone
        line = (json.dumps(record, ensure_ascii=True) + "\n").encode()
        os.write(self._fd, line)
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every whole record; a line that does not parse (the torn last one) is skipped."""
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except FileNotFoundError:
        return
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("sweep"), str):
            yield record


# ----------------------------------------------------------------------------------------
# The sweep


@dataclass(frozen=True)
class SweepSummary:
    """What one sweep did. `bytes_verified`/`files_verified` were hashed by this run;
    `files_resumed` had been verified by an earlier, interrupted run of the same sweep;
    `skipped` counts files not hashed, by reason; `problems` are (path, problem) from the
    header audit and from hashing (resumed verdicts included); `left_files`/`left_bytes` are
    the files of the other subsets of the sample, for the runs still to come."""

    root: str
    sample: str | None
    sweep_id: str
    started: float
    elapsed: float
    hash_seconds: float
    checkpoints: int
    files_total: int
    bytes_total: int
    files_verified: int
    bytes_verified: int
    files_resumed: int
    skipped: dict[str, int]
    problems: tuple[tuple[str, str], ...]
    left_files: int
    left_bytes: int
    max_rate: float | None = None
    verified: tuple[str, ...] = field(default=(), repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def rate(self) -> float:
        """Bytes verified per second of this run (from the start of the sweep)."""
        return self.bytes_verified / self.elapsed if self.elapsed > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root, "ok": self.ok, "sample": self.sample, "sweep": self.sweep_id,
            "started": self.started, "elapsed": round(self.elapsed, 6), "hash_seconds": round(self.hash_seconds, 6),
            "checkpoints": self.checkpoints, "files_total": self.files_total, "bytes_total": self.bytes_total,
            "files_verified": self.files_verified, "bytes_verified": self.bytes_verified,
            "rate": round(self.rate, 1), "max_rate": self.max_rate, "files_resumed": self.files_resumed,
            "skipped": dict(self.skipped), "problems": [{"path": p, "problem": q} for p, q in self.problems],
            "left": {"files": self.left_files, "bytes": self.left_bytes},
        }


def sweep(
    root: PathLike,
    *,
    sample: Sample | None = None,
    state: PathLike | None = None,
    changed_only: bool = False,
    max_rate: float | None = None,
    threads: int | None = None,
    batch_bytes: int = BATCH_BYTES,
    started: float | None = None,
) -> SweepSummary:
    """Runs one sweep of `root` (see the module docstring). `started`: the time.monotonic()
    at which the run began (default: now), from which `elapsed` and the rate cap count; the
    CLI passes its own start, so the cap holds over the whole command. Raises
    FileNotFoundError when `root` does not exist and ValueError when `changed_only` is asked
    without a `state`."""
    from .auditing import audit

    if changed_only and state is None:
        raise ValueError("--changed-only needs --state: the last verified digests live there")
    started_wall, started = time.time(), time.monotonic() if started is None else started
    base = Path(os.path.abspath(root))
    # Headers only: whole-file SHA-256 against a download's published digests would read every
    # byte on every run, whatever the sample.
    headers = audit(base, hash=False, threads=threads, sha256=False)
    units = _units(headers, base)
    journal = SweepState(state) if state is not None else None
    sample_text = str(sample) if sample else "all"
    sweep_id = (journal.unfinished(os.fspath(base), sample_text) if journal else None) or f"{started_wall:.6f}-{os.getpid()}"
    done = journal.verdicts(sweep_id) if journal else {}
    verified_before = journal.last_verified() if journal else {}
    if journal is not None and not done:
        journal.append({"kind": "begin", "sweep": sweep_id, "root": os.fspath(base), "sample": sample_text,
                        "started": started_wall})
    skipped: dict[str, int] = {}
    todo: list[Unit] = []
    left = [u for u in units if sample is not None and not sample.holds(u.relative)]
    for unit in units:
        if sample is not None and not sample.holds(unit.relative):
            continue
        if unit.relative in done:
            skipped["verified earlier in this sweep"] = skipped.get("verified earlier in this sweep", 0) + 1
        elif changed_only and unit.relative in verified_before and _same_metadata(unit, verified_before[unit.relative]):
            skipped["unchanged since verified"] = skipped.get("unchanged since verified", 0) + 1
        else:
            todo.append(unit)
    hash_started = time.monotonic()
    try:
        fresh = _hash(todo, journal, sweep_id, verified_before, threads=threads, max_rate=max_rate,
                      batch_bytes=batch_bytes, clock_start=started)
        if journal is not None:
            journal.append({"kind": "end", "sweep": sweep_id})
    finally:
        if journal is not None:
            journal.close()
    verdicts = {**done, **{v.relative: v for v in fresh}}
    problems = [(os.path.relpath(row.path, base), problem) for row in headers.rows if not row.ok
                for problem in (row.problems or (row.problem or "not ok",))]
    problems += sorted((v.relative, v.problem or "not ok") for v in verdicts.values() if not v.ok)
    return SweepSummary(
        root=os.fspath(base), sample=str(sample) if sample else None, sweep_id=sweep_id, started=started_wall,
        elapsed=time.monotonic() - started, hash_seconds=time.monotonic() - hash_started,
        checkpoints=len(headers.rows), files_total=len(units), bytes_total=sum(u.size for u in units),
        files_verified=len(fresh), bytes_verified=sum(v.size for v in fresh), files_resumed=len(done),
        skipped={**({"not in sample " + str(sample): len(left)} if left else {}), **skipped},
        problems=tuple(problems), left_files=len(left), left_bytes=sum(u.size for u in left), max_rate=max_rate,
        verified=tuple(sorted(verdicts)),
    )


def _batches(units: Sequence[Unit], batch_bytes: int) -> Iterator[list[Unit]]:
    batch: list[Unit] = []
    size = 0
    for unit in units:
        batch.append(unit)
        size += unit.size
        if size >= batch_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _hash(units: Sequence[Unit], journal: SweepState | None, sweep_id: str, verified_before: dict[str, Verdict], *,
          threads: int | None, max_rate: float | None, batch_bytes: int, clock_start: float) -> list[Verdict]:
    """Hashes `units` batch by batch, journals each verdict as it is known, and sleeps after
    each batch so that bytes read / time since `clock_start` stays at most `max_rate`."""
    from .scanner import scan_paths

    manifests: dict[str, dict | None] = {}
    out: list[Verdict] = []
    read = 0
    for batch in _batches(units, batch_bytes):
        scan = _scan_batch(scan_paths, batch, threads)
        for unit in batch:
            part = scan.select([unit.path]) if scan is not None else _scan_alone(scan_paths, unit, threads)
            verdict = _judge(unit, part, verified_before.get(unit.relative), manifests)
            if journal is not None:
                journal.append(verdict.record(sweep_id))
            out.append(verdict)
        read += sum(unit.size for unit in batch)
        if max_rate:
            pause = clock_start + read / max_rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    return out


def _scan_batch(scan_paths: Any, batch: list[Unit], threads: int | None) -> "ScanResult | None":
    try:
        return scan_paths([u.path for u in batch], hash=True, threads=threads)
    except FileNotFoundError:
        return None  # one file vanished: each is then scanned alone, so only that one fails


def _scan_alone(scan_paths: Any, unit: Unit, threads: int | None) -> "ScanResult":
    from .formats.base import FileProblem
    from .scanner import Columns, ScanResult

    try:
        return scan_paths([unit.path], hash=True, threads=threads)
    except FileNotFoundError as exc:
        return ScanResult(Columns(), (FileProblem(unit.path, exc),), (), 0, 0.0)


# ----------------------------------------------------------------------------------------
# Reporting


def render_sweep(summary: SweepSummary) -> str:
    """A few lines: what was read and how fast, what was skipped and why, each problem, what
    is left, and a closing verdict."""
    from .report import human_bytes, plural, printable_lines

    rate = f"{human_bytes(summary.rate)}/s" + (f" (cap {human_bytes(summary.max_rate)}/s)" if summary.max_rate else "")
    lines = [f"sweep {summary.sample or 'of every file'} of {summary.root}: {plural(summary.checkpoints, 'checkpoint')}, "
             f"{plural(summary.files_total, 'file')}, {human_bytes(summary.bytes_total)} (headers of all checked)",
             f"verified {plural(summary.files_verified, 'file')}, {human_bytes(summary.bytes_verified)} at {rate}"
             + (f"; {summary.files_resumed} verified before an interruption" if summary.files_resumed else "")]
    lines += [f"skipped {count}: {reason}" for reason, count in summary.skipped.items()]
    lines += [f"{path}: FAILED {problem}" for path, problem in summary.problems]
    if summary.left_files:
        lines.append(f"left for the other subsets: {plural(summary.left_files, 'file')}, {human_bytes(summary.left_bytes)}")
    lines.append(f"sweep {'OK' if summary.ok else 'FAILED'}: {plural(len(summary.problems), 'problem')} "
                 f"({summary.elapsed:.2f} s)")
    return printable_lines(lines)


def history_table(summaries: Iterable[SweepSummary]) -> "pa.Table":
    """One row per sweep, the columns of `to_dict` flattened (problems as a count and the
    first one, skipped as a JSON object)."""
    import pyarrow as pa

    rows = []
    for s in summaries:
        rows.append({
            "started": s.started, "root": s.root, "sample": s.sample, "sweep": s.sweep_id, "ok": s.ok,
            "elapsed": s.elapsed, "files_total": s.files_total, "bytes_total": s.bytes_total,
            "files_verified": s.files_verified, "bytes_verified": s.bytes_verified, "rate": s.rate,
            "max_rate": s.max_rate, "files_resumed": s.files_resumed, "skipped": json.dumps(s.skipped),
            "problems": len(s.problems), "first_problem": f"{s.problems[0][0]}: {s.problems[0][1]}" if s.problems else None,
            "left_files": s.left_files, "left_bytes": s.left_bytes,
        })
    return pa.Table.from_pylist(rows, schema=HISTORY_SCHEMA())


def HISTORY_SCHEMA() -> "pa.Schema":  # noqa: N802 - a constant, built lazily to keep pyarrow off start-up
    import pyarrow as pa

    return pa.schema([
        ("started", pa.float64()), ("root", pa.string()), ("sample", pa.string()), ("sweep", pa.string()),
        ("ok", pa.bool_()), ("elapsed", pa.float64()), ("files_total", pa.int64()), ("bytes_total", pa.int64()),
        ("files_verified", pa.int64()), ("bytes_verified", pa.int64()), ("rate", pa.float64()),
        ("max_rate", pa.float64()), ("files_resumed", pa.int64()), ("skipped", pa.string()), ("problems", pa.int64()),
        ("first_problem", pa.string()), ("left_files", pa.int64()), ("left_bytes", pa.int64()),
    ])


def append_history(summary: SweepSummary, path: PathLike) -> None:
    """Adds the sweep's row to the Parquet history at `path` (created when absent), atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .output import write_atomic

    row = history_table([summary])
    target = Path(path)
    table = pa.concat_tables([pq.read_table(target).cast(row.schema), row]) if target.exists() else row
    write_atomic(table, target)
