"""Integrity sweeps (`audit --sample/--state/--changed-only/--max-rate/--history`): coverage of
the subsets, resuming after kill -9, the rate cap by the test's own clock, bit rot under
unchanged metadata, and the history table.

Large trees are sparse safetensors files written by hand (a header, then a hole the size of the
tensor): the hashing pass reads them as zeros without the disk filling up, which is all a
test of our own batching and throttling needs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import xxhash
from safetensors.numpy import save_file
from typer.testing import CliRunner

from shardscan.cli import app
from shardscan.sweep import Sample, parse_rate, parse_sample

runner = CliRunner()
MiB = 1 << 20


def small_tree(root: Path, count: int = 12) -> Path:
    root.mkdir()
    for i in range(count):
        save_file({"w": np.arange(256 + i, dtype=np.float32)}, os.fspath(root / f"model-{i:02d}.safetensors"))
    return root


def sparse_safetensors(path: Path, nbytes: int, fill: bytes = b"") -> None:
    """A valid one-tensor U8 file of `nbytes` bytes, mostly a hole; `fill` at the data's start."""
    header = json.dumps({"w": {"dtype": "U8", "shape": [nbytes], "data_offsets": [0, nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header + fill)
        f.truncate(8 + len(header) + nbytes)


def sparse_tree(root: Path, files: int, nbytes: int) -> Path:
    root.mkdir()
    for i in range(files):
        sparse_safetensors(root / f"shard-{i:02d}.safetensors", nbytes, fill=bytes([i + 1]) * 16)
    return root


def sweep_json(*args: str) -> dict:
    result = runner.invoke(app, ["audit", *args, "--json"])
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def file_records(state: Path) -> list[dict]:
    return [json.loads(line) for line in state.read_text().splitlines() if '"kind": "file"' in line]


def test_parse_sample_and_rate() -> None:
    assert parse_sample("2/7") == Sample(2, 7)
    for bad in ("0/3", "4/3", "1", "a/b"):
        with pytest.raises(ValueError):
            parse_sample(bad)
    assert parse_rate("500M") == 500e6  # decimal, as the summary prints rates
    assert parse_rate("2G") == 2e9
    assert parse_rate("500Mi") == parse_rate("500MiB/s") == 500 * MiB
    assert parse_rate("1.5KiB/s") == 1536
    assert parse_rate("1000") == 1000
    for bad in ("fast", "-1M", "0", "5i"):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_three_subsets_hash_every_file_exactly_once(tmp_path: Path) -> None:
    root = small_tree(tmp_path / "tree")
    names = sorted(p.name for p in root.iterdir())
    hashed: list[str] = []
    for n in (1, 2, 3):
        state = tmp_path / f"state-{n}.jsonl"
        summary = sweep_json(os.fspath(root), "--sample", f"{n}/3", "--state", os.fspath(state))
        assert summary["ok"] and summary["sample"] == f"{n}/3"
        # Headers of every file are still read: every checkpoint has its row.
        assert summary["checkpoints"] == len(names) and summary["files_total"] == len(names)
        records = file_records(state)
        assert summary["files_verified"] == len(records)
        assert summary["left"]["files"] == len(names) - len(records)
        hashed += [r["path"] for r in records]
    assert sorted(hashed) == names
    # The same subsets on a second round: stable by path.
    again = sweep_json(os.fspath(root), "--sample", "1/3", "--state", os.fspath(tmp_path / "again.jsonl"))
    assert again["files_verified"] == len(file_records(tmp_path / "state-1.jsonl"))


def test_digest_is_the_scan_of_the_tensors(tmp_path: Path) -> None:
    """A recorded file verdict carries the size and inode of the file, and a digest that changes
    when a tensor byte does."""
    root = small_tree(tmp_path / "tree", count=1)
    state = tmp_path / "state.jsonl"
    sweep_json(os.fspath(root), "--state", os.fspath(state))
    (record,) = file_records(state)
    info = (root / "model-00.safetensors").stat()
    assert (record["size"], record["inode"], record["mtime_ns"]) == (info.st_size, info.st_ino, info.st_mtime_ns)
    assert record["ok"] and len(record["digest"]) == 32


def test_bit_rot_under_unchanged_metadata_fails(tmp_path: Path) -> None:
    root = small_tree(tmp_path / "tree", count=3)
    state = tmp_path / "state.jsonl"
    assert sweep_json(os.fspath(root), "--state", os.fspath(state))["ok"]
    victim = root / "model-01.safetensors"
    info = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0x01  # a tensor byte: the header still parses
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(info.st_atime_ns, info.st_mtime_ns))
    # --changed-only trusts metadata, so it does not read the file...
    quick = sweep_json(os.fspath(root), "--state", os.fspath(state), "--changed-only")
    assert quick["ok"] and quick["skipped"] == {"unchanged since verified": 3} and quick["bytes_verified"] == 0
    # ...a full read does, and names it.
    full = sweep_json(os.fspath(root), "--state", os.fspath(state))
    assert not full["ok"]
    (problem,) = full["problems"]
    assert problem["path"] == "model-01.safetensors" and "bit rot" in problem["problem"]


def test_changed_file_is_read_again_with_changed_only(tmp_path: Path) -> None:
    root = small_tree(tmp_path / "tree", count=3)
    state = tmp_path / "state.jsonl"
    sweep_json(os.fspath(root), "--state", os.fspath(state))
    save_file({"w": np.zeros(7, dtype=np.float32)}, os.fspath(root / "model-02.safetensors"))
    summary = sweep_json(os.fspath(root), "--state", os.fspath(state), "--changed-only")
    assert summary["ok"] and summary["files_verified"] == 1 and summary["skipped"] == {"unchanged since verified": 2}


def rotted_checkpoint(checkpoint: Path) -> np.ndarray:
    """A checkpoint with a manifest, whose last weight changed afterwards; returns the weights
    as they now are. Only hashing finds this: the header and the sizes are those of the manifest."""
    import shardscan

    checkpoint.mkdir(parents=True)
    weights = np.arange(64, dtype=np.float32)
    save_file({"w": weights}, os.fspath(checkpoint / "model.safetensors"))
    (checkpoint / "config.json").write_text("{}")
    shardscan.write_manifest(checkpoint)
    data = bytearray((checkpoint / "model.safetensors").read_bytes())
    data[-4:] = np.float32(1e6).tobytes()
    (checkpoint / "model.safetensors").write_bytes(bytes(data))
    weights[-1] = 1e6
    return weights


def test_manifest_checksum_change_fails_the_file(tmp_path: Path) -> None:
    rotted = rotted_checkpoint(tmp_path / "tree" / "finetuned")
    summary = sweep_json(os.fspath(tmp_path / "tree"), "--sample", "1/1")
    assert not summary["ok"]
    expected = xxhash.xxh3_128_hexdigest(rotted.tobytes())  # the oracle: xxhash of the bytes now there
    assert any(expected in p["problem"] for p in summary["problems"]), summary["problems"]


def test_torn_last_line_is_ignored(tmp_path: Path) -> None:
    root = small_tree(tmp_path / "tree", count=4)
    state = tmp_path / "state.jsonl"
    sweep_json(os.fspath(root), "--state", os.fspath(state))
    lines = state.read_text().splitlines(keepends=True)
    # An unfinished sweep whose last record was cut in the middle of its write.
    state.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    summary = sweep_json(os.fspath(root), "--state", os.fspath(state))
    assert summary["ok"] and summary["files_resumed"] == 2 and summary["files_verified"] == 2
    assert all(json.loads(line) for line in state.read_text().splitlines()[4:])  # later records stand alone


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "shardscan", "audit", *args, "--json"]


def test_sweep_killed_with_sigkill_resumes_where_it_stopped(tmp_path: Path) -> None:
    # 8 sparse files of 64 MiB, two to a hashing batch; the rate cap makes the sweep last
    # about 5 s so that the kill lands in the middle.
    root = sparse_tree(tmp_path / "tree", files=8, nbytes=64 * MiB)
    rotted_checkpoint(root / "finetuned")  # one problem only the hashing finds, for the results to compare
    state = tmp_path / "state.jsonl"
    child = subprocess.Popen(_cli(os.fspath(root), "--state", os.fspath(state), "--max-rate", "100M"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not state.exists() or len(file_records(state)) < 2):
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    before = {r["path"] for r in file_records(state)}
    assert 2 <= len(before) < 8, "the kill came too late to test a resume"
    resumed = json.loads(subprocess.run(_cli(os.fspath(root), "--state", os.fspath(state)),
                                        capture_output=True, check=False).stdout)
    after = [r["path"] for r in file_records(state)][len(before):]
    names = sorted(p.name for p in root.iterdir() if p.is_file()) + ["finetuned/model.safetensors"]
    assert sorted(set(after) | before) == sorted(names)
    assert not set(after) & before  # read only what was left
    assert resumed["files_resumed"] == len(before) and resumed["files_verified"] == 9 - len(before)
    assert resumed["bytes_verified"] == sum((root / name).stat().st_size for name in after)
    whole = json.loads(subprocess.run(_cli(os.fspath(root), "--state", os.fspath(tmp_path / "whole.jsonl")),
                                      capture_output=True, check=False).stdout)
    assert not whole["ok"] and [p["path"] for p in whole["problems"]] == ["finetuned/model.safetensors"]
    for key in ("ok", "problems", "files_total", "bytes_total", "checkpoints"):
        assert resumed[key] == whole[key], key
    # A finished sweep is not resumed: the next run reads everything again.
    fresh = json.loads(subprocess.run(_cli(os.fspath(root), "--state", os.fspath(state)),
                                      capture_output=True, check=False).stdout)
    assert fresh["files_resumed"] == 0 and fresh["files_verified"] == 9


def test_max_rate_holds_by_the_callers_clock(tmp_path: Path) -> None:
    # 1.5 GiB at 200 MB/s: about 8 s, long enough for Python's start-up and the header pass
    # (inside the caller's clock) to stay a few percent. The cap is far below the hashing speed
    # of zero pages, so what is measured is our throttle, not the machine.
    root = sparse_tree(tmp_path / "tree", files=24, nbytes=64 * MiB)
    total = sum(p.stat().st_size for p in root.iterdir())
    cap = parse_rate("200M")
    started = time.monotonic()
    done = subprocess.run(_cli(os.fspath(root), "--max-rate", "200M"), capture_output=True, check=False)
    elapsed = time.monotonic() - started
    summary = json.loads(done.stdout)
    assert summary["bytes_verified"] == total
    measured = total / elapsed
    assert 0.9 * cap <= measured <= 1.1 * cap, f"{measured / 1e6:.0f} MB/s against a cap of 200 MB/s"


def test_history_and_text_summary(tmp_path: Path) -> None:
    root = small_tree(tmp_path / "tree", count=6)
    history = tmp_path / "sweeps.parquet"
    for n in (1, 2):
        result = runner.invoke(app, ["audit", os.fspath(root), "--sample", f"{n}/2", "--history", os.fspath(history)])
        assert result.exit_code == 0, result.output
        assert f"sweep {n}/2 of" in result.stdout and "sweep OK: 0 problems" in result.stdout
        assert "left for the other subsets" in result.stdout
    table = pq.read_table(history).to_pylist()
    assert [row["sample"] for row in table] == ["1/2", "2/2"]
    assert sum(row["files_verified"] for row in table) == 6
    assert all(row["files_total"] == 6 and row["ok"] for row in table)


def test_sweep_options_refuse_what_they_cannot_honour(tmp_path: Path) -> None:
    root = small_tree(tmp_path / "tree", count=1)
    for args in (["--sample", "5/3"], ["--max-rate", "fast"], ["--changed-only"], ["--sample", "1/2", "--no-hash"],
                 ["--sample", "1/2", "--ray"]):
        result = runner.invoke(app, ["audit", os.fspath(root), *args])
        assert result.exit_code == 2, (args, result.output)
