"""`audit --ray` on a local Ray cluster (ray.init(num_cpus=2)) equals the local audit."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

import checkpoint_trees as trees

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'shardscan[ray]' (CI installs ray==2.60.0)")

from shardscan import audit  # noqa: E402
from shardscan.cli import app  # noqa: E402
from shardscan.ray_audit import audit_ray  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP warns that it saves without a process group
        return trees.build_run(tmp_path_factory.mktemp("tree"))


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_distributed_equals_local(run: Path, cluster: None) -> None:
    local, distributed = audit(run), audit_ray(run, address=None)
    assert [r.to_dict() for r in distributed.rows] == [r.to_dict() for r in local.rows]
    assert distributed.table.equals(local.table)
    assert distributed.frozen == local.frozen and distributed.identical == local.identical
    assert distributed.skipped == local.skipped
    assert distributed.latest_ok == os.fspath(run / "hf" / "checkpoint-200")


def test_relative_root(run: Path, cluster: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # Workers do not share the driver's working directory: tasks get absolute paths, rows
    # still name checkpoints as given.
    monkeypatch.chdir(run)
    local, distributed = audit("hf"), audit_ray("hf", address=None)
    assert [r.path for r in distributed.rows] == [r.path for r in local.rows] == [
        "hf/checkpoint-100", "hf/checkpoint-200", "hf/checkpoint-300"]
    assert [r.to_dict() for r in distributed.rows] == [r.to_dict() for r in local.rows]


def test_progress_counts_every_byte(run: Path, cluster: None) -> None:
    seen: list[tuple[int, int]] = []
    audit_ray(run / "hf", address=None, progress=lambda done, total: seen.append((done, total)))
    assert len(seen) == 3 and seen[-1][0] == seen[-1][1] > 0


def test_cli(run: Path, cluster: None) -> None:
    # Ray is already initialised in this process: --ray uses that cluster.
    result = CliRunner().invoke(app, ["audit", os.fspath(run / "hf"), "--ray", "--json"])
    assert result.exit_code == 1, result.output
    local = CliRunner().invoke(app, ["audit", os.fspath(run / "hf"), "--json"])
    strip = lambda text: {k: v for k, v in json.loads(text).items() if k != "elapsed"}  # noqa: E731
    assert strip(result.stdout) == strip(local.stdout)


def test_subprocess_starts_and_stops_its_own_cluster(run: Path) -> None:
    """`--ray` without an address and no RAY_ADDRESS: a local cluster for the command only."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "shardscan", "audit", os.fspath(run / "hf"), "--ray", "--json"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["latest_ok"] == os.fspath(run / "hf" / "checkpoint-200")


def test_huge_checkpoints_split_into_one_task_per_shard(run: Path, cluster: None) -> None:
    # split_bytes=0: every multi-file checkpoint is scanned shard by shard on the workers and
    # judged on the driver; the answer must not change.
    local, split = audit(run), audit_ray(run, address=None, split_bytes=0)
    assert [r.to_dict() for r in split.rows] == [r.to_dict() for r in local.rows]
    assert split.table.equals(local.table)
