"""Session-wide fixtures: checkpoints written by the real frameworks (tests/producers.py).

Each producer runs at most once per test session, into a directory of pytest's
tmp_path_factory, and only when a test asks for it. The trees are shared: a test that damages one
works on `producers.copy_checkpoint(...)` of it, never on the fixture itself. producers (and with
it torch) is imported inside each fixture, so sessions that need none of them never pay for it.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def hf_trainer_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A transformers Trainer output_dir: checkpoint-2, checkpoint-4, checkpoint-6."""
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import producers

    return producers.hf_trainer_run(tmp_path_factory.mktemp("hf-trainer") / "run")


@pytest.fixture(scope="session")
def peft_trainer_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA fine-tune through the Trainer: checkpoint-2, checkpoint-4 with adapter files."""
    pytest.importorskip("peft")
    pytest.importorskip("accelerate")
    import producers

    return producers.peft_trainer_run(tmp_path_factory.mktemp("peft-trainer") / "run")


@pytest.fixture(scope="session")
def accelerate_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An `Accelerator.save_state` directory."""
    pytest.importorskip("accelerate")
    import producers

    return producers.accelerate_save_state(tmp_path_factory.mktemp("accelerate") / "state")


@pytest.fixture(scope="session")
def lightning_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Lightning ModelCheckpoint directory: step=2.ckpt, step=4.ckpt."""
    pytest.importorskip("lightning")
    import producers

    return producers.lightning_run(tmp_path_factory.mktemp("lightning") / "checkpoints")


@pytest.fixture(scope="session")
def dcp_two_rank_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torch.distributed.checkpoint directory saved by 2 gloo ranks."""
    import producers

    return producers.dcp_two_rank_save(tmp_path_factory.mktemp("dcp") / "step_2")


@pytest.fixture(scope="session")
def legacy_torch_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pre-zip torch.save training checkpoint."""
    import producers

    return producers.legacy_torch_save(tmp_path_factory.mktemp("legacy") / "checkpoint.pt")


@pytest.fixture(scope="session")
def deepspeed_zero_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DeepSpeed ZeRO stage-2 save_checkpoint directory from 2 gloo ranks (latest, global_step2/)."""
    import producers

    if not producers.deepspeed_available():
        pytest.skip("deepspeed is not importable")
    return producers.deepspeed_zero_save(tmp_path_factory.mktemp("deepspeed") / "run")


@pytest.fixture(scope="session")
def hf_deepspeed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Trainer output_dir trained under DeepSpeed ZeRO-2 on one CPU process: checkpoint-2, -4."""
    pytest.importorskip("transformers")
    import producers

    if not producers.deepspeed_available():
        pytest.skip("deepspeed is not importable")
    return producers.hf_deepspeed_run(tmp_path_factory.mktemp("hf-deepspeed") / "run")


@pytest.fixture(scope="session")
def megatron_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Megatron-LM --save directory: iter_0000010/ and iter_0000020/ in the torch_dist format,
    every file in them written by megatron-core's dist_checkpointing from 2 gloo ranks, and
    latest_checkpointed_iteration.txt (the tracker and the iter_ names follow Megatron-LM's
    training loop, which no installable package runs on CPU: producers.megatron_run)."""
    import producers

    if not producers.megatron_available():
        pytest.skip("megatron-core is not importable")
    return producers.megatron_run(tmp_path_factory.mktemp("megatron") / "run")
