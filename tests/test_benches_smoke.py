"""Keep benches/run.py from rotting: its smallest configuration (a few MB) must run to the end and
produce a table with every row. Speed is not asserted here (see benches/README.md for why)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCHES = Path(__file__).resolve().parent.parent / "benches"


def test_smallest_bench_configuration_completes_with_every_row(tmp_path: Path) -> None:
    out = tmp_path / "latest.md"
    r = subprocess.run(
        [sys.executable, str(BENCHES / "run.py"), "--smoke", "--workdir", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    table = out.read_text()
    assert (tmp_path / "latest.json").exists()

    cores = os.cpu_count() or 1
    two = min(2, cores)
    # Rows present in both the warm and the cold table (a row whose command does not exist yet
    # still appears, saying so).
    both = [
        "shardscan scan (XXH3-128)", "shardscan scan --no-hash", "shardscan check --no-hash",
        "shardscan scan .bin (XXH3-128)", "shardscan scan --no-hash .bin", f"limit: mmap read, {two} threads", f"limit: pread read, {two} threads",
        "xxhsum -H2", "b3sum", "sha256sum (first shard", "python: safe_open + xxh3_128 per tensor",
        "python: torch.load(mmap) + xxh3_128 (.bin)", "python: torch.load(mmap) headers only (.bin)",
        "python: safe_open headers only", "python: json headers only",
        "shardscan check --sha256 --no-hash (SHA-256 only)", "openssl dgst -sha256, 2 files at a time",
    ]
    warm = table.split("## Warm")[1].split("## Cold")[0]
    cold = table.split("## Cold")[1].split("## Start-up")[0]
    for label in both:
        assert f"| {label}" in warm, label
        assert f"| {label}" in cold, label
    assert "| limit: dd iflag=direct bs=16M |" in cold
    for label in (f"limit: mmap + XXH3-128, {two} threads", "shardscan engine: hashing + NaN/Inf counts (as scan)",
                  "shardscan engine: hashing alone (no value counts)"):  # warm only
        assert f"| {label} |" in warm, label

    for heading in ("## Targets", "## Same answers", "## Start-up", "## Thread scaling", "## Size scaling",
                    "## Header-only cost"):
        assert heading in table, heading
    for target in ("warm scan vs 2-thread mmap read", "cold scan vs dd O_DIRECT", "scan peak RSS",
                   "check --no-hash, whole process", ".bin scan GB/s", "scan --no-hash vs safe_open headers",
                   ".bin scan --no-hash vs torch.load(mmap) headers",
                   "warm check --sha256 --no-hash vs openssl dgst -sha256", "shardscan --help",
                   "hashing time (scan minus scan --no-hash, whole processes) vs C mmap + XXH3-128",
                   "hashing rate per thread", "value checks:", "8MiB sparse checkpoint: scan vs C mmap + XXH3-128",
                   "8MiB sparse checkpoint: scan peak RSS"):
        assert f"| {target}" in table, target
    targets = table.split("## Targets")[1].split("## Same answers")[0]
    assert "not measured" not in targets.split("| 8MiB sparse")[1]  # --smoke runs the sparse rows
    # The untimed checks: the sparse generator against safetensors itself, every zero tensor's
    # checksum against xxhash's.
    answers = table.split("## Same answers")[1].split("## Warm")[0]
    assert "byte for byte the same file" in answers
    assert "8/8 tensors equal (all equal); all_zero with no NaN: 8/8" in answers
    sparse = table.split("## Very large checkpoint")[1].split("## Header-only")[0]
    assert "| shardscan scan (sparse) |" in sparse and "not run" not in sparse and "failed" not in sparse
    assert f"| limit: mmap + XXH3-128, {two} threads (sparse) |" in sparse
    threads = table.split("## Thread scaling")[1].split("## Size scaling")[0]
    for n in range(1, cores + 1):
        assert f"\n| {n} |" in threads, n
    sizes = table.split("## Size scaling")[1].split("## Header-only")[0]
    for size in ("2MiB", "4MiB"):  # what --smoke scans
        assert f"\n| {size} (" in sizes, size
    header = table.split("## Header-only cost")[1]
    for count in (100, 1000):
        assert f"\n| {count} |" in header, count
    assert "| 100 -> 1000 |" in header
