"""The producer fixtures are what the real frameworks write, and the frameworks' own resume paths
are the oracle: an intact checkpoint resumes, a damaged one fails the way a user sees it.

The damage tables also pin down which damage each framework notices by itself and which it
silently resumes through (a deleted optimizer.pt in a Trainer checkpoint, a flipped byte anywhere):
those are the cases only a scanner with a manifest can catch. docs/resume-sets.md is the prose
version of these tables.
"""

from __future__ import annotations

import json
import traceback
import zipfile
from pathlib import Path

import pytest
import torch

import producers

pytestmark = pytest.mark.filterwarnings("ignore")

HF_FILES = {"config.json", "generation_config.json", "model.safetensors", "optimizer.pt", "rng_state.pth",
            "scheduler.pt", "trainer_state.json", "training_args.bin"}


def raised_through(exc: BaseException, function: str) -> bool:
    """Whether `function` is on the traceback of `exc` (or of its causes): the failure came from
    that step of the framework's resume, not from our test code."""
    seen: BaseException | None = exc
    while seen is not None:
        if any(frame.name == function for frame in traceback.extract_tb(seen.__traceback__)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def torch_load_failure(exc: BaseException | None) -> bool:
    """What torch.load raises on a cut zip: RuntimeError (no central directory) for larger files,
    OSError EINVAL when the cut leaves less than its end-of-directory search window."""
    return isinstance(exc, (RuntimeError, OSError))


# ---------------------------------------------------------------------------------------------
# transformers.Trainer
# ---------------------------------------------------------------------------------------------

def test_hf_trainer_writes_one_directory_per_save_step(hf_trainer_run: Path) -> None:
    assert sorted(p.name for p in hf_trainer_run.iterdir()) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    for step in (2, 4, 6):
        checkpoint = hf_trainer_run / f"checkpoint-{step}"
        assert producers.files_under(checkpoint) == HF_FILES
        assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step


def test_hf_trainer_files_are_what_the_trainer_reads(hf_trainer_run: Path) -> None:
    from safetensors.torch import load_file

    checkpoint = hf_trainer_run / "checkpoint-4"
    weights = load_file(checkpoint / "model.safetensors")
    assert "model.layers.1.mlp.down_proj.weight" in weights
    optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    moments = [state["exp_avg"] for state in optimizer["state"].values()]
    assert moments and all(m.abs().sum() > 0 for m in moments)
    assert torch.load(checkpoint / "scheduler.pt", weights_only=True)["last_epoch"] == 4
    rng = torch.load(checkpoint / "rng_state.pth", weights_only=False)
    assert {"python", "numpy", "cpu"} <= set(rng)
    # training_args.bin is a pickled TrainingArguments: nothing but Python objects, no tensor.
    with zipfile.ZipFile(checkpoint / "training_args.bin") as archive:
        assert not any("/data/" in name for name in archive.namelist())


def test_hf_trainer_resumes_from_an_intact_checkpoint(hf_trainer_run: Path, tmp_path: Path) -> None:
    resumed = producers.hf_trainer_resume(hf_trainer_run / "checkpoint-4", tmp_path / "resumed")
    assert resumed == producers.Resumed(resumed_at=4, final_step=6)


# (file, damage, the Trainer step that raises, or None: the Trainer resumes without a word)
HF_DAMAGE = [
    ("optimizer.pt", "truncate", "_load_optimizer_and_scheduler"),
    ("scheduler.pt", "truncate", "_load_optimizer_and_scheduler"),
    ("rng_state.pth", "truncate", "_load_rng_state"),
    ("model.safetensors", "truncate", "_load_from_checkpoint"),
    ("trainer_state.json", "delete", "load_from_json"),
    ("model.safetensors", "delete", "_load_from_checkpoint"),
    # Optional to the Trainer: absent, it starts a fresh optimizer/schedule/RNG and says nothing.
    ("optimizer.pt", "delete", None),
    ("rng_state.pth", "delete", None),
    # Never read at resume.
    ("training_args.bin", "truncate", None),
    # No checksum anywhere: a flipped byte resumes with a wrong value.
    ("model.safetensors", "flip", None),
    ("optimizer.pt", "flip", None),
]


def damage(path: Path, how: str) -> None:
    if how == "truncate":
        producers.truncate_at(path, 0.5)
    elif how == "delete":
        producers.delete(path)
    elif how == "flip":
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded = load_file(path)
        else:
            loaded = torch.load(path, weights_only=True)
        producers.flip_tensor_byte(path, producers.largest_tensor(loaded))
    else:
        raise ValueError(how)


@pytest.mark.parametrize(("name", "how", "failing_step"), HF_DAMAGE, ids=[f"{h}-{n}" for n, h, _ in HF_DAMAGE])
def test_hf_trainer_resume_after_damage(hf_trainer_run: Path, tmp_path: Path, name: str, how: str,
                                        failing_step: str | None) -> None:
    checkpoint = producers.copy_checkpoint(hf_trainer_run / "checkpoint-4", tmp_path / "checkpoint-4")
    damage(checkpoint / name, how)
    error = producers.run_raises(lambda: producers.hf_trainer_resume(checkpoint, tmp_path / "resumed"))
    if failing_step is None:
        assert error is None
    else:
        assert error is not None and raised_through(error, failing_step), error


def test_a_flipped_byte_really_changes_the_value_the_trainer_loads(hf_trainer_run: Path, tmp_path: Path) -> None:
    """The silent cases above are not a no-op damage: the bytes torch hands back differ."""
    from safetensors.torch import load_file

    original = hf_trainer_run / "checkpoint-4" / "model.safetensors"
    copy = producers.copy_checkpoint(original, tmp_path / "model.safetensors")
    damage(copy, "flip")
    before, after = load_file(original), load_file(copy)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == 1


def test_peft_trainer_writes_adapter_checkpoints_and_resumes(peft_trainer_run: Path, tmp_path: Path) -> None:
    checkpoint = peft_trainer_run / "checkpoint-2"
    assert producers.files_under(checkpoint) == {
        "README.md", "adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "rng_state.pth",
        "scheduler.pt", "trainer_state.json", "training_args.bin"}
    resumed = producers.peft_trainer_resume(checkpoint, tmp_path / "resumed")
    assert resumed == producers.Resumed(resumed_at=2, final_step=4)
    cut = producers.copy_checkpoint(checkpoint, tmp_path / "cut")
    producers.truncate_at(cut / "optimizer.pt", 0.5)
    error = producers.run_raises(lambda: producers.peft_trainer_resume(cut, tmp_path / "again"))
    assert error is not None and raised_through(error, "_load_optimizer_and_scheduler"), error


# ---------------------------------------------------------------------------------------------
# accelerate
# ---------------------------------------------------------------------------------------------

def test_accelerate_save_state_layout(accelerate_state: Path) -> None:
    # No sampler.bin: accelerate writes one only for an IterableDatasetShard whose sampler is a
    # SeedableRandomSampler, which a map-style loader never is (docs/resume-sets.md).
    assert producers.files_under(accelerate_state) == {
        "model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl"}
    # The .bin and .pkl files are all torch.save zips, whatever their suffix says.
    for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl"):
        assert zipfile.is_zipfile(accelerate_state / name), name


def test_accelerate_load_state_restores_everything(accelerate_state: Path) -> None:
    from safetensors.torch import load_file

    session = producers.accelerate_resume(accelerate_state)
    saved = load_file(accelerate_state / "model.safetensors")
    for key, value in session.model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert session.counter.batches_seen == 4
    assert session.scheduler.state_dict()["last_epoch"] == 4
    assert all(int(s["step"]) == 4 for s in session.optimizer.state_dict()["state"].values())


# (file, damage, raises?): what Accelerator.load_state does with each damaged file
ACCELERATE_DAMAGE = [
    ("optimizer.bin", "truncate", True),
    ("scheduler.bin", "truncate", True),
    ("model.safetensors", "truncate", True),
    ("custom_checkpoint_0.pkl", "truncate", True),
    ("custom_checkpoint_0.pkl", "delete", True),
    ("optimizer.bin", "delete", True),
    # load_accelerator_state catches every error of the RNG step and only logs it.
    ("random_states_0.pkl", "truncate", False),
    ("random_states_0.pkl", "delete", False),
    ("model.safetensors", "flip", False),
]


@pytest.mark.parametrize(("name", "how", "raises"), ACCELERATE_DAMAGE,
                         ids=[f"{h}-{n}" for n, h, _ in ACCELERATE_DAMAGE])
def test_accelerate_load_state_after_damage(accelerate_state: Path, tmp_path: Path, name: str, how: str,
                                            raises: bool) -> None:
    state = producers.copy_checkpoint(accelerate_state, tmp_path / "state")
    damage(state / name, how)
    error = producers.run_raises(lambda: producers.accelerate_resume(state))
    if raises:
        assert error is not None and raised_through(error, "load_state"), error
    else:
        assert error is None


# ---------------------------------------------------------------------------------------------
# Lightning
# ---------------------------------------------------------------------------------------------

def test_lightning_model_checkpoint_layout(lightning_run: Path) -> None:
    assert producers.files_under(lightning_run) == {"step=2.ckpt", "step=4.ckpt"}
    checkpoint = torch.load(lightning_run / "step=2.ckpt", weights_only=True)
    assert set(checkpoint) == {"epoch", "global_step", "pytorch-lightning_version", "state_dict", "loops",
                               "callbacks", "optimizer_states", "lr_schedulers"}
    assert checkpoint["global_step"] == 2
    assert checkpoint["optimizer_states"][0]["state"], "AdamW moments are in the .ckpt"


def test_lightning_resumes_from_an_intact_checkpoint(lightning_run: Path, tmp_path: Path) -> None:
    resumed = producers.lightning_resume(lightning_run / "step=2.ckpt", tmp_path / "root")
    assert resumed == producers.Resumed(resumed_at=2, final_step=4)


def test_lightning_refuses_a_cut_checkpoint(lightning_run: Path, tmp_path: Path) -> None:
    checkpoint = producers.copy_checkpoint(lightning_run / "step=2.ckpt", tmp_path / "step=2.ckpt")
    producers.truncate_at(checkpoint, 0.9)
    error = producers.run_raises(lambda: producers.lightning_resume(checkpoint, tmp_path / "root"))
    assert torch_load_failure(error) and raised_through(error, "resume_start"), error


def test_lightning_resumes_through_a_flipped_optimizer_byte(lightning_run: Path, tmp_path: Path) -> None:
    checkpoint = producers.copy_checkpoint(lightning_run / "step=2.ckpt", tmp_path / "step=2.ckpt")
    moments = torch.load(checkpoint, weights_only=True)["optimizer_states"][0]["state"]
    producers.flip_tensor_byte(checkpoint, producers.largest_tensor(moments))
    assert producers.run_raises(lambda: producers.lightning_resume(checkpoint, tmp_path / "root")) is None


# ---------------------------------------------------------------------------------------------
# torch.distributed.checkpoint, two gloo ranks
# ---------------------------------------------------------------------------------------------

def test_dcp_two_rank_layout(dcp_two_rank_checkpoint: Path) -> None:
    import torch.distributed.checkpoint as dcp

    assert producers.files_under(dcp_two_rank_checkpoint) == {".metadata", "__0_0.distcp", "__1_0.distcp"}
    metadata = dcp.FileSystemReader(str(dcp_two_rank_checkpoint)).read_metadata()
    referenced = {item.relative_path for item in metadata.storage_data.values()}
    assert referenced == {"__0_0.distcp", "__1_0.distcp"}
    keys = set(metadata.state_dict_metadata)
    assert "model.0.weight" in keys and "optim.state.0.weight.exp_avg" in keys


def test_dcp_two_ranks_resume_intact_then_refuse_a_cut_shard(dcp_two_rank_checkpoint: Path,
                                                             tmp_path: Path) -> None:
    """One pair of ranks loads the intact save, a copy with a flipped byte (DCP keeps no
    checksum: it loads), then a copy with rank 1's file cut short, which fails every rank."""
    flipped = producers.copy_checkpoint(dcp_two_rank_checkpoint, tmp_path / "flipped")
    moment = _a_dcp_tensor(dcp_two_rank_checkpoint)
    target = next(p for p in (flipped / "__0_0.distcp", flipped / "__1_0.distcp")
                  if producers.tensor_raw_bytes(moment) in p.read_bytes())
    producers.flip_tensor_byte(target, moment)
    cut = producers.copy_checkpoint(dcp_two_rank_checkpoint, tmp_path / "cut")
    producers.truncate_at(cut / "__1_0.distcp", 0.5)
    outcome = producers.dcp_two_rank_resume([dcp_two_rank_checkpoint, flipped, cut])
    assert outcome.loaded == [dcp_two_rank_checkpoint, flipped]
    assert outcome.failed == cut
    # Rank 1 reads its own cut file; DCP hands that error to rank 0 as well, so both stop.
    assert set(outcome.tracebacks) == {0, 1}
    assert all("PytorchStreamReader failed" in text for text in outcome.tracebacks.values()), outcome.tracebacks


def _a_dcp_tensor(directory: Path) -> torch.Tensor:
    """The largest tensor of a DCP save, read back by DCP itself into one process."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    whole = directory.parent / f"{directory.name}.whole.pt"
    if not whole.exists():
        dcp_to_torch_save(str(directory), str(whole))
    tensor = producers.largest_tensor(torch.load(whole, weights_only=True))
    # A shard holds half of it; search for the half that a rank wrote.
    return tensor.reshape(-1)[: tensor.numel() // 2].clone()


# ---------------------------------------------------------------------------------------------
# legacy torch.save
# ---------------------------------------------------------------------------------------------

def test_legacy_torch_save_is_not_a_zip_and_resumes(legacy_torch_checkpoint: Path) -> None:
    assert not zipfile.is_zipfile(legacy_torch_checkpoint)
    # The legacy format opens with a pickled magic number (protocol 2 header, then a long).
    assert legacy_torch_checkpoint.read_bytes()[:2] == b"\x80\x02"
    assert producers.legacy_torch_resume(legacy_torch_checkpoint) == 3
    state = torch.load(legacy_torch_checkpoint, weights_only=True)
    assert producers.tensor_byte_offset(legacy_torch_checkpoint, producers.largest_tensor(state)) > 0


@pytest.mark.parametrize("fraction", [0.5, 0.99])
def test_legacy_torch_save_cut_short_fails(legacy_torch_checkpoint: Path, tmp_path: Path, fraction: float) -> None:
    copy = producers.copy_checkpoint(legacy_torch_checkpoint, tmp_path / "checkpoint.pt")
    producers.truncate_at(copy, fraction)
    error = producers.run_raises(lambda: producers.legacy_torch_resume(copy))
    assert isinstance(error, RuntimeError) and "unexpected EOF" in str(error), error


# ---------------------------------------------------------------------------------------------
# DeepSpeed ZeRO stage 2 on CPU
# ---------------------------------------------------------------------------------------------

DEEPSPEED_FILES = {"latest", "zero_to_fp32.py", "zero_to_torch.py", "global_step2/mp_rank_00_model_states.pt",
                   "global_step2/zero_pp_rank_0_mp_rank_00_optim_states.pt",
                   "global_step2/zero_pp_rank_1_mp_rank_00_optim_states.pt"}


@pytest.mark.slow
def test_deepspeed_zero_layout(deepspeed_zero_checkpoint: Path) -> None:
    assert producers.files_under(deepspeed_zero_checkpoint) == DEEPSPEED_FILES
    assert (deepspeed_zero_checkpoint / "latest").read_text().strip() == "global_step2"
    step = deepspeed_zero_checkpoint / "global_step2"
    # ZeRO files pickle DeepSpeed's own classes (LossScaler, ZeroStageEnum): weights_only refuses them.
    model_states = torch.load(step / "mp_rank_00_model_states.pt", weights_only=False)
    assert model_states["dp_world_size"] == 2 and model_states["optimizer"] is None
    optim = torch.load(step / "zero_pp_rank_1_mp_rank_00_optim_states.pt", weights_only=False)
    assert optim["optimizer_state_dict"]["partition_count"] == [2]


@pytest.mark.slow
def test_deepspeed_resumes_intact_and_refuses_a_cut_optimizer_shard(deepspeed_zero_checkpoint: Path,
                                                                    tmp_path: Path) -> None:
    cut = producers.copy_checkpoint(deepspeed_zero_checkpoint, tmp_path / "cut")
    producers.truncate_at(cut / "global_step2" / "zero_pp_rank_1_mp_rank_00_optim_states.pt", 0.5)
    outcome = producers.deepspeed_zero_resume([deepspeed_zero_checkpoint, cut])
    assert outcome.loaded == [deepspeed_zero_checkpoint]
    assert outcome.failed == cut
    assert 1 in outcome.tracebacks and "PytorchStreamReader failed" in outcome.tracebacks[1], outcome.tracebacks


# ---------------------------------------------------------------------------------------------
# the damage helpers themselves
# ---------------------------------------------------------------------------------------------

def test_truncate_at_keeps_the_leading_fraction(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(range(200)))
    assert producers.truncate_at(path, 0.25) == 50
    assert path.read_bytes() == bytes(range(50))


def test_flip_tensor_byte_changes_exactly_one_byte_of_that_tensor(tmp_path: Path) -> None:
    tensor = torch.arange(64, dtype=torch.float32)
    path = tmp_path / "t.pt"
    torch.save({"t": tensor}, path)
    before = path.read_bytes()
    offset = producers.flip_tensor_byte(path, tensor)
    after = path.read_bytes()
    assert [i for i in range(len(before)) if before[i] != after[i]] == [offset]
    loaded = torch.load(path, weights_only=True)["t"]
    assert (loaded != tensor).sum() == 1
