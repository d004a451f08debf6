"""Values read in the hashing pass: a complete checkpoint whose weights or optimizer state went
NaN is as useless for a resume as a cut one; all-zero matrices are what crashes leave behind."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import producers
import shardscan


def poison(path: Path, key: str, value: float, count: int = 3) -> torch.Tensor:
    """Rewrites one weight of a safetensors file with `count` elements set to `value`."""
    tensors = load_file(path)
    flat = tensors[key].reshape(-1)
    flat[:count] = value
    save_file(tensors, path, metadata={"format": "pt"})
    return tensors[key]


def test_the_columns_count_what_torch_counts(tmp_path: Path) -> None:
    tensors = {
        "a": torch.tensor([1.0, float("nan"), float("inf"), -float("inf")], dtype=torch.float32),
        "b": torch.tensor([float("nan")] * 3 + [0.0], dtype=torch.bfloat16),
        "c": torch.zeros(2, 3, dtype=torch.float16),
        "d": torch.arange(4, dtype=torch.int64),
    }
    save_file(tensors, tmp_path / "m.safetensors")
    table = shardscan.scan(tmp_path / "m.safetensors")
    got = {k: (n, i, z) for k, n, i, z in zip(*(table.column(c).to_pylist()
                                                 for c in ("key", "nan_count", "inf_count", "all_zero")))}
    for key, t in tensors.items():
        floating = t.is_floating_point()
        expected = (int(torch.isnan(t).sum()) if floating else None, int(torch.isinf(t).sum()) if floating else None,
                    bool((t.view(torch.uint8) == 0).all()))
        assert got[key] == expected, key


def test_nan_weights_fail_the_checkpoint_and_latest_passes_it_over(hf_trainer_run: Path, tmp_path: Path) -> None:
    run = producers.copy_checkpoint(hf_trainer_run, tmp_path / "run")
    key = "model.layers.0.mlp.up_proj.weight"
    poison(run / "checkpoint-6" / "model.safetensors", key, float("nan"))
    report = shardscan.check(run / "checkpoint-6")
    assert not report.ok
    assert [(n.key, n.nan, n.inf) for n in report.nonfinite] == [(key, 3, 0)]
    assert report.to_dict()["nonfinite"] == [{"key": key, "file": "model.safetensors", "nan": 3, "inf": 0}]
    result = shardscan.audit(run)
    assert result.first_nonfinite == str(run / "checkpoint-6")
    assert shardscan.latest(run) == run / "checkpoint-4"


def test_inf_in_the_optimizer_state_fails(hf_trainer_run: Path, tmp_path: Path) -> None:
    checkpoint = producers.copy_checkpoint(hf_trainer_run / "checkpoint-4", tmp_path / "checkpoint-4")
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    state["state"][0]["exp_avg_sq"].reshape(-1)[0] = float("inf")
    torch.save(state, checkpoint / "optimizer.pt")
    report = shardscan.check(checkpoint)
    assert [(n.key, n.inf) for n in report.nonfinite] == [("optimizer.pt:state.0.exp_avg_sq", 1)]


def test_all_zero_matrices_warn_and_fail_with_strict(hf_trainer_run: Path, tmp_path: Path) -> None:
    checkpoint = producers.copy_checkpoint(hf_trainer_run / "checkpoint-4", tmp_path / "checkpoint-4")
    poison(checkpoint / "model.safetensors", "model.layers.1.mlp.down_proj.weight", 0.0, count=10**9)
    report = shardscan.check(checkpoint)
    assert report.ok and any("all-zero" in w and "down_proj" in w for w in report.warnings)
    strict = shardscan.check(checkpoint, strict=True)
    assert not strict.ok and any("all-zero" in e.error for e in strict.errors)


def test_json_contract_has_the_field_when_clean(tmp_path: Path) -> None:
    save_file({"w": torch.ones(2, 2)}, tmp_path / "m.safetensors")
    assert json.loads(json.dumps(shardscan.check(tmp_path).to_dict()))["nonfinite"] == []
