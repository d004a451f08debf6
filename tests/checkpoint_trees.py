"""Builds the training-run trees the audit/latest tests walk: real files written by torch,
safetensors and torch.distributed.checkpoint, with the breakages an interrupted save leaves.

    run/
      hf/checkpoint-100/    complete: two shards + index + config.json + trainer_state.json
      hf/checkpoint-200/    complete; layer 0 unchanged since 100 (frozen), the rest trained
      hf/checkpoint-300/    interrupted: shard 2 cut short, no trainer_state.json
      dcp/step_10/          complete DCP save
      dcp/step_20/          DCP save without .metadata (the coordinator never wrote it)
      deepspeed/global_step5/, global_step6/, latest -> "global_step7" (does not exist)
      loose/epoch=0-step=50.ckpt, loose/step_1.pt, loose/final.safetensors
      loose/pipe.safetensors  a FIFO (must never be opened)
      loose/self            a symlink to itself (ELOOP)
      loose/up -> ..        a symlink back into the tree
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

LAYERS = 2


def state_dict(seed: int, *, frozen_from: int | None = None) -> dict[str, torch.Tensor]:
    """A tiny two-layer model. With `frozen_from`, layer 0 carries that seed's values: the
    tensors a fine-tune with a frozen first layer would leave unchanged."""
    out: dict[str, torch.Tensor] = {}
    for layer in range(LAYERS):
        g = torch.Generator().manual_seed(frozen_from if (layer == 0 and frozen_from is not None) else seed * 100 + layer)
        out[f"model.layers.{layer}.mlp.weight"] = torch.randn(8, 4, generator=g)
        out[f"model.layers.{layer}.mlp.bias"] = torch.randn(8, generator=g)
    g = torch.Generator().manual_seed(seed * 100 + 99)
    out["lm_head.weight"] = torch.randn(16, 8, generator=g)
    return out


def save_sharded(directory: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Two safetensors shards and the index, as save_pretrained lays them out."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}
    weight_map = {}
    for shard, names in halves.items():
        save_file({k: tensors[k].contiguous() for k in names}, directory / shard, metadata={"format": "pt"})
        weight_map.update({k: shard for k in names})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps({"model_type": "tiny", "num_hidden_layers": LAYERS}))


def trainer_checkpoint(output_dir: Path, step: int, tensors: dict[str, torch.Tensor], *, complete: bool = True) -> Path:
    """An HF Trainer `checkpoint-N`; trainer_state.json last, as the Trainer does."""
    directory = output_dir / f"checkpoint-{step}"
    save_sharded(directory, tensors)
    if complete:
        (directory / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return directory


def truncate(path: Path, keep: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(keep)


def build_hf_run(root: Path) -> Path:
    out = root / "hf"
    trainer_checkpoint(out, 100, state_dict(1))
    trainer_checkpoint(out, 200, state_dict(2, frozen_from=100))
    broken = trainer_checkpoint(out, 300, state_dict(3, frozen_from=100), complete=False)
    shard = broken / "model-00002-of-00002.safetensors"
    truncate(shard, shard.stat().st_size - 40)
    _age(out)
    return out


def build_dcp_run(root: Path) -> Path:
    """Single-process torch.distributed.checkpoint saves; step_20 loses its .metadata."""
    import torch.distributed.checkpoint as dcp

    out = root / "dcp"
    for step in (10, 20):
        directory = out / f"step_{step}"
        dcp.save({"model": state_dict(step)}, checkpoint_id=str(directory))
    (out / "step_20" / ".metadata").unlink()
    return out


def build_deepspeed_run(root: Path) -> Path:
    out = root / "deepspeed"
    for step in (5, 6):
        directory = out / f"global_step{step}"
        directory.mkdir(parents=True)
        torch.save({"module": state_dict(step), "global_steps": step}, directory / "mp_rank_00_model_states.pt")
    (out / "latest").write_text("global_step7")
    return out


def build_loose(root: Path) -> Path:
    out = root / "loose"
    out.mkdir(parents=True)
    torch.save({"state_dict": state_dict(50), "epoch": 0, "global_step": 50}, out / "epoch=0-step=50.ckpt")
    torch.save(state_dict(1), out / "step_1.pt")
    save_file(state_dict(9), out / "final.safetensors")
    os.mkfifo(out / "pipe.safetensors")
    os.symlink("self", out / "self")
    os.symlink("..", out / "up")
    return out


def build_run(root: Path) -> Path:
    """The whole tree under root/run."""
    run = root / "run"
    build_hf_run(run)
    build_dcp_run(run)
    build_deepspeed_run(run)
    build_loose(run)
    return run


def _age(directory: Path) -> None:
    """Spread mtimes so that ordering by mtime is observable (steps break ties first)."""
    for i, child in enumerate(sorted(directory.iterdir())):
        for path in [child, *child.rglob("*")]:
            os.utime(path, (1_700_000_000 + i * 60, 1_700_000_000 + i * 60), follow_symlinks=False)


@dataclasses.dataclass
class FakeTrainingArguments:
    """Stands in for TrainingArguments in training_args.bin: an arbitrary pickled object, as
    the Trainer writes (building the real one needs accelerate)."""

    output_dir: str
    learning_rate: float = 5e-5


def real_trainer_checkpoint(output_dir: Path, step: int, seed: int) -> Path:
    """Every file a Trainer save leaves, made by the libraries that make them: the model by
    transformers' save_pretrained (sharded), optimizer.pt / scheduler.pt by torch.save of the
    real state_dicts, rng_state.pth with the python/numpy/torch states, training_args.bin as
    a pickled object, trainer_state.json last."""
    import random

    import numpy as np
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = output_dir / f"checkpoint-{step}"
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory, max_shard_size="20KB")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 64, (1, 8)), labels=torch.randint(0, 64, (1, 8))).loss.backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    torch.save(optimizer.state_dict(), directory / "optimizer.pt")
    torch.save(scheduler.state_dict(), directory / "scheduler.pt")
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()},
               directory / "rng_state.pth")
    torch.save(FakeTrainingArguments(os.fspath(output_dir)), directory / "training_args.bin")
    (directory / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return directory
