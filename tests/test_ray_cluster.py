"""`scan --ray` and `check --ray` on a real multi-process Ray cluster: a head started with
`ray start --head` and a second node joined with `ray start --address`, both on this machine,
each with one CPU. While the scan runs, one worker process is killed with SIGKILL in the middle
of its task; Ray runs the task again, and the result must equal the local scan row for row,
nothing lost and nothing counted twice.

Teardown ends the processes of this cluster by their ids (found by the temporary directory
they were started with), not with `ray stop`, which would stop any Ray on the machine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray", reason="ray is not installed: pip install 'shardscan[ray]'")

from shardscan import check, scan_paths  # noqa: E402

RAY = Path(sys.executable).with_name("ray")
MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sparse_safetensors(path: Path, nbytes: int, fill: bytes) -> None:
    header = json.dumps({"w": {"dtype": "U8", "shape": [nbytes], "data_offsets": [0, nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header + fill)
        f.truncate(8 + len(header) + nbytes)


def pids_of(marker: str) -> list[int]:
    """Processes whose command line names `marker` (this cluster's temporary directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return [pid for pid in found if pid != os.getpid()]


def ray_env(temp: str) -> dict[str, str]:
    """The environment of every process of this cluster, the driver's included: HOME in the
    temporary directory too, so that an auth token in the real ~/.ray (another cluster's) is
    not picked up by some of them and not others."""
    # Without the RAY_* settings an earlier ray.init in this process left behind (it sets
    # RAY_AUTH_MODE=token once it has found a token under the real HOME).
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**inherited, "RAY_TMPDIR": temp, "HOME": temp}


def start_node(args: list[str], temp: str) -> None:
    ports = ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
             "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
             "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port()),
             "--node-ip-address=127.0.0.1"]
    done = subprocess.run([str(RAY), "start", *args, "--num-cpus=1", *ports, "--disable-usage-stats"],
                          capture_output=True, timeout=180, env=ray_env(temp))
    assert done.returncode == 0, done.stderr.decode()[-3000:] + done.stdout.decode()[-1000:]


@pytest.fixture(scope="module")
def cluster() -> tuple[str, dict[str, str]]:
    # Short: Ray's Unix sockets live under it, and their paths are limited to 107 bytes.
    temp = tempfile.mkdtemp(prefix="ssray", dir="/tmp")
    port = free_port()
    try:
        start_node(["--head", f"--port={port}", f"--temp-dir={temp}", "--include-dashboard=false",
                    "--min-worker-port=0", "--max-worker-port=0"], temp)
        start_node([f"--address=127.0.0.1:{port}", "--min-worker-port=0", "--max-worker-port=0"], temp)
        yield f"127.0.0.1:{port}", ray_env(temp)
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids_of(temp):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(1)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    for i in range(6):
        # Large enough that hashing one takes a noticeable time, so a task can be caught running.
        sparse_safetensors(root / f"shard-{i}.safetensors", 768 * MiB, bytes([i + 1]) * 64)
    return root


def kill_one_running_task(child: subprocess.Popen, name: str, temp: str) -> int | None:
    """SIGKILL the first worker of this cluster (its environment names `temp`) seen running
    task `name`; its pid, or None if the child ended first."""
    title = f"ray::{name}".encode()
    mine = f"RAY_TMPDIR={temp}".encode()
    while child.poll() is None:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if (entry / "cmdline").read_bytes().startswith(title) and mine in (entry / "environ").read_bytes():
                        os.kill(int(entry.name), signal.SIGKILL)
                        return int(entry.name)
                except OSError:
                    continue
        time.sleep(0.005)
    return None


def test_scan_with_a_worker_killed_mid_task_equals_the_local_scan(cluster: tuple, tree: Path, tmp_path: Path) -> None:
    address, env = cluster
    out = tmp_path / "ray.parquet"
    files = sorted(map(os.fspath, tree.iterdir()))
    child = subprocess.Popen([sys.executable, "-m", "shardscan", "scan", "--ray", "--ray-address", address, "--json",
                              "-o", os.fspath(out), *files], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    killed = kill_one_running_task(child, "_scan_target", env["RAY_TMPDIR"])
    stdout, stderr = child.communicate(timeout=300)
    assert killed is not None, "no task was seen running"
    assert child.returncode == 0, stderr.decode()[-2000:]
    summary = json.loads(stdout)
    local = scan_paths(files)
    assert summary["ok"] and summary["files"] == 6 and summary["tensors"] == 6
    assert summary["bytes"] == local.nbytes
    assert pq.read_table(out).equals(local.table)
    assert b"ray" not in stderr.lower(), stderr.decode()[-2000:]  # Ray's own lines stay off the terminal


def test_check_over_the_cluster_equals_the_local_check(cluster: tuple, tmp_path: Path) -> None:
    address, env = cluster
    import numpy as np
    from safetensors.numpy import save_file

    checkpoint = tmp_path / "model"
    checkpoint.mkdir()
    shards = {"model-00001-of-00002.safetensors": {"a": np.arange(64, dtype=np.float32)},
              "model-00002-of-00002.safetensors": {"b": np.ones(32, dtype=np.float16)}}
    for name, tensors in shards.items():
        save_file(tensors, os.fspath(checkpoint / name))
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors",
                                            "c": "model-00002-of-00002.safetensors"}}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    done = subprocess.run([sys.executable, "-m", "shardscan", "check", "--ray", "--ray-address", address, "--json",
                           os.fspath(checkpoint)], capture_output=True, timeout=300, env=env)
    assert done.returncode == 1, done.stderr.decode()[-2000:]
    distributed = json.loads(done.stdout)
    local = check(checkpoint).to_dict()
    distributed.pop("elapsed"), local.pop("elapsed")
    assert distributed == local
    assert distributed["missing"] == ["c"]
