"""Inputs that are not regular files, and files that claim absurd sizes: every one ends in
bounded time with a clear one-line error and the documented exit code (0 clean, 1 problems
found, 2 usage error or a path that does not exist), never a hang or a traceback."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shardscan.scanner import scan_paths


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    # A hang shows up as subprocess.TimeoutExpired, i.e. a failure, not a stuck suite.
    return subprocess.run([sys.executable, "-m", "shardscan", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def assert_one_failed_line(run: subprocess.CompletedProcess, name: str, fragment: str) -> None:
    assert run.returncode == 1, run.stdout + run.stderr
    failed = [line for line in run.stdout.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and failed[0].startswith(f"{name}: FAILED") and fragment in failed[0], run.stdout
    assert "Traceback" not in run.stdout + run.stderr


def st_file(path: Path, header: dict | bytes, data: bytes = b"", length: int | None = None) -> Path:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


def test_fifo_never_blocks(tmp_path):
    # No writer ever opens the FIFO: a blocking open() or read() would hang here forever.
    fifo = tmp_path / "x.safetensors"
    os.mkfifo(fifo)
    started = time.monotonic()
    (problem,) = scan_paths([fifo]).problems
    assert "not a regular file" in problem.error
    assert time.monotonic() - started < 5
    assert_one_failed_line(cli("scan", str(fifo)), str(fifo), "not a regular file")


def test_fifo_inside_a_checkpoint_directory(tmp_path):
    os.mkfifo(tmp_path / "model-00001-of-00002.safetensors")
    st_file(tmp_path / "model-00002-of-00002.safetensors", {})
    assert_one_failed_line(cli("scan", str(tmp_path)), "model-00001-of-00002.safetensors", "not a regular file")


def test_dev_zero_is_refused_not_read_forever():
    (problem,) = scan_paths(["/dev/zero"]).problems
    assert "not a regular file" in problem.error
    assert_one_failed_line(cli("scan", "/dev/zero"), "/dev/zero", "not a regular file")


def test_directory_named_like_a_shard_is_not_a_shard(tmp_path):
    # Inside a checkpoint folder, "x.safetensors/" is a folder, not a tensor file: skipped.
    (tmp_path / "x.safetensors").mkdir()
    st_file(tmp_path / "real.safetensors", {})
    result = scan_paths([tmp_path])
    assert result.ok and result.files == ("real.safetensors",)
    run = cli("scan", str(tmp_path))
    assert run.returncode == 0 and "Traceback" not in run.stderr


def test_missing_path_is_a_usage_error(tmp_path):
    run = cli("scan", str(tmp_path / "nope.safetensors"))
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "nope.safetensors" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("length", [100_000_001, 2**63, 2**64 - 1])
def test_huge_claimed_header_length_is_not_allocated(tmp_path, length):
    path = st_file(tmp_path / "h.safetensors", b"{}", length=length)
    assert_one_failed_line(cli("scan", str(path)), str(path), "exceeds the 100000000-byte limit")


def test_largest_allowed_header_parses_in_bounded_time(tmp_path):
    # 100,000,000 bytes of header (mostly whitespace inside the object): the limit itself
    # must be fine, and fast.
    body = b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}'
    header = body + b" " * (100_000_000 - len(body) - 1) + b"}"
    path = st_file(tmp_path / "big-header.safetensors", header, data=b"\x07")
    started = time.monotonic()
    result = scan_paths([path])
    assert result.ok and result.table.num_rows == 1
    assert time.monotonic() - started < 20


def test_billions_of_claimed_elements_in_a_tiny_file(tmp_path):
    # 10^18 bytes claimed, 16 present: truncated, said at once, nothing allocated or read.
    n = 10**9
    path = st_file(tmp_path / "claims.safetensors",
                   {"a": {"dtype": "U8", "shape": [n, n], "data_offsets": [0, n * n]}}, data=bytes(16))
    started = time.monotonic()
    run = cli("scan", str(path))
    assert_one_failed_line(run, str(path), "truncated")
    assert time.monotonic() - started < 30


def test_hundreds_of_thousands_of_tensors_bounded(tmp_path):
    # 200,000 empty tensors in one header: linear-time parse and no quadratic duplicate check.
    header = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(200_000)}
    path = st_file(tmp_path / "many.safetensors", header)
    started = time.monotonic()
    result = scan_paths([path])
    assert result.ok and result.table.num_rows == 200_000
    assert time.monotonic() - started < 30


def test_json_output_on_a_bad_file_is_one_object(tmp_path):
    path = st_file(tmp_path / "bad.safetensors", b"{", length=1)
    run = cli("scan", "--json", str(path))
    assert run.returncode == 1
    payload = json.loads(run.stdout)  # exactly one JSON document on stdout
    assert payload["ok"] is False and payload["errors"][0]["file"] == str(path)


def _zip64_claiming(entries: int, cd_size: int) -> bytes:
    """An archive that is nothing but end records claiming `entries` entries in a central
    directory of `cd_size` bytes: what a hostile file says before anything backs it."""
    eocd64 = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, entries, entries, cd_size, 0)
    head = b"PK\x03\x04" + b"\0" * 26
    locator = struct.pack("<IIQI", 0x07064B50, 0, len(head), 1)
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return head + eocd64 + locator + eocd


@pytest.mark.parametrize("entries", [5_000_000, 2**63])
def test_millions_of_claimed_zip_entries_are_refused_without_allocating(tmp_path, entries):
    path = tmp_path / "many.bin"
    path.write_bytes(_zip64_claiming(entries, 46 * min(entries, 2**40)))
    started = time.monotonic()
    (problem,) = scan_paths(path).problems
    assert time.monotonic() - started < 5
    assert "entries" in problem.error or "directory" in problem.error, problem.error


def test_zip_bomb_is_refused_without_inflating(tmp_path):
    # 1 GiB of zeros deflates to ~1 MB; torch never compresses records, so neither do we
    # decompress: the record is refused by its compression method, whatever it would inflate to.
    import zipfile

    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.", compress_type=zipfile.ZIP_STORED)
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as record:
            zeros = bytes(1 << 20)
            for _ in range(1024):
                record.write(zeros)
    assert path.stat().st_size < 16 << 20
    started = time.monotonic()
    run = cli("scan", str(path))
    assert time.monotonic() - started < 30
    assert_one_failed_line(run, str(path), "compressed")
