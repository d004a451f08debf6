"""`shardscan latest`: the newest checkpoint that checks clean, never an interrupted save."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

import checkpoint_trees as trees
from shardscan import audit, latest
from shardscan.auditing import pick_latest
from shardscan.cli import app


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP warns that it saves without a process group
        return trees.build_run(tmp_path_factory.mktemp("tree"))


@pytest.mark.parametrize(
    "sub, expected",
    [
        ("hf", "hf/checkpoint-200"),  # 300: truncated shard, no trainer_state.json
        ("dcp", "dcp/step_10"),  # step_20: no .metadata
        ("deepspeed", "deepspeed/global_step6"),  # 'latest' names global_step7, which is absent
        ("loose", "loose/epoch=0-step=50.ckpt"),  # highest step; the FIFO and links are skipped
        ("", "hf/checkpoint-200"),  # the whole tree: step 300 is the highest, and broken
    ],
)
def test_latest_skips_broken_saves(run: Path, sub: str, expected: str) -> None:
    assert latest(run / sub) == run / expected
    assert audit(run / sub).latest_ok == os.fspath(run / expected)  # the audit agrees


def test_rejected_are_named_newest_first(run: Path) -> None:
    pick = pick_latest(run / "hf")
    assert [(Path(p).name, why.split(":")[0]) for p, why in pick.rejected] == [("checkpoint-300", "no trainer_state.json")]


def test_truncated_shard_alone_is_enough(tmp_path: Path) -> None:
    # A save cut short after trainer_state.json was written (e.g. a copy that died): the
    # marker is there, the shard is not whole.
    out = tmp_path / "out"
    trees.trainer_checkpoint(out, 1, trees.state_dict(1))
    newest = trees.trainer_checkpoint(out, 2, trees.state_dict(2))
    trees.truncate(newest / "model-00001-of-00002.safetensors", 100)
    assert latest(out) == out / "checkpoint-1"


def test_deleted_shard(tmp_path: Path) -> None:
    out = tmp_path / "out"
    trees.trainer_checkpoint(out, 1, trees.state_dict(1))
    newest = trees.trainer_checkpoint(out, 2, trees.state_dict(2))
    (newest / "model-00002-of-00002.safetensors").unlink()
    pick = pick_latest(out)
    assert pick.path == out / "checkpoint-1"
    assert pick.rejected[0][1].startswith("model-00002-of-00002.safetensors: absent")


def test_no_step_numbers_orders_by_mtime(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    for i, name in enumerate(("b.safetensors", "a.safetensors")):  # a is newer despite its name
        save_file(trees.state_dict(i), tmp_path / name)
        os.utime(tmp_path / name, (1_700_000_000 + i, 1_700_000_000 + i))
    assert latest(tmp_path) == tmp_path / "a.safetensors"


def test_none_clean(tmp_path: Path) -> None:
    out = tmp_path / "out"
    trees.trainer_checkpoint(out, 1, trees.state_dict(1), complete=False)
    assert latest(out) is None
    pick = pick_latest(out)
    assert pick.reason == (f"{out}: none of 1 checkpoint checks clean; newest {out / 'checkpoint-1'}: "
                           "no trainer_state.json: the Trainer writes it last, so the save was interrupted")


def test_empty_tree(tmp_path: Path) -> None:
    assert latest(tmp_path) is None
    assert pick_latest(tmp_path).reason == f"{tmp_path}: no checkpoints found"


def test_cli_prints_only_the_path(run: Path) -> None:
    result = CliRunner().invoke(app, ["latest", os.fspath(run / "hf")])
    assert result.exit_code == 0
    assert result.stdout == f"{run / 'hf' / 'checkpoint-200'}\n"


def test_cli_none_clean_is_exit_1_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    trees.trainer_checkpoint(out, 1, trees.state_dict(1), complete=False)
    result = CliRunner().invoke(app, ["latest", os.fspath(out)])
    assert result.exit_code == 1 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "none of 1 checkpoint checks clean" in result.stderr


def test_shell_substitution(run: Path) -> None:
    """The documented use: --resume_from_checkpoint "$(shardscan latest out/)"."""
    script = f'printf "%s" "$("{sys.executable}" -m shardscan latest "{run / "hf"}")"'
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout == os.fspath(run / "hf" / "checkpoint-200")


def test_after_the_interrupted_save_is_repaired(run: Path, tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    shutil.copytree(run / "hf", hf)
    shutil.rmtree(hf / "checkpoint-300")
    trees.trainer_checkpoint(hf, 300, trees.state_dict(3, frozen_from=100))
    assert latest(hf) == hf / "checkpoint-300"


def test_real_trainer_layout(tmp_path: Path) -> None:
    """A Trainer save holds more than weights (optimizer.pt, scheduler.pt, rng_state.pth,
    training_args.bin, the last two arbitrary pickles): only the weights are checked, so a
    complete save is clean and an interrupted one is not."""
    out = tmp_path / "out"
    for step in (2, 4):
        trees.real_trainer_checkpoint(out, step, seed=step)
    shards = sorted((out / "checkpoint-4").glob("model-*.safetensors"))
    assert len(shards) > 1  # sharded, with an index
    assert latest(out) == out / "checkpoint-4"
    assert all(row.ok for row in audit(out).rows)

    shards[-1].unlink()  # an interrupted save: the last shard never written
    pick = pick_latest(out)
    assert pick.path == out / "checkpoint-2"
    assert pick.rejected[0][1].startswith(f"{shards[-1].name}: absent")
