"""Files that change while shardscan reads them: a real second process truncates, replaces
or deletes the file while the hashing workers are inside it.

The trigger is the scan's own progress callback: it runs on the calling thread while the C
workers hash on others, and it fires only once some bytes are hashed and others are not, so
the change lands mid-tensor every time (no sleeps, no flaky timing)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import xxhash

import shardscan
from shardscan.scanner import scan_paths

SIZE = 1 << 30  # one 1 GiB tensor, sparse: no disk, and long enough to be caught mid-way


def zero_digest(n: int) -> str:
    h = xxhash.xxh3_128()
    chunk = bytes(64 << 20)
    while n:
        take = min(n, len(chunk))
        h.update(chunk if take == len(chunk) else chunk[:take])
        n -= take
    return h.hexdigest()


def sparse_checkpoint(path: Path, fill: bytes = b"") -> int:
    """One U8 tensor of SIZE zero bytes (or `fill` repeated at its start); returns the data start."""
    header = json.dumps({"w": {"dtype": "U8", "shape": [SIZE], "data_offsets": [0, SIZE]}}).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + SIZE)
        if fill:
            f.write(fill)
    return 8 + len(header)


def scan_while(path: Path, change) -> tuple[shardscan.ScanResult, bool]:
    """Scans `path` on one thread and runs `change()` the first time the progress callback
    sees the tensor partly hashed. Returns the result and whether the change ran mid-way."""
    fired = []

    def progress(done: int, total: int) -> None:
        if not fired and 0 < done < total:
            change()
            fired.append(done)

    return scan_paths([path], threads=1, progress=progress), bool(fired)


def other_process(*argv: str) -> None:
    subprocess.run(argv, check=True)


def test_truncated_by_another_process_mid_hash(tmp_path):
    path = tmp_path / "big.safetensors"
    sparse_checkpoint(path)
    result, fired = scan_while(path, lambda: other_process("truncate", "-s", "1M", str(path)))
    if not fired:
        pytest.skip("the scan finished before the first progress report")
    # An error for that file (no SIGBUS: we are still here), and no checksum presented as good.
    assert [p.file for p in result.problems] == [str(path)]
    assert "shrank" in result.problems[0].error
    assert result.table.column("checksum").to_pylist() == [None]


def test_cli_truncated_mid_hash_exit_code(tmp_path):
    # The same through the real command, the writer another process started alongside: the
    # writer truncates once the CLI has mapped the file (its size is on the way down).
    path = tmp_path / "big.safetensors"
    sparse_checkpoint(path)
    code = (
        "import os, subprocess, sys\n"
        "target = sys.argv[1]\n"
        "from shardscan import scanner\n"
        "real = scanner.hash_jobs\n"
        "def cut(files, jobs, threads=None, progress=None):\n"
        "    subprocess.run(['truncate', '-s', '1M', target], check=True)\n"
        "    return real(files, jobs, threads, progress)\n"
        "scanner.hash_jobs = cut\n"
        "sys.argv = ['shardscan', 'scan', target]\n"
        "from shardscan.cli import main\n"
        "main()\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    assert run.stdout.count("FAILED") == 1 and "shrank" in run.stdout
    assert "Traceback" not in run.stdout + run.stderr


def test_replaced_by_rename_mid_hash_reads_the_old_file_consistently(tmp_path):
    # The mapping holds the old inode: the scan must finish on the old bytes, all of them.
    path = tmp_path / "big.safetensors"
    sparse_checkpoint(path)
    newer = tmp_path / "newer.safetensors"
    sparse_checkpoint(newer, fill=b"\xff" * 4096)
    result, fired = scan_while(path, lambda: other_process("mv", str(newer), str(path)))
    if not fired:
        pytest.skip("the scan finished before the first progress report")
    assert result.ok
    assert result.table.column("checksum").to_pylist() == [zero_digest(SIZE)]


def test_deleted_mid_hash_still_reads_what_was_opened(tmp_path):
    path = tmp_path / "big.safetensors"
    sparse_checkpoint(path)
    result, fired = scan_while(path, lambda: other_process("rm", str(path)))
    if not fired:
        pytest.skip("the scan finished before the first progress report")
    assert not path.exists()
    assert result.ok
    assert result.table.column("checksum").to_pylist() == [zero_digest(SIZE)]


def test_grown_after_open_is_trailing_bytes_or_consistent(tmp_path):
    # A writer appending after shardscan measured the file: the mapping covers the measured
    # size, so the scan is consistent with what it measured (here: a complete file).
    path = tmp_path / "small.safetensors"
    header = json.dumps({"w": {"dtype": "U8", "shape": [4096], "data_offsets": [0, 4096]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(4096))
    from shardscan._core import HashJob, NativeFile, hash_jobs, parse_safetensors

    with NativeFile(path) as f:
        h = parse_safetensors(f)
        with open(path, "ab") as w:
            w.write(b"\x01" * 100_000)
        (res,) = hash_jobs([f], [HashJob(0, h.offsets[0], h.nbytes[0])])
    assert res.checksum == xxhash.xxh3_128_hexdigest(bytes(4096))
    # A fresh scan sees the appended bytes as what they are.
    (problem,) = scan_paths([path]).problems
    assert "trailing bytes" in problem.error
