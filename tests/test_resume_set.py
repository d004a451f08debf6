"""OK means "resuming from here works": checkpoints written by the real frameworks are judged on
every file their framework reads at resume, and the framework's own resume is the oracle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import producers
import shardscan
from shardscan.cli import app
from shardscan.resume import resume_set

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")


def names(path: Path) -> dict[str, str]:
    return {m.name: m.role for m in resume_set(path).members}


def test_a_trainer_checkpoint_is_every_file_the_trainer_reads(hf_trainer_run: Path) -> None:
    assert names(hf_trainer_run / "checkpoint-4") == {
        "model.safetensors": "model", "optimizer.pt": "state", "scheduler.pt": "state",
        "rng_state.pth": "objects", "training_args.bin": "objects",
    }


def test_a_trainer_run_audits_clean_and_latest_is_the_newest(hf_trainer_run: Path) -> None:
    result = shardscan.audit(hf_trainer_run)
    assert [row.ok for row in result.rows] == [True, True, True], [row.problems for row in result.rows]
    assert shardscan.latest(hf_trainer_run) == hf_trainer_run / "checkpoint-6"


def test_latest_skips_a_cut_optimizer_and_the_trainer_resumes_from_its_pick(hf_trainer_run: Path, tmp_path: Path) -> None:
    run = producers.copy_checkpoint(hf_trainer_run, tmp_path / "run")
    producers.truncate_at(run / "checkpoint-6" / "optimizer.pt", 0.6)
    report = shardscan.check(run / "checkpoint-6")
    assert not report.ok and [e.file for e in report.errors] == ["optimizer.pt"]
    # the framework agrees: resuming from the cut one fails, from the one we pick it works
    assert producers.run_raises(lambda: producers.hf_trainer_resume(run / "checkpoint-6", tmp_path / "a")) is not None
    picked = shardscan.latest(run)
    assert picked == run / "checkpoint-4"
    assert producers.hf_trainer_resume(picked, tmp_path / "b").final_step == 6


@pytest.mark.parametrize("name", ["scheduler.pt", "rng_state.pth", "training_args.bin"])
def test_a_cut_file_of_the_set_fails_the_checkpoint(hf_trainer_run: Path, tmp_path: Path, name: str) -> None:
    checkpoint = producers.copy_checkpoint(hf_trainer_run / "checkpoint-4", tmp_path / "checkpoint-4")
    producers.truncate_at(checkpoint / name, 0.5)
    report = shardscan.check(checkpoint)
    assert not report.ok and name in {e.file for e in report.errors}


def test_a_missing_optimizer_fails_when_the_siblings_have_one(hf_trainer_run: Path, tmp_path: Path) -> None:
    run = producers.copy_checkpoint(hf_trainer_run, tmp_path / "run")
    producers.delete(run / "checkpoint-6" / "optimizer.pt")
    report = shardscan.check(run / "checkpoint-6")
    assert [(e.file, e.error.split(":")[0]) for e in report.errors] == [("optimizer.pt", "absent")]
    assert shardscan.latest(run) == run / "checkpoint-4"


def test_trainer_state_must_belong_to_its_directory(hf_trainer_run: Path, tmp_path: Path) -> None:
    checkpoint = producers.copy_checkpoint(hf_trainer_run / "checkpoint-4", tmp_path / "checkpoint-4")
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    (checkpoint / "trainer_state.json").write_text(json.dumps({**state, "global_step": 2}))
    report = shardscan.check(checkpoint)
    assert [e.file for e in report.errors] == ["trainer_state.json"]


def test_the_optimizer_tensors_are_hashed_like_the_weights(hf_trainer_run: Path) -> None:
    import xxhash

    checkpoint = hf_trainer_run / "checkpoint-4"
    table = shardscan.scan(checkpoint)
    rows = {(f, k): c for f, k, c in zip(*(table.column(n).to_pylist() for n in ("file", "key", "checksum")))}
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    for index, entry in state["state"].items():
        expected = xxhash.xxh3_128_hexdigest(producers.tensor_raw_bytes(entry["exp_avg"]))
        assert rows[("optimizer.pt", f"state.{index}.exp_avg")] == expected


def test_a_manifest_scan_writes_checks_clean(hf_trainer_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    checkpoint = producers.copy_checkpoint(hf_trainer_run / "checkpoint-4", tmp_path / "checkpoint-4")
    runner = CliRunner()
    written = runner.invoke(app, ["scan", str(checkpoint), "-o", str(checkpoint / "shardscan.manifest.parquet")])
    assert written.exit_code == 0, written.output
    checked = runner.invoke(app, ["check", str(checkpoint)])
    assert checked.exit_code == 0, checked.output


def test_accelerate_state_judged_whole(accelerate_state: Path, tmp_path: Path) -> None:
    assert names(accelerate_state) == {
        "model.safetensors": "model", "optimizer.bin": "state", "scheduler.bin": "state",
        "random_states_0.pkl": "objects", "custom_checkpoint_0.pkl": "objects",
    }
    assert shardscan.check(accelerate_state).ok
    cut = producers.copy_checkpoint(accelerate_state, tmp_path / "cut")
    producers.truncate_at(cut / "optimizer.bin", 0.5)
    report = shardscan.check(cut)
    assert [e.file for e in report.errors] == ["optimizer.bin"]
    assert producers.run_raises(lambda: producers.accelerate_resume(cut)) is not None


def test_lightning_checkpoints(lightning_run: Path, tmp_path: Path) -> None:
    assert shardscan.audit(lightning_run).ok
    run = producers.copy_checkpoint(lightning_run, tmp_path / "run")
    producers.truncate_at(run / "step=4.ckpt", 0.5)
    assert shardscan.latest(run) == run / "step=2.ckpt"
    assert producers.lightning_resume(run / "step=2.ckpt", tmp_path / "resumed").final_step == 4


def test_dcp_two_ranks(dcp_two_rank_checkpoint: Path) -> None:
    assert shardscan.check(dcp_two_rank_checkpoint).ok


def test_deepspeed_zero_every_rank_or_fail(deepspeed_zero_checkpoint: Path, tmp_path: Path) -> None:
    step = deepspeed_zero_checkpoint / "global_step2"
    report = shardscan.check(step)
    assert report.ok, report.to_dict()
    run = producers.copy_checkpoint(deepspeed_zero_checkpoint, tmp_path / "run")
    producers.delete(run / "global_step2" / "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    report = shardscan.check(run / "global_step2")
    assert [e.file for e in report.errors] == ["zero_pp_rank_1_mp_rank_00_optim_states.pt"]
