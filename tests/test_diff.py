"""`shardscan diff A B` on checkpoints written by safetensors, torch.save and DCP.

Checksums in the expectations come from the `xxhash` package over the bytes torch holds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
xxhash = pytest.importorskip("xxhash")
from safetensors.torch import save_file  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from shardscan import diff  # noqa: E402
from shardscan.cli import app  # noqa: E402


def _state(layers: int = 4, seed: int = 0) -> dict[str, "torch.Tensor"]:
    """A Llama-shaped state dict, made by hand so this module needs no transformers."""
    gen = torch.Generator().manual_seed(seed)
    state = {"model.embed_tokens.weight": torch.randn(32, 8, generator=gen), "model.norm.weight": torch.ones(8)}
    for i in range(layers):
        for proj, shape in (("q", (8, 8)), ("k", (4, 8)), ("v", (4, 8)), ("o", (8, 8))):
            state[f"model.layers.{i}.self_attn.{proj}_proj.weight"] = torch.randn(*shape, generator=gen)
        for proj, shape in (("gate", (16, 8)), ("up", (16, 8)), ("down", (8, 16))):
            state[f"model.layers.{i}.mlp.{proj}_proj.weight"] = torch.randn(*shape, generator=gen)
        state[f"model.layers.{i}.input_layernorm.weight"] = torch.ones(8)
    state["lm_head.weight"] = torch.randn(32, 8, generator=gen)
    return state


def _save_sharded(state: dict[str, "torch.Tensor"], directory: Path, shards: int = 3) -> Path:
    """safetensors shards plus an index, as save_pretrained lays them out."""
    directory.mkdir(parents=True)
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k].contiguous() for k in keys[i::shards]}
        save_file(part, directory / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


def _digest(tensor: "torch.Tensor") -> str:
    return xxhash.xxh3_128_hexdigest(tensor.contiguous().numpy().tobytes())


def test_identical(tmp_path: Path) -> None:
    a = _save_sharded(_state(), tmp_path / "a")
    b = _save_sharded(_state(), tmp_path / "b", shards=2)  # re-sharded, same tensors
    result = diff(a, b)
    assert result.ok and result.unchanged == len(_state())


def test_fine_tune_changes_found_by_checksum(tmp_path: Path) -> None:
    base = _state()
    tuned = dict(base)
    changed = ["model.layers.1.mlp.up_proj.weight", "model.layers.3.self_attn.q_proj.weight"]
    for key in changed:
        tuned[key] = base[key] + 0.5
    a, b = _save_sharded(base, tmp_path / "a"), _save_sharded(tuned, tmp_path / "b")
    result = diff(a, b)
    assert [(c.key, c.field) for c in result.changed] == [(k, "checksum") for k in changed]
    data = result.to_dict()
    assert data["changed"] == [{"key": k, "field": "checksum", "a": _digest(base[k]), "b": _digest(tuned[k])} for k in changed]
    assert result.unchanged == len(base) - 2
    assert diff(a, b, hash=False).ok  # headers alone cannot see new values


def test_only_in_one_side_and_shape_dtype(tmp_path: Path) -> None:
    base = _state()
    other = {k: v for k, v in base.items() if not k.startswith("model.layers.3.")}
    other["extra.weight"] = torch.zeros(2)
    other["model.norm.weight"] = base["model.norm.weight"].to(torch.bfloat16)
    other["lm_head.weight"] = torch.zeros(33, 8)
    result = diff(_save_sharded(base, tmp_path / "a"), _save_sharded(other, tmp_path / "b"))
    assert list(result.only_a) == sorted(k for k in base if k.startswith("model.layers.3."))
    assert list(result.only_b) == ["extra.weight"]
    # a dtype or shape change is reported once, not again as a checksum change
    assert {(c.key, c.field, c.expected, c.actual) for c in result.changed} == {
        ("model.norm.weight", "dtype", "float32", "bfloat16"),
        ("lm_head.weight", "shape", (32, 8), (33, 8)),
    }
    out = CliRunner().invoke(app, ["diff", str(tmp_path / "a"), str(tmp_path / "b")])
    assert out.exit_code == 1
    assert f"only in {tmp_path / 'a'}: 8 tensors:" in out.output and "model.layers.3." in out.output
    assert "dtype A float32, B bfloat16, 1 tensor: model.norm.weight" in out.output


def test_bin_conversion_lost_nothing(tmp_path: Path) -> None:
    state = _state()
    a = _save_sharded(state, tmp_path / "st")
    torch.save(state, tmp_path / "pytorch_model.bin")
    result = diff(a, tmp_path / "pytorch_model.bin")
    assert result.ok, result.to_dict()  # checksums are format-independent
    del state["model.layers.2.mlp.down_proj.weight"]
    torch.save(state, tmp_path / "lossy.bin")
    assert list(diff(a, tmp_path / "lossy.bin").only_a) == ["model.layers.2.mlp.down_proj.weight"]


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_dcp_against_safetensors(tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    state = _state()
    dcp.save(state, checkpoint_id=str(tmp_path / "dcp"), no_dist=True)
    assert diff(_save_sharded(state, tmp_path / "st"), tmp_path / "dcp").ok


def test_prefix_note_and_strip(tmp_path: Path) -> None:
    state = _state()
    save_file(state, tmp_path / "plain.safetensors")
    save_file({"module." + k: v for k, v in state.items()}, tmp_path / "ddp.safetensors")
    result = diff(tmp_path / "plain.safetensors", tmp_path / "ddp.safetensors")
    assert not result.ok and any("'module.'" in n and "the keys match" in n for n in result.notes)
    assert diff(tmp_path / "plain.safetensors", tmp_path / "ddp.safetensors", strip_prefix="module.").ok


def test_truncated_side_is_an_error(tmp_path: Path) -> None:
    state = _state()
    save_file(state, tmp_path / "a.safetensors")
    data = (tmp_path / "a.safetensors").read_bytes()
    (tmp_path / "b.safetensors").write_bytes(data[: len(data) - 100])
    result = diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert [e.file for e in result.errors] == [str(tmp_path / "b.safetensors")]
    assert set(result.only_a) == set(result.errors[0].cut) | set(result.errors[0].lost)


def test_cli_json_and_process(tmp_path: Path) -> None:
    state = _state()
    a = _save_sharded(state, tmp_path / "a")
    out = CliRunner().invoke(app, ["diff", str(a), str(a), "--json"])
    assert out.exit_code == 0 and json.loads(out.stdout)["ok"] is True
    run = subprocess.run([sys.executable, "-m", "shardscan", "diff", str(a), str(tmp_path / "none"), "--json"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and run.stdout == "" and "no such file" in run.stderr
