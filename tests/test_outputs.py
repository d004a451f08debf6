"""`scan -o`: the output appears whole or not at all. An existing output is replaced only by
a complete new one; a failed write (read-only directory, full disk) leaves it as it was, no
temporary file behind, and says so in one line."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

import shardscan
from shardscan import output

OLD = b"old output, must survive a failed write\n"


@pytest.fixture
def shard(tmp_path) -> Path:
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3)}, path)
    return path


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("suffix", [".parquet", ".arrow", ".csv"])
def test_replaces_existing_output_with_complete_one(shard, tmp_path, suffix):
    out = tmp_path / f"table{suffix}"
    out.write_bytes(OLD)
    run = subprocess.run([sys.executable, "-m", "shardscan", "scan", str(shard), "-o", str(out)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes() != OLD
    if suffix == ".parquet":
        assert pq.read_table(out).column("checksum").to_pylist() == shardscan.scan(shard).column("checksum").to_pylist()
    assert leftovers(tmp_path) == []


def test_failure_mid_write_keeps_the_old_file(shard, tmp_path, monkeypatch):
    # A writer that gets half way and hits a full disk.
    out = tmp_path / "table.parquet"
    out.write_bytes(OLD)

    def half_then_enospc(suffix):
        def write(table, path):
            Path(path).write_bytes(b"PAR1 half a file")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return write

    monkeypatch.setattr(output, "_writer", half_then_enospc)
    with pytest.raises(OSError) as info:
        output.write_atomic(shardscan.scan(shard), out)
    assert info.value.errno == errno.ENOSPC
    assert out.read_bytes() == OLD
    assert leftovers(tmp_path) == []


def test_read_only_directory_clear_error_old_file_kept(shard, tmp_path):
    # Root ignores permission bits, so as root the folder is made immutable (chattr +i), which
    # refuses root too; otherwise plain chmod 555 does it.
    ro = tmp_path / "ro"
    ro.mkdir()
    out = ro / "table.parquet"
    out.write_bytes(OLD)
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode != 0:
            pytest.skip("running as root on a filesystem without chattr +i")
        undo = ["chattr", "-i", str(ro)]
    else:
        ro.chmod(0o555)
        undo = ["chmod", "755", str(ro)]
    try:
        run = subprocess.run([sys.executable, "-m", "shardscan", "scan", str(shard), "-o", str(out)],
                             capture_output=True, text=True, timeout=60)
        assert out.read_bytes() == OLD
        assert leftovers(ro) == []
    finally:
        subprocess.run(undo, check=True)
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith(f"shardscan: {out}: ")  # the output named, not a temp file
    assert "Permission denied" in run.stderr or "Operation not permitted" in run.stderr


def test_unknown_suffix_is_a_usage_error_before_scanning(shard, tmp_path):
    run = subprocess.run([sys.executable, "-m", "shardscan", "scan", str(shard), "-o", str(tmp_path / "t.xlsx")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "Traceback" not in run.stderr and run.stderr.count("\n") == 1
    assert not (tmp_path / "t.xlsx").exists()
