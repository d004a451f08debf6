"""One command that measures shardscan against the machine's limits and the tools users pick instead.

    .venv/bin/python benches/run.py --readme        # full run (~8-10 min on 2 cores)
    .venv/bin/python benches/run.py --smoke --out /tmp/x.md   # a few MB, under a minute

Everything in one table comes from one run: the machine drifts (up to 2x on shared hosts), so only
ratios between rows measured side by side mean anything. Every timed command is its own process
(start-up and imports count, as they do for a user), started by a ~1 MiB C spawner (spawn.c) that
times it and reaps it with wait4, whose rusage gives its own peak resident memory. Repetitions
alternate the commands (A B C A B C ...) so drift spreads over all of them instead of landing on one.

Warm runs read from the page cache (the files are read once untimed first). Cold runs drop the
checkpoint's pages with posix_fadvise(POSIX_FADV_DONTNEED) before each run, outside the timing,
and then check with mincore(2) that no page stayed resident; the count is reported, as is the
cached fraction at the start of every warm run.

The table goes to benches/results/latest.md (and raw figures to latest.json), written atomically.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import hashlib
import json
import mmap
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_checkpoint  # noqa: E402  (sibling script, not a package)
import make_sparse  # noqa: E402

PY = sys.executable
SWEEP_CAP = "500M"  # the throttled sweep's --max-rate: below this machine's disk and hashing rates
GB = 1e9  # throughput in decimal GB/s, like dd, b3sum and every disk vendor


# --------------------------------------------------------------------------------------------
# Measuring one process
# --------------------------------------------------------------------------------------------

@dataclass
class Run:
    seconds: float
    maxrss_kib: int
    returncode: int
    stderr_tail: str
    inner_seconds: float | None = None  # the command's own elapsed (shardscan --json), start-up excluded
    cached_pages: int = 0  # pages of the inputs in the page cache when the run started
    total_pages: int = 0


def run_timed(argv: list[str], spawner: Path) -> Run:
    """Run argv to completion under benches/spawn.c; its wall time and its own peak RSS.

    The C spawner does the fork/exec/wait4: a child forked from this Python process would
    inherit our (torch-sized) high-water mark into its ru_maxrss.
    """
    with tempfile.TemporaryDirectory() as tmp:
        report, out_path, err_path = (Path(tmp) / n for n in ("report", "stdout", "stderr"))
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            subprocess.run([str(spawner), str(report), *argv], stdin=subprocess.DEVNULL,
                           stdout=out, stderr=err, check=True)
        fields = dict(kv.split("=", 1) for kv in report.read_text().split())
        # Some tools report a failure on stdout (`name: FAILED ...` first, then a count), so
        # fall back to stdout's first line.
        tail = _last_line(err_path) or _first_line(out_path)
        inner = _json_elapsed(out_path) if "--json" in argv else None
    return Run(float(fields["seconds"]), int(fields["maxrss_kib"]), int(fields["status"]), tail, inner)


def _json_elapsed(path: Path) -> float | None:
    """shardscan --json's own "elapsed" (seconds after start-up), if it reports one."""
    try:
        value = json.loads(path.read_text()).get("elapsed")
        return float(value) if value is not None else None
    except (ValueError, AttributeError, TypeError):
        return None


def _first_line(path: Path) -> str:
    with open(path, "rb") as f:
        return f.readline(4096).decode(errors="replace").strip()


def _last_line(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 4096))
        lines = f.read().decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------------------------
# Page cache control: evict with fadvise, verify with mincore
# --------------------------------------------------------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_PAGE = os.sysconf("SC_PAGE_SIZE")
_RAM = _PAGE * os.sysconf("SC_PHYS_PAGES")
_MAP_FAILED = ctypes.c_void_p(-1).value
_BIT0 = bytes(i & 1 for i in range(256))


def resident_pages(path: Path) -> int:
    """How many of the file's pages are in the page cache right now (mincore on a fresh map).

    Mapping without touching faults nothing in, so the probe does not disturb what it measures.
    """
    size = path.stat().st_size
    if size == 0:
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, _MAP_FAILED):
            raise OSError(ctypes.get_errno(), "mmap failed", str(path))
        try:
            pages = (size + _PAGE - 1) // _PAGE
            vec = ctypes.create_string_buffer(pages)
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed", str(path))
            # Bit 0 of each byte says resident; the other bits are reserved, so mask them off.
            return vec.raw[:pages].translate(_BIT0).count(1)
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def evict(paths: list[Path]) -> int:
    """Drop the files' cached pages; return how many stayed resident (0 is the goal)."""
    for attempt in range(3):
        for p in paths:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        left = sum(resident_pages(p) for p in paths)
        if left == 0:
            return 0
        # Dirty pages (a file written moments ago) are skipped by DONTNEED; flush and retry.
        os.sync()
    return left


def residency(paths: list[Path]) -> tuple[int, int]:
    """(pages cached, pages in total) over the files."""
    return (sum(resident_pages(p) for p in paths),
            sum((p.stat().st_size + _PAGE - 1) // _PAGE for p in paths))


def warm_up(paths: list[Path], tools: Tools) -> None:
    """Drop every file of the workdir from the page cache, then read the inputs once, untimed,
    so that warm runs start from a full page cache filled the same way for every input, into
    free memory. How pages came into the cache changes how fast they map: pages left there by
    the program that wrote a file (freshly written torch.save shards hashed at about 0.75x the
    speed of the same shards read back), or read into memory that other files' pages had
    fragmented (the same shards, read the same way, moved by a fifth), would credit one
    format with another's page cache."""
    evict(sorted(p for p in tools.workdir.rglob("*") if p.is_file()))
    subprocess.run([str(tools.reader), "pread", "2", *map(str, paths)], check=True, stdout=subprocess.DEVNULL)


# --------------------------------------------------------------------------------------------
# What gets measured
# --------------------------------------------------------------------------------------------

@dataclass
class Bench:
    label: str
    argv: list[str] | None  # None: not available (see note)
    nbytes: int  # bytes the command is asked to cover (for GB/s)
    inputs: list[Path]  # files to evict before a cold run
    kind: str  # "shardscan" | "limit" | "peer"
    modes: tuple[str, ...] = ("warm", "cold")
    note: str = ""
    header_only: bool = False
    runs: dict[str, list[Run]] = field(default_factory=dict)
    failure: dict[str, str] = field(default_factory=dict)

    def ok(self, mode: str) -> list[Run]:
        return [r for r in self.runs.get(mode, []) if r.returncode == 0]


def shardscan_cmd() -> list[str]:
    """The installed entry point if there is one (what users run), else `python -m shardscan`.
    Its modules are byte-compiled first, as pip does on install: an editable install run with
    PYTHONDONTWRITEBYTECODE set would otherwise compile them from source in every timed run."""
    compile_package = "import compileall, os, shardscan; compileall.compile_dir(os.path.dirname(shardscan.__file__), quiet=1)"
    subprocess.run([PY, "-c", compile_package], check=True, stdout=subprocess.DEVNULL)
    exe = Path(PY).with_name("shardscan")
    return [str(exe)] if exe.exists() else [PY, "-m", "shardscan"]


def probe(argv: list[str]) -> str:
    """'' if `argv --help` works, else a short reason (the command does not exist yet, ...)."""
    try:
        r = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"not available ({e.__class__.__name__})"
    if r.returncode == 0:
        return ""
    tail = (r.stderr or r.stdout).strip().splitlines()
    return "not available" + (f" ({tail[-1][:80]})" if tail else f" (exit {r.returncode})")


#: Libraries a bench tool links: readlimit's xxh3 mode is libxxhash's XXH3-128 with its run-time
#: dispatch, the same entry points shardscan's core calls (Debian libxxhash-dev).
TOOL_LIBS = {"readlimit": ["-lxxhash"]}


def build_tool(workdir: Path, name: str) -> Path:
    """Compile benches/NAME.c into the workdir (once per version of the source and flags).

    -march=native matters for readlimit: without it GCC lowers the 64-byte vector add to SSE2
    code that tops out near 6 GB/s per core here, below memory bandwidth, so the "limit" would
    measure the reader instead of the machine.
    """
    src = HERE / f"{name}.c"
    cmd = ["gcc", "-O2", "-march=native", "-Wall", "-Wextra", "-pthread"]
    libs = TOOL_LIBS.get(name, [])
    # The binary's name carries a hash of source and flags, so a stale build is never reused.
    tag = hashlib.sha1(src.read_bytes() + " ".join(cmd + libs).encode()).hexdigest()[:10]
    exe = workdir / f"{name}-{tag}"
    if not exe.exists():
        tmp = exe.with_name(exe.name + ".tmp")
        if subprocess.run([*cmd, "-o", str(tmp), str(src), *libs]).returncode != 0:
            # A compiler that does not know -march=native: portable code, slower limit.
            subprocess.run([c for c in cmd if c != "-march=native"] + ["-o", str(tmp), str(src), *libs], check=True)
        os.replace(tmp, exe)
    return exe


def gcc_version() -> str:
    try:
        return subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "gcc not found"


@dataclass(frozen=True)
class Tools:
    reader: Path  # benches/readlimit.c
    spawner: Path  # benches/spawn.c
    workdir: Path  # where the checkpoints (and these tools) live


@dataclass
class Config:
    workdir: Path
    size: int
    shard_size: int
    sizes: list[int]
    counts: list[int]
    reps_warm: int
    reps_cold: int
    threads: list[int]
    cold: bool
    out: Path
    smoke: bool
    sparse: int = 0  # total bytes of the sparse checkpoint (8 tensors); 0 = not run


SPARSE_TENSORS = 8


def main_benches(cfg: Config, ckpt: Path, man: dict, reader: Path, ss: list[str],
                 have_scan: str, have_check: str) -> list[Bench]:
    st = [ckpt / n for n in man["safetensors"]]
    bins = [ckpt / n for n in man["bin"]]
    st_bytes, bin_bytes = man["safetensors_bytes"], man["bin_bytes"]
    # Each bench's inputs are the files it reads: evicted before its cold runs, and checked for
    # residency before every run.
    st_in = [*st, ckpt / "model.safetensors.index.json"]
    bin_in = [*bins, ckpt / "bin" / "pytorch_model.bin.index.json"]
    s_st = list(map(str, st))
    cores = os.cpu_count() or 1
    sha_set = linked_set(cfg.workdir / "sha256-set", st_in)
    openssl_pairs = 'printf "%s\\0" "$@" | xargs -0 -n 1 -P 2 openssl dgst -sha256'
    dd_loop = 'for f in "$@"; do dd if="$f" of=/dev/null iflag=direct bs=16M status=none || exit 1; done'

    def ss_argv(*args: str, avail: str = have_scan) -> list[str] | None:
        # --json: the command then reports its own elapsed time, which separates start-up
        # (interpreter, imports) from the byte work.
        return None if avail else [*ss, args[0], "--json", *args[1:]]

    return [
        Bench("shardscan scan (XXH3-128)", ss_argv("scan", str(ckpt)), st_bytes, st_in, "shardscan",
              note=have_scan),
        # An integrity sweep of the same checkpoint (audit's header pass, then every shard hashed
        # in batches), at full speed and under a cap: GB/s verified per node, and how closely the
        # throttle holds a rate well below it.
        Bench("shardscan audit --sample 1/1 (sweep)", ss_argv("audit", "--sample", "1/1", str(ckpt)),
              st_bytes, st_in, "shardscan", note=have_scan),
        Bench(f"shardscan audit --sample 1/1 --max-rate {SWEEP_CAP} (sweep, throttled)",
              ss_argv("audit", "--sample", "1/1", "--max-rate", SWEEP_CAP, str(ckpt)), st_bytes, st_in, "shardscan",
              note=have_scan, modes=("warm",)),
        Bench("shardscan scan --no-hash", ss_argv("scan", "--no-hash", str(ckpt)), st_bytes, st_in,
              "shardscan", note=have_scan, header_only=True),
        Bench("shardscan check --no-hash", ss_argv("check", "--no-hash", str(ckpt), avail=have_check),
              st_bytes, st_in, "shardscan", note=have_check, header_only=True),
        # The expected layout built by transformers on the meta device from config.json: the
        # extra cost (importing torch and transformers, building the model) reported apart.
        Bench("shardscan check --no-hash --hf (transformers layout)", ss_argv("check", "--no-hash", "--hf", str(ckpt),
              avail=have_check), st_bytes, st_in, "shardscan", note=have_check, header_only=True, modes=("warm",)),
        Bench("shardscan scan .bin (XXH3-128)", ss_argv("scan", *map(str, bins)), bin_bytes, bin_in,
              "shardscan", note=have_scan),
        Bench("shardscan scan --no-hash .bin", ss_argv("scan", "--no-hash", *map(str, bins)), bin_bytes, bin_in,
              "shardscan", note=have_scan, header_only=True),
        Bench(f"limit: mmap read, {min(2, cores)} threads", [str(reader), "mmap", str(min(2, cores)), *s_st],
              st_bytes, st_in, "limit"),
        Bench(f"limit: pread read, {min(2, cores)} threads", [str(reader), "pread", str(min(2, cores)), *s_st],
              st_bytes, st_in, "limit"),
        # The limit for hashing: the same mapped pass with libxxhash's XXH3-128 as the work.
        Bench(f"limit: mmap + XXH3-128, {min(2, cores)} threads", [str(reader), "xxh3", str(min(2, cores)), *s_st],
              st_bytes, st_in, "limit", modes=("warm",)),
        # O_DIRECT bypasses the page cache, so warm and cold are the same run; measure it cold only.
        Bench("limit: dd iflag=direct bs=16M", ["sh", "-c", dd_loop, "sh", *s_st], st_bytes, st_in,
              "limit", modes=("cold",)),
        Bench("xxhsum -H2", ["xxhsum", "-H2", *s_st], st_bytes, st_in, "peer"),
        Bench("b3sum", ["b3sum", *s_st], st_bytes, st_in, "peer"),
        # ~0.1 GB/s here (coreutils' portable SHA-256): one shard gives its rate in a quarter of the time.
        Bench(f"sha256sum (first shard, {st[0].stat().st_size / GB:.2f} GB)", ["sha256sum", s_st[0]],
              st[0].stat().st_size, st_in, "peer"),
        # Whole-file SHA-256 of the shards (a directory of links to exactly them), against OpenSSL's
        # libcrypto (SHA extensions) on two files at a time. --no-hash leaves out the tensor pass:
        # the digests alone are what openssl computes.
        Bench("shardscan check --sha256 --no-hash (SHA-256 only)",
              ss_argv("check", "--sha256", "--no-hash", str(sha_set), avail=have_check), st_bytes, st_in,
              "shardscan", note=have_check),
        Bench("openssl dgst -sha256, 2 files at a time", ["sh", "-c", openssl_pairs, "sh", *s_st], st_bytes, st_in,
              "peer"),
        # scan's hashing pass with its NaN/Inf counts and without (the engine alone, its own
        # clock): what the value checks cost. scan itself has no switch to leave them out.
        Bench("shardscan engine: hashing + NaN/Inf counts (as scan)",
              None if have_scan else [PY, str(HERE / "valuecost.py"), "counted", "--json", *s_st], st_bytes, st_in,
              "shardscan", modes=("warm",), note=have_scan),
        Bench("shardscan engine: hashing alone (no value counts)",
              None if have_scan else [PY, str(HERE / "valuecost.py"), "plain", "--json", *s_st], st_bytes, st_in,
              "shardscan", modes=("warm",), note=have_scan),
        Bench("python: safe_open + xxh3_128 per tensor", [PY, str(HERE / "peers.py"), "st-xxh", *s_st],
              st_bytes, st_in, "peer"),
        Bench("python: torch.load(mmap) + xxh3_128 (.bin)", [PY, str(HERE / "peers.py"), "torch-xxh",
              *map(str, bins)], bin_bytes, bin_in, "peer"),
        Bench("python: torch.load(mmap) headers only (.bin)", [PY, str(HERE / "peers.py"), "torch-headers",
              *map(str, bins)], bin_bytes, bin_in, "peer", header_only=True),
        Bench("python: safe_open headers only", [PY, str(HERE / "peers.py"), "st-headers", *s_st],
              st_bytes, st_in, "peer", header_only=True),
        Bench("python: json headers only", [PY, str(HERE / "peers.py"), "json-headers", *s_st],
              st_bytes, st_in, "peer", header_only=True),
    ]


def linked_set(directory: Path, files: list[Path]) -> Path:
    """A directory of symlinks to `files` (made once): `check --sha256` of it digests exactly them."""
    directory.mkdir(parents=True, exist_ok=True)
    for f in files:
        link = directory / f.name
        if not link.is_symlink():
            link.symlink_to(f.resolve())
    return directory


def measure(benches: list[Bench], mode: str, reps: int, warm_inputs: list[Path], tools: Tools, log,
            budget_s: float = 30.0) -> None:
    """Round-robin over the benches, `reps` times.

    A bench that fails is not repeated. A slow one (sha256sum runs at ~0.2 GB/s here) stops
    repeating once it has 2 runs (1 cold) and `budget_s` seconds, so one peer cannot eat the
    run's time; the table shows n when a row has fewer runs than asked.
    """
    todo = [b for b in benches if b.argv and mode in b.modes]
    if mode == "warm" and todo and warm_inputs:
        warm_up(warm_inputs, tools)
    for rep in range(reps):
        for b in todo:
            done = b.runs.get(mode, [])
            if mode in b.failure or (len(done) >= (2 if mode == "warm" else 1)
                                     and sum(r.seconds for r in done) > budget_s):
                continue
            if mode == "cold":
                evict(b.inputs)
            cached, total = residency(b.inputs)
            if mode == "warm" and cached < total and total * _PAGE < _RAM // 2:
                # Memory reclaim pages out file pages left idle for a while (DAMON on this
                # machine: a minute), so a round of other rows leaves an input part cold,
                # which would time the disk inside a warm run. Read it back in, untimed
                # (not an input too large to stay cached, such as the sparse file).
                subprocess.run([str(tools.reader), "pread", "2", *map(str, b.inputs)], check=True,
                               stdout=subprocess.DEVNULL)
                cached, total = residency(b.inputs)
            r = run_timed(b.argv, tools.spawner)
            r.cached_pages, r.total_pages = cached, total
            b.runs.setdefault(mode, []).append(r)
            if r.returncode != 0:
                b.failure[mode] = f"failed (exit {r.returncode}: {r.stderr_tail[:100]})"
            log(f"  {mode} {rep + 1}/{reps} {b.label}: {r.seconds:.3f} s, {r.maxrss_kib // 1024} MiB, "
                f"{cached}/{total} pages cached" + (f", rc={r.returncode}" if r.returncode else ""))


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------

def med(runs: list[Run], stat=statistics.median) -> float:
    """The runs' typical time: the median by default; `min` for the best-case view."""
    return stat(r.seconds for r in runs)


def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / GB


def fmt_rate(b: Bench, mode: str) -> str:
    runs = b.ok(mode)
    if not runs:
        return ""
    ts = [r.seconds for r in runs]
    rates = sorted(gbps(b.nbytes, t) for t in ts)
    return f"{gbps(b.nbytes, med(runs)):.2f} ({rates[0]:.2f}-{rates[-1]:.2f})"


def fmt_time(runs: list[Run], planned: int | None = None) -> str:
    ts = sorted(r.seconds for r in runs)
    n = f", n={len(ts)}" if planned and len(ts) < planned else ""
    return f"{statistics.median(ts):.3f} ({ts[0]:.3f}-{ts[-1]:.3f}{n})"


def fmt_cached(runs: list[Run], mode: str) -> str:
    """Cold: the most pages any run found still cached (0 = eviction verified). Warm: the lowest
    cached fraction any run started with (100% = really warm)."""
    if mode == "cold":
        return f"{max(r.cached_pages for r in runs)} pages"
    return f"{min(r.cached_pages / r.total_pages if r.total_pages else 1.0 for r in runs) * 100:.1f}%"


def peak_rss(runs: list[Run]) -> str:
    return f"{max(r.maxrss_kib for r in runs) / 1024:.0f} MiB" if runs else ""


def status(b: Bench, mode: str) -> str | None:
    """The text that replaces the figures when a row has none."""
    if b.argv is None:
        return b.note or "not available"
    if mode not in b.modes:
        return None
    if mode in b.failure and not b.ok(mode):
        return b.failure[mode]
    if not b.ok(mode):
        return "not run"
    return None


def main_table(benches: list[Bench], mode: str, planned: int) -> list[str]:
    by = {b.label: b for b in benches}
    limit = by["limit: dd iflag=direct bs=16M"] if mode == "cold" else next(
        b for b in benches if b.label.startswith("limit: mmap"))
    scan = by["shardscan scan (XXH3-128)"]
    header_ref = by["shardscan check --no-hash"] if by["shardscan check --no-hash"].ok(mode) else \
        by["shardscan scan --no-hash"]
    lim_name = "x dd O_DIRECT" if mode == "cold" else "x mmap limit"
    rows = [f"| {mode} | time s, median (min-max) | GB/s, median (min-max) | {lim_name} | "
            "shardscan faster by | GB/s by its own clock | peak RSS | inputs cached at start |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for b in benches:
        if mode not in b.modes:
            continue
        st = status(b, mode)
        if st:
            rows.append(f"| {b.label} | {st} | | | | | | |")
            continue
        runs = b.ok(mode)
        # Header-only rows touch a few KB; a GB/s figure would be meaningless, time is the metric.
        rate = "header only" if b.header_only else fmt_rate(b, mode)
        x_lim = ""
        if not b.header_only and (r := ratio(b, limit, mode)) is not None:
            x_lim = f"{r:.2f}"
        ref = header_ref if b.header_only else scan
        faster = ""
        if ref is not b and (r := ratio(ref, b, mode)) is not None:
            faster = f"{r:.2f}x" + (f" (vs {ref.label.removeprefix('shardscan ')})" if b.header_only else "")
        rows.append(f"| {b.label} | {fmt_time(runs, planned)} | {rate} | {x_lim} | {faster} | "
                    f"{fmt_inner(b, mode)} | {peak_rss(runs)} | {fmt_cached(runs, mode)} |")
    return rows


def fmt_inner(b: Bench, mode: str) -> str:
    """Throughput by the command's own clock (start-up excluded), for commands that report it."""
    inner = [r.inner_seconds for r in b.ok(mode) if r.inner_seconds]
    if not inner or b.header_only:
        return f"{statistics.median(inner) * 1e3:.0f} ms" if inner else ""
    return f"{b.nbytes / statistics.median(inner) / GB:.2f}"


@dataclass
class Target:
    what: str
    value: float | None  # None: not measured
    target: float
    higher_is_better: bool
    unit: str = "x"
    why_missing: str = ""
    best: float | None = None  # the same figure from each command's fastest run

    def row(self) -> str:
        op = ">=" if self.higher_is_better else "<="
        tgt = f"{op} {self.target:g}{self.unit}"
        if self.value is None:
            return f"| {self.what} | {tgt} | | | not measured: {self.why_missing} |"
        v = f"{self.value:.3g}{self.unit}"
        best = "" if self.best is None else f"{self.best:.3g}{self.unit}"
        if self.higher_is_better:
            met, by = self.value >= self.target, (self.target - self.value) / self.target
        else:
            met, by = self.value <= self.target, (self.value - self.target) / self.target
        # One decimal below 1%, so a near-miss never reads "missed by 0%".
        miss = f"missed by {by * 100:.0f}%" if by >= 0.01 else f"missed by {by * 100:.1f}%"
        return f"| {self.what} | {tgt} | {v} | {best} | {'met' if met else miss} |"


def ratio(a: Bench, b: Bench, mode: str, stat=statistics.median) -> float | None:
    """How many times faster a is than b: by throughput when both cover bytes (so rows over
    different byte counts compare fairly), else by median time. None if either has no data."""
    if not a.ok(mode) or not b.ok(mode):
        return None
    ta, tb = med(a.ok(mode), stat), med(b.ok(mode), stat)
    if a.nbytes and b.nbytes:
        return (a.nbytes / ta) / (b.nbytes / tb)
    return tb / ta


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------

def size_label(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n}B"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))
        mem_gib = int(mem.split()[1]) / (1 << 20)
    except (OSError, StopIteration):
        mem_gib = 0
    return (f"{cpu}, {os.cpu_count()} online CPUs, {mem_gib:.0f} GiB RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}, {gcc_version()}")


def tool_versions() -> str:
    out = []
    for cmd in (["xxhsum", "--version"], ["b3sum", "--version"], ["sha256sum", "--version"], ["dd", "--version"]):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True)
            text = (r.stdout or r.stderr).strip().splitlines()[0]
            out.append(text.split(" by ")[0])
        except (OSError, IndexError):
            out.append(f"{cmd[0]}: missing")
    try:
        import importlib.metadata as md
        out += [f"{p} {md.version(p)}" for p in ("safetensors", "torch", "xxhash")]
    except Exception:  # noqa: BLE001 -- versions are informational only
        pass
    return ", ".join(out)


def run(cfg: Config) -> Path:
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    log = (lambda msg: print(msg, file=sys.stderr, flush=True))
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    tools = Tools(build_tool(cfg.workdir, "readlimit"), build_tool(cfg.workdir, "spawn"), cfg.workdir)
    reader = tools.reader
    ss = shardscan_cmd()
    have_scan = probe([*ss, "scan"])
    have_check = probe([*ss, "check"])
    log(f"shardscan: {' '.join(ss)}; scan {have_scan or 'ok'}; check {have_check or 'ok'}")

    log(f"generating checkpoints under {cfg.workdir} ...")
    main_dir = cfg.workdir / f"llm-{size_label(cfg.size)}"
    man = make_checkpoint.make_llm(main_dir, cfg.size, cfg.shard_size, with_bin=True, quiet=cfg.smoke)
    size_dirs = {}
    for s in cfg.sizes:
        if s == cfg.size:
            size_dirs[s] = (main_dir, man)
        else:
            d = cfg.workdir / f"llm-{size_label(s)}-st"
            size_dirs[s] = (d, make_checkpoint.make_llm(d, s, cfg.shard_size, with_bin=False, quiet=cfg.smoke))
    many = {n: (cfg.workdir / "many" / f"n{n}.safetensors") for n in cfg.counts}
    many_man = {n: make_checkpoint.make_many(p, n) for n, p in many.items()}

    # 1. The main comparison, warm then cold.
    benches = main_benches(cfg, main_dir, man, reader, ss, have_scan, have_check)
    inputs = sorted(p for p in main_dir.rglob("*") if p.is_file())
    log("main comparison, warm ...")
    measure(benches, "warm", cfg.reps_warm, inputs, tools, log)
    if cfg.cold:
        log("main comparison, cold ...")
        measure(benches, "cold", cfg.reps_cold, inputs, tools, log)

    # 2. Start-up: `shardscan --help` must not import torch, numpy or pyarrow.
    help_b = Bench("shardscan --help", None if have_scan else [*ss, "--help"], 0, [], "shardscan",
                   modes=("warm",), note=have_scan)
    measure([help_b], "warm", cfg.reps_warm, [], tools, log)

    # 3. Thread scaling (warm): scan -j N against the mmap reader with N threads.
    st_files = [str(main_dir / n) for n in man["safetensors"]]
    st_paths = [Path(f) for f in st_files]
    thread_rows = []
    for n in cfg.threads:
        thread_rows.append((n,
            Bench(f"shardscan scan -j {n}", None if have_scan else [*ss, "scan", "--json", "-j", str(n), str(main_dir)],
                  man["safetensors_bytes"], st_paths, "shardscan", modes=("warm",), note=have_scan),
            Bench(f"mmap read, {n} threads", [str(reader), "mmap", str(n), *st_files],
                  man["safetensors_bytes"], st_paths, "limit", modes=("warm",))))
    log("thread scaling ...")
    measure([b for _, a, c in thread_rows for b in (a, c)], "warm", cfg.reps_warm, st_paths, tools, log)

    # 4. Size scaling: the same scan over 1, 2, 4 ... GiB; time and RSS should be linear / flat.
    size_rows = []
    for s in cfg.sizes:
        d, m = size_dirs[s]
        files = [d / n for n in m["safetensors"]]
        size_rows.append((s, m, Bench(f"scan {size_label(s)}", None if have_scan else [*ss, "scan", "--json", str(d)],
                                      m["safetensors_bytes"], files, "shardscan", note=have_scan),
                          Bench(f"mmap read {size_label(s)}", [str(reader), "mmap", str(min(2, os.cpu_count() or 1)),
                                *(str(d / n) for n in m["safetensors"])], m["safetensors_bytes"], files, "limit",
                                modes=("warm",))))
    log("size scaling ...")
    # All sizes in one alternation, like the main comparison, so that load from other work on
    # the machine spreads over every size instead of landing on whichever ran during it.
    size_benches = [x for _, _, b, lim in size_rows for x in (b, lim)]
    size_inputs = sorted({p for _, _, b, _ in size_rows for p in b.inputs})
    measure(size_benches, "warm", cfg.reps_warm, size_inputs, tools, log)
    if cfg.cold:
        measure([b for _, _, b, _ in size_rows], "cold", cfg.reps_cold, [], tools, log)

    # 5. Header-only cost against the number of tensors (one file of n tiny tensors).
    many_rows = []
    for n, p in many.items():
        row = [
            Bench("shardscan scan --no-hash", None if have_scan else [*ss, "scan", "--json", "--no-hash", str(p)],
                  0, [p], "shardscan", modes=("warm",), note=have_scan, header_only=True),
            Bench("shardscan check --no-hash", None if have_check else [*ss, "check", "--json", "--no-hash", str(p)],
                  0, [p], "shardscan", modes=("warm",), note=have_check, header_only=True),
            Bench("python: safe_open headers", [PY, str(HERE / "peers.py"), "st-headers", str(p)],
                  0, [p], "peer", modes=("warm",), header_only=True),
            Bench("python: json headers", [PY, str(HERE / "peers.py"), "json-headers", str(p)],
                  0, [p], "peer", modes=("warm",), header_only=True),
        ]
        many_rows.append((n, row))
    log("header-only scaling ...")
    measure([b for _, row in many_rows for b in row], "warm", cfg.reps_warm, list(many.values()), tools, log)

    # 6. A very large checkpoint (opt-in, --sparse): all-zero tensors in one sparse file, hashed
    # by scan and by the C mmap + XXH3 loop, alternated.
    sparse_rows = sparse_benches(cfg, reader, ss, have_scan)
    if sparse_rows:
        log("sparse checkpoint ...")
        measure(sparse_rows, "warm", cfg.reps_warm, sparse_rows[0].inputs, tools, log)

    log("verifying digests ...")
    checks = verify_digests(ss, have_scan, main_dir, man, cfg.workdir)
    checks += verify_sparse(cfg, ss, have_scan, sparse_rows)
    elapsed = time.perf_counter() - t_start
    load = (load_start, os.getloadavg())
    text = report(cfg, man, benches, help_b, thread_rows, size_rows, many_rows, many_man, ss, elapsed, checks,
                  load, sparse_rows)
    write_atomic(cfg.out, text)
    write_atomic(cfg.out.with_suffix(".json"), json.dumps(raw(benches, help_b, thread_rows, size_rows, many_rows,
                                                              sparse_rows), indent=1) + "\n")
    log(f"wrote {cfg.out} ({elapsed:.0f} s)")
    return cfg.out


def sparse_path(cfg: Config) -> Path:
    return cfg.workdir / "sparse" / f"zeros-{size_label(cfg.sparse)}.safetensors"


def sparse_benches(cfg: Config, reader: Path, ss: list[str], have_scan: str) -> list[Bench]:
    """scan of the sparse checkpoint and the C mmap + XXH3-128 loop over the same file; [] when
    --sparse was not given. The file is a header and a hole: every pass reads zero pages the
    kernel fills (more of them than RAM holds at 32 GiB), no disk."""
    if not cfg.sparse:
        return []
    path = sparse_path(cfg)
    nbytes = make_sparse.write_sparse(path, SPARSE_TENSORS, cfg.sparse // SPARSE_TENSORS)
    two = str(min(2, os.cpu_count() or 1))
    return [
        Bench("shardscan scan (sparse)", None if have_scan else [*ss, "scan", "--json", str(path)], nbytes, [path],
              "shardscan", modes=("warm",), note=have_scan),
        Bench(f"limit: mmap + XXH3-128, {two} threads (sparse)", [str(reader), "xxh3", two, str(path)], nbytes,
              [path], "limit", modes=("warm",)),
    ]


def on_terminal(argv: list[str]) -> tuple[int, bytes]:
    """Run argv with its stderr on a pseudo-terminal (stdout discarded); its exit code and all it
    wrote there."""
    import pty

    master, slave = pty.openpty()
    try:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave,
                             env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"})
    finally:
        os.close(slave)
    out = bytearray()
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # EIO: the child closed its side
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return p.wait(), bytes(out)


def verify_sparse(cfg: Config, ss: list[str], have_scan: str, rows: list[Bench]) -> list[str]:
    """The sparse generator's layout against safetensors itself (a small file, always), and with
    --sparse the big file's scan: every tensor's checksum against the xxhash package's XXH3-128
    of as many zeros, all_zero set, no NaN, and whether a progress bar showed on a terminal."""
    import csv

    import xxhash

    diff = make_sparse.same_as_safetensors(cfg.workdir)
    lines = [f"- sparse generator (8 tensors of 64 KiB) vs safetensors.torch.save_file and safe_open: "
             f"{diff or 'byte for byte the same file, every tensor read back as zeros'}"]
    if not rows:
        return lines
    what = f"shardscan scan (sparse, {SPARSE_TENSORS} tensors of {size_label(cfg.sparse // SPARSE_TENSORS)})"
    if have_scan:
        return lines + [f"- {what}: not compared ({have_scan})"]
    tensor_bytes = cfg.sparse // SPARSE_TENSORS
    zeros, h = memoryview(bytes(min(tensor_bytes, 64 << 20))), xxhash.xxh3_128()
    for start in range(0, tensor_bytes, len(zeros)):
        h.update(zeros[: min(len(zeros), tensor_bytes - start)])
    want = h.hexdigest()
    out = cfg.workdir / "verify-sparse.csv"
    # One pass gives both: the table for the checksums, and stderr on a terminal for the bar.
    rc, screen = on_terminal([*ss, "scan", "-o", str(out), str(sparse_path(cfg))])
    if rc != 0:
        return lines + [f"- {what}: not compared (exit {rc})"]
    with open(out, newline="") as f:
        table = list(csv.DictReader(f))
    out.unlink()
    same = sum(1 for r in table if r["checksum"] == want)
    zero = sum(1 for r in table if r["all_zero"].lower() == "true" and r["nan_count"] == "0")
    verdict = "all equal" if same == len(table) == SPARSE_TENSORS else "MISMATCH"
    lines.append(f"- {what} vs python xxhash.xxh3_128 of {tensor_bytes} zero bytes: {same}/{SPARSE_TENSORS} "
                 f"tensors equal ({verdict}); all_zero with no NaN: {zero}/{len(table)}")
    # The bar appears after about a second of hashing; a small --sparse file may finish first.
    shown = b"/s" in screen
    lines.append(f"- progress with stderr on a terminal (sparse scan): {'shown' if shown else 'not shown'}"
                 + ("" if shown else " (the bar waits 1 s; a scan shorter than that shows none)"))
    return lines


def verify_digests(ss: list[str], have_scan: str, ckpt: Path, man: dict, workdir: Path) -> list[str]:
    """Check that everyone hashed the same bytes: shardscan's checksums against the Python xxhash
    peers' (per key), safetensors against .bin. A benchmark of wrong answers is worthless."""
    import csv

    def peer(cmd: str, files: list[str]) -> dict[str, str] | None:
        r = subprocess.run([PY, str(HERE / "peers.py"), cmd, *files], capture_output=True, text=True)
        if r.returncode != 0:
            return None
        return {key: digest for _, key, digest in (l.split("\t") for l in r.stdout.splitlines())}

    def scan(files: list[str]) -> dict[str, str] | str:
        if have_scan:
            return have_scan
        out = workdir / "verify.csv"
        r = subprocess.run([*ss, "scan", "-o", str(out), *files], capture_output=True, text=True)
        if r.returncode != 0:
            return f"failed (exit {r.returncode}: {(r.stdout + r.stderr).strip().splitlines()[0][:100]})"
        with open(out, newline="") as f:
            table = {row["key"]: row["checksum"] for row in csv.DictReader(f)}
        out.unlink()
        return table

    st = [str(ckpt / n) for n in man["safetensors"]]
    bins = [str(ckpt / n) for n in man["bin"]]
    ref = peer("st-xxh", st)
    lines = []

    def compare(what: str, got, want) -> None:
        if isinstance(got, str) or got is None:
            lines.append(f"- {what}: not compared ({got or 'peer failed'})")
        elif want is None:
            lines.append(f"- {what}: not compared (reference peer failed)")
        else:
            same = sum(1 for k, v in want.items() if got.get(k) == v)
            verdict = "all equal" if same == len(want) == len(got) else "MISMATCH"
            lines.append(f"- {what}: {same}/{len(want)} tensors equal ({verdict})")

    compare("shardscan scan (safetensors) vs python safe_open + xxhash", scan(st), ref)
    compare("shardscan scan (.bin) vs python safe_open + xxhash", scan(bins), ref)
    compare("python torch.load + xxhash (.bin) vs python safe_open + xxhash", peer("torch-xxh", bins), ref)
    return lines


def raw(benches, help_b, thread_rows, size_rows, many_rows, sparse_rows) -> dict:
    """Every run's figures, for anyone who wants to recompute the table differently."""
    def dump(b: Bench, prefix: str = "") -> dict:
        return {"label": prefix + b.label, "argv": b.argv, "nbytes": b.nbytes,
                "runs": {m: [r.__dict__ for r in rs] for m, rs in b.runs.items()}, "note": b.note,
                "failure": b.failure}
    out = [dump(b) for b in benches] + [dump(help_b)]
    out += [dump(b, "threads: ") for _, a, c in thread_rows for b in (a, c)]
    out += [dump(b, "size: ") for _, _, b, lim in size_rows for b in (b, lim)]
    out += [dump(b, "sparse: ") for b in sparse_rows]
    out += [dump(b, f"tensors={n}: ") for n, row in many_rows for b in row]
    return {"benches": out}


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; these are ordinary repository files
    os.replace(tmp, path)


def report(cfg: Config, man, benches, help_b, thread_rows, size_rows, many_rows, many_man, ss, elapsed,
           checks: list[str], load, sparse_rows: list[Bench]) -> str:
    L: list[str] = []
    L.append(f"# shardscan benchmarks ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n")
    L.append(f"- Machine: {machine()}")
    L.append(f"- Load average (1/5/15 min) at start {'/'.join(f'{x:.1f}' for x in load[0])}, at end "
             f"{'/'.join(f'{x:.1f}' for x in load[1])} on {os.cpu_count()} CPUs (above the CPU count, other "
             "work shared the machine: absolute figures drop, ratios of alternated runs hold better)")
    L.append(f"- Tools: {tool_versions()}")
    L.append(f"- shardscan: `{' '.join(os.path.relpath(a) if os.path.isabs(a) else a for a in ss)}`")
    L.append(f"- Command: `{' '.join(shlex.quote(a) for a in [Path(PY).name, 'benches/run.py', *sys.argv[1:]])}`"
             f" ({elapsed / 60:.1f} min)")
    L.append(f"- Checkpoint: {man['tensors']} bf16 tensors in {len(man['safetensors'])} shards, "
             f"{man['safetensors_bytes'] / GB:.2f} GB safetensors + the same state dict as {len(man['bin'])} "
             f"torch.save .bin shards ({man['bin_bytes'] / GB:.2f} GB); random finite bf16 values")
    L.append(f"- Repetitions: {cfg.reps_warm} warm, {cfg.reps_cold} cold, commands alternated; "
             "each a separate process, timed spawn to exit; GB/s = 1e9 bytes/s")
    L.append("")
    L.append("Every figure below was measured in this one run; compare ratios, not absolute numbers "
             "across runs (shared machine). \"x limit\" = this row's GB/s / the limit's. \"shardscan faster "
             "by\" = shardscan scan's GB/s / this row's (header-only rows: this row's median time / shardscan's "
             "header-only command's); > 1 means shardscan wins. \"By its own clock\" = the elapsed time shardscan "
             "reports in --json, i.e. without interpreter start-up and imports.\n")

    L.append("## Targets\n")
    L.append("| target | bar | measured (medians) | fastest runs | |")
    L.append("|---|---|---|---|---|")
    # The verdict is on medians; the fastest-run column shows what the noise of a shared machine hides.
    for t, b in zip(targets(cfg, benches, help_b, size_rows, sparse_rows),
                    targets(cfg, benches, help_b, size_rows, sparse_rows, min)):
        t.best = b.value
        L.append(t.row())
    L.append("")

    L.append("## Same answers (checked once, untimed)\n")
    L += checks
    L.append("")

    L.append("## Warm (page cache)\n")
    L += main_table(benches, "warm", cfg.reps_warm)
    L.append("")
    if cfg.cold:
        L.append("## Cold (evicted with posix_fadvise(DONTNEED) before each run, checked with mincore)\n")
        L += main_table(benches, "cold", cfg.reps_cold)
        L.append("")

    L.append("## Start-up\n")
    L.append("| command | time s, median (min-max) | peak RSS |")
    L.append("|---|---:|---:|")
    st = status(help_b, "warm")
    L.append(f"| shardscan --help | {st} | |" if st else
             f"| shardscan --help | {fmt_time(help_b.ok('warm'))} | {peak_rss(help_b.ok('warm'))} |")
    L.append("")

    L.append("## Thread scaling (warm)\n")
    L.append("| threads | shardscan scan -j N, GB/s | same, by its own clock | mmap read, GB/s | scan / read "
             "| scan peak RSS |")
    L.append("|---:|---:|---:|---:|---:|---:|")
    for n, a, c in thread_rows:
        sa, sc = status(a, "warm"), status(c, "warm")
        r = ratio(a, c, "warm")
        L.append(f"| {n} | {sa or fmt_rate(a, 'warm')} | {fmt_inner(a, 'warm')} | {sc or fmt_rate(c, 'warm')} | "
                 f"{'' if r is None else f'{r:.2f}'} | {peak_rss(a.ok('warm'))} |")
    L.append("")

    L.append("## Size scaling (scan with hashing)\n")
    # A fixed start-up cost makes whole-process s/GB fall with size even when the byte work is
    # linear; the marginal s/GB between consecutive sizes (and the own-clock s/GB) show the slope.
    L.append("| size | tensors | warm GB/s | warm x mmap limit | cold GB/s | warm s/GB | warm marginal s/GB "
             "| warm s/GB by its own clock | peak RSS |")
    L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    prev = None
    for s, m, b, lim in size_rows:
        st = status(b, "warm")
        if st:
            L.append(f"| {size_label(s)} ({m['safetensors_bytes'] / GB:.2f} GB) | {m['tensors']} | {st} | | | | | | |")
            continue
        r = ratio(b, lim, "warm")
        t = med(b.ok("warm"))
        marginal = "" if prev is None else f"{(t - prev[1]) / ((b.nbytes - prev[0]) / GB):.3f}"
        prev = (b.nbytes, t)
        inner = [x.inner_seconds for x in b.ok("warm") if x.inner_seconds]
        own = f"{statistics.median(inner) / (b.nbytes / GB):.3f}" if inner else ""
        rss = b.ok("warm") + b.ok("cold")
        L.append(f"| {size_label(s)} ({m['safetensors_bytes'] / GB:.2f} GB) | {m['tensors']} | {fmt_rate(b, 'warm')} | "
                 f"{'' if r is None else f'{r:.2f}'} | {fmt_rate(b, 'cold') or status(b, 'cold') or ''} | "
                 f"{t / (b.nbytes / GB):.3f} | {marginal} | {own} | {peak_rss(rss)} |")
    L.append("")

    L += sparse_section(cfg, sparse_rows)
    L.append("## Header-only cost against the number of tensors (warm)\n")
    L.append("Whole process, ms, median (min-max); for shardscan also its own clock (start-up excluded).\n")
    row0 = many_rows[0][1] if many_rows else []
    labels = [b.label for b in row0]
    # Columns: every command's whole-process time, then shardscan's own clock where it reports one.
    own_cols = [i for i, b in enumerate(row0) if b.kind == "shardscan"]
    heads = [f"{l}, ms" for l in labels] + [f"{labels[i]}, own clock ms" for i in own_cols]
    L.append("| tensors | file MB | " + " | ".join(heads) + " |")
    L.append("|---:|---:|" + "---:|" * len(heads))

    def own_s(b: Bench) -> float | None:
        inner = [r.inner_seconds for r in b.ok("warm") if r.inner_seconds]
        return statistics.median(inner) if inner else None

    for n, row in many_rows:
        cells = []
        for b in row:
            st = status(b, "warm")
            ts = [r.seconds * 1e3 for r in b.ok("warm")]
            cells.append(st if st else f"{statistics.median(ts):.0f} ({min(ts):.0f}-{max(ts):.0f})")
        for i in own_cols:
            o = own_s(row[i])
            cells.append("" if o is None else f"{o * 1e3:.1f}")
        L.append(f"| {n} | {many_man[n]['bytes'] / 1e6:.1f} | " + " | ".join(cells) + " |")
    # Marginal cost per tensor between consecutive counts: constant when the cost is linear.
    if len(many_rows) > 1:
        L.append("")
        L.append("Marginal cost per tensor between consecutive counts (constant = linear):\n")
        L.append("| from -> to | " + " | ".join(h.replace(", ms", ", us/tensor").replace(" ms", " us/tensor")
                                              for h in heads) + " |")
        L.append("|---|" + "---:|" * len(heads))
        for (n0, r0), (n1, r1) in zip(many_rows, many_rows[1:]):
            cells = []
            pairs = [(med(b0.ok("warm")) if b0.ok("warm") else None, med(b1.ok("warm")) if b1.ok("warm") else None)
                     for b0, b1 in zip(r0, r1)]
            pairs += [(own_s(r0[i]), own_s(r1[i])) for i in own_cols]
            for t0, t1 in pairs:
                cells.append("" if t0 is None or t1 is None else f"{(t1 - t0) / (n1 - n0) * 1e6:.2f}")
            L.append(f"| {n0} -> {n1} | " + " | ".join(cells) + " |")
    L.append("")
    return "\n".join(L)


def sparse_section(cfg: Config, rows: list[Bench]) -> list[str]:
    """The sparse checkpoint's table, or how to run it."""
    L = ["## Very large checkpoint (sparse, all-zero tensors)\n"]
    if not rows:
        return L + ["Not run: `--sparse 32GiB` adds it (8 tensors of 4 GiB in one sparse file, 64-bit offsets; "
                    "see benches/README.md).\n"]
    L.append(f"One safetensors file of {SPARSE_TENSORS} BF16 tensors of {size_label(cfg.sparse // SPARSE_TENSORS)} "
             f"({rows[0].nbytes / GB:.2f} GB, a hole after the header), commands alternated.\n")
    L.append("| command | time s, median (min-max) | GB/s, median (min-max) | x mmap + XXH3 limit | "
             "GB/s by its own clock | peak RSS | inputs cached at start |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    lim = rows[-1]
    for b in rows:
        st = status(b, "warm")
        if st:
            L.append(f"| {b.label} | {st} | | | | | |")
            continue
        r = ratio(b, lim, "warm")
        L.append(f"| {b.label} | {fmt_time(b.ok('warm'), cfg.reps_warm)} | {fmt_rate(b, 'warm')} | "
                 f"{'' if r is None else f'{r:.2f}'} | {fmt_inner(b, 'warm')} | {peak_rss(b.ok('warm'))} | "
                 f"{fmt_cached(b.ok('warm'), 'warm')} |")
    L.append("")
    return L


def hashing_time(scan: Bench, no_hash: Bench, stat=statistics.median) -> float | None:
    """Seconds scan spends hashing: the whole scan process minus the whole scan --no-hash process
    (same start-up, same headers), both timed by the spawner's external clock."""
    if not scan.ok("warm") or not no_hash.ok("warm"):
        return None
    t = med(scan.ok("warm"), stat) - med(no_hash.ok("warm"), stat)
    return t if t > 0 else None


def hashing_targets(by: dict[str, Bench], why: str, stat) -> list[Target]:
    """Hashing time against the C mmap + XXH3-128 loop and, per thread, against xxhsum; and what
    the value checks add to the hashing pass."""
    scan, nh = by["shardscan scan (XXH3-128)"], by["shardscan scan --no-hash"]
    lim = next(b for b in by.values() if b.label.startswith("limit: mmap + XXH3-128"))
    threads = min(2, os.cpu_count() or 1)
    t_hash = hashing_time(scan, nh, stat)
    vs_c = vs_xxhsum = None
    if t_hash is not None and lim.ok("warm"):
        vs_c = med(lim.ok("warm"), stat) / t_hash
    xxhsum = by["xxhsum -H2"]
    if t_hash is not None and xxhsum.ok("warm"):
        vs_xxhsum = (scan.nbytes / t_hash / threads) / (xxhsum.nbytes / med(xxhsum.ok("warm"), stat))
    out = [Target(f"hashing time (scan minus scan --no-hash, whole processes) vs C mmap + XXH3-128, {threads} threads",
                  vs_c, 0.9, True, why_missing=why),
           Target(f"hashing rate per thread (the same / {threads}) vs xxhsum -H2 (1 thread)", vs_xxhsum, 1.0, True,
                  why_missing=why)]
    counted, plain = (by["shardscan engine: hashing + NaN/Inf counts (as scan)"],
                      by["shardscan engine: hashing alone (no value counts)"])
    own = [[r.inner_seconds for r in b.ok("warm") if r.inner_seconds] for b in (counted, plain)]
    cost = stat(own[0]) / stat(own[1]) if all(own) else None
    out.append(Target("value checks: engine's hashing pass with NaN/Inf counts / without (its own clock)", cost, 1.1,
                      False, why_missing=counted.note or counted.failure.get("warm", "") or "no successful run"))
    return out


def sparse_targets(cfg: Config, rows: list[Bench], stat) -> list[Target]:
    what = f"{size_label(cfg.sparse) if cfg.sparse else '32GiB'} sparse checkpoint"
    if not rows:
        why = "opt-in, run with --sparse 32GiB"
        return [Target(f"{what}: scan vs C mmap + XXH3-128", None, 0.8, True, why_missing=why),
                Target(f"{what}: scan peak RSS", None, 256, False, " MiB", why)]
    scan, lim = rows
    why = scan.note or scan.failure.get("warm", "") or "no successful run"
    rss = [r.maxrss_kib / 1024 for r in scan.ok("warm")]
    return [Target(f"{what}: scan vs C mmap + XXH3-128, {min(2, os.cpu_count() or 1)} threads",
                   ratio(scan, lim, "warm", stat), 0.8, True, why_missing=why),
            Target(f"{what}: scan peak RSS", max(rss) if rss else None, 256, False, " MiB", why)]


def targets(cfg: Config, benches: list[Bench], help_b: Bench, size_rows, sparse_rows: list[Bench],
            stat=statistics.median) -> list[Target]:
    """The speed targets, each judged on medians; stat=min gives the fastest-run view of the same."""
    by = {b.label: b for b in benches}
    scan = by["shardscan scan (XXH3-128)"]
    why = scan.note or scan.failure.get("warm", "") or "no successful run"
    mmap_lim = next(b for b in benches if b.label.startswith("limit: mmap"))
    dd = by["limit: dd iflag=direct bs=16M"]
    peers = [b for b in benches if b.kind == "peer" and not b.header_only]
    out = [Target("warm scan vs 2-thread mmap read", ratio(scan, mmap_lim, "warm", stat), 0.9, True, why_missing=why)]
    # The same with scan's start-up (interpreter, imports) taken out: its own --json elapsed.
    inner = [r.inner_seconds for r in scan.ok("warm") if r.inner_seconds]
    own = None
    if inner and mmap_lim.ok("warm"):
        own = (scan.nbytes / stat(inner)) / (mmap_lim.nbytes / med(mmap_lim.ok("warm"), stat))
    out.append(Target("warm scan by its own clock vs 2-thread mmap read", own, 0.9, True,
                      why_missing=why if scan.note else "scan --json reports no elapsed"))
    vs = [(ratio(scan, p, "warm", stat), p.label) for p in peers]
    vs = [(r, l) for r, l in vs if r is not None]
    worst = min(vs) if vs else (None, "")
    out.append(Target(f"warm scan vs fastest peer ({worst[1]})", worst[0], 1.0, True, why_missing=why))
    out += hashing_targets(by, why, stat)
    if cfg.cold:
        out.append(Target("cold scan vs dd O_DIRECT", ratio(scan, dd, "cold", stat), 0.9, True, why_missing=why))
        pread = next(b for b in benches if b.label.startswith("limit: pread"))
        out.append(Target("cold scan vs 2-thread pread", ratio(scan, pread, "cold", stat), 0.95, True, why_missing=why))
        out.append(Target("cold scan vs xxhsum -H2 (cold)", ratio(scan, by["xxhsum -H2"], "cold", stat), 1.0, True,
                          why_missing=why))
    rss = [r.maxrss_kib / 1024 for b in [scan, *(b for _, _, b, _ in size_rows)]
           for m in ("warm", "cold") for r in b.ok(m)]
    out.append(Target("scan peak RSS, any size", max(rss) if rss else None, 256, False, " MiB", why))
    sized = [(m["safetensors_bytes"], max(r.maxrss_kib for r in b.ok("warm") + b.ok("cold")) / 1024)
             for _, m, b, _ in size_rows if b.ok("warm")]
    if len(sized) > 1:
        (s0, r0), (s1, r1) = sized[0], sized[-1]
        # Flat means the largest checkpoint needs no more memory than the smallest. 16 MiB of slack
        # covers allocator and thread-stack noise; mapping the data would add gigabytes.
        out.append(Target(f"scan RSS growth {s0 / GB:.1f} -> {s1 / GB:.1f} GB", r1 - r0, 16, False, " MiB"))
    else:
        out.append(Target("scan RSS growth with size", None, 16, False, " MiB",
                          why_missing="needs 2+ sizes and scan"))
    chk = by["shardscan check --no-hash"]
    t = med(chk.ok("warm"), stat) if chk.ok("warm") else None
    out.append(Target(f"check --no-hash, whole process ({by['shardscan scan (XXH3-128)'].nbytes / GB:.1f} GB)",
                      t, 0.3, False, " s", chk.note or chk.failure.get("warm", "")))
    if cfg.cold:
        t = med(chk.ok("cold"), stat) if chk.ok("cold") else None
        out.append(Target("check --no-hash, whole process, cold", t, 0.3, False, " s",
                          chk.note or chk.failure.get("cold", "")))
    b = by["shardscan scan .bin (XXH3-128)"]
    for mode in ("warm", "cold") if cfg.cold else ("warm",):
        out.append(Target(f".bin scan GB/s / safetensors scan GB/s ({mode})", ratio(b, scan, mode, stat), 0.9, True,
                          why_missing=b.note or b.failure.get(mode, "")))
    nh = by["shardscan scan --no-hash"]
    out.append(Target("scan --no-hash vs safe_open headers", ratio(nh, by["python: safe_open headers only"], "warm", stat),
                      1.0, True, why_missing=nh.note or nh.failure.get("warm", "")))
    nb = by["shardscan scan --no-hash .bin"]
    out.append(Target(".bin scan --no-hash vs torch.load(mmap) headers",
                      ratio(nb, by["python: torch.load(mmap) headers only (.bin)"], "warm", stat),
                      1.0, True, why_missing=nb.note or nb.failure.get("warm", "")))
    sha, ossl = by["shardscan check --sha256 --no-hash (SHA-256 only)"], by["openssl dgst -sha256, 2 files at a time"]
    out.append(Target("warm check --sha256 --no-hash vs openssl dgst -sha256, 2 at a time", ratio(sha, ossl, "warm", stat),
                      0.9, True, why_missing=sha.note or sha.failure.get("warm", "")))
    out.append(Target("shardscan --help", med(help_b.ok("warm"), stat) if help_b.ok("warm") else None, 0.3, False, " s",
                      help_b.note or help_b.failure.get("warm", "")))
    return out + sparse_targets(cfg, sparse_rows, stat)


README_BEGIN = "<!-- latest:begin (written by benches/run.py --readme) -->"
README_END = "<!-- latest:end -->"


def embed_in_readme(table: Path, readme: Path) -> None:
    """Replace the README's results section with the new table, headings one level down."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise SystemExit(f"{readme}: markers {README_BEGIN!r} / {README_END!r} not found")
    body = "\n".join("#" + line if line.startswith("#") else line for line in table.read_text().splitlines())
    head, rest = text.split(README_BEGIN, 1)
    write_atomic(readme, f"{head}{README_BEGIN}\n{body}\n{README_END}{rest.split(README_END, 1)[1]}")


def parse_sizes(text: str) -> list[int]:
    return [make_checkpoint.parse_size(s) for s in text.split(",") if s.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/shardscan-bench"),
                    help="where checkpoints are generated (kept between runs; never inside the repo)")
    ap.add_argument("--size", type=make_checkpoint.parse_size, default=4 << 30,
                    help="main checkpoint size (default 4GiB)")
    ap.add_argument("--shard-size", type=make_checkpoint.parse_size, default=1 << 30)
    ap.add_argument("--sizes", type=parse_sizes, default=None,
                    help="size scaling, comma-separated (default 1GiB,2GiB,4GiB; 8GiB adds ~3 min)")
    ap.add_argument("--counts", default="1000,10000,100000", help="tensor counts for header-only scaling")
    ap.add_argument("--reps", type=int, default=5, help="warm repetitions (default 5)")
    ap.add_argument("--cold-reps", type=int, default=3, help="cold repetitions (default 3)")
    ap.add_argument("--no-cold", action="store_true", help="skip cold runs")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "latest.md")
    ap.add_argument("--smoke", action="store_true",
                    help="a few MB, one repetition: keeps the script from rotting (run by the test suite)")
    ap.add_argument("--sparse", type=make_checkpoint.parse_size, default=0, metavar="SIZE",
                    help="also scan one sparse safetensors file of 8 all-zero tensors of SIZE/8 (e.g. 32GiB: each "
                         "pass reads SIZE of zero pages the kernel fills; adds ~2 min at 32GiB)")
    ap.add_argument("--clean", action="store_true", help="delete the workdir's checkpoints afterwards")
    ap.add_argument("--readme", action="store_true",
                    help="also copy the table into benches/README.md (between its 'latest' markers)")
    a = ap.parse_args(argv)
    if a.smoke:
        size, shard, sizes, counts, reps, cold_reps = 4 << 20, 1 << 20, [2 << 20, 4 << 20], [100, 1000], 1, 1
        sparse = 8 << 20  # the same rows and checks as --sparse 32GiB, on 8 tensors of 1 MiB
    else:
        size, shard, counts, reps, cold_reps = a.size, a.shard_size, a.counts, a.reps, a.cold_reps
        sizes = a.sizes or sorted({1 << 30, 2 << 30, 4 << 30} | {size})
        counts = [int(c) for c in str(counts).split(",") if c.strip()]
        sparse = a.sparse
    if sparse % (SPARSE_TENSORS * 2048):
        ap.error(f"--sparse must be a multiple of {SPARSE_TENSORS} x 2 KiB")
    repo = HERE.parent.resolve()
    if a.workdir.resolve().is_relative_to(repo):
        ap.error("--workdir must be outside the repository (generated checkpoints are gigabytes)")
    cores = os.cpu_count() or 1
    cfg = Config(workdir=a.workdir, size=size, shard_size=shard, sizes=sizes, counts=counts,
                 reps_warm=reps, reps_cold=cold_reps, threads=list(range(1, cores + 1)), cold=not a.no_cold,
                 out=a.out, smoke=a.smoke, sparse=sparse)
    try:
        out = run(cfg)
        if a.readme:
            embed_in_readme(out, HERE / "README.md")
    finally:
        if a.clean:
            shutil.rmtree(a.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
