"""Builds the demo checkpoint: a tiny 28-layer Qwen2 with random weights, laid out as
transformers' save_pretrained(max_shard_size="1MB") lays it out (config.json, safetensors
shards in state_dict order, model.safetensors.index.json), then cuts its last shard short, as
an interrupted save leaves it. It needs only numpy and safetensors: the demo's set-up installs
no torch. tests/test_demo.py has transformers load the uncut checkpoint to prove the layout.

    python scripts/make_demo.py DIR [--whole]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

#: As transformers 5 writes Qwen2Config(**these) to config.json, less the defaults.
CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "vocab_size": 1024,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 28,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
    "dtype": "float32",
}
MAX_SHARD_BYTES = 1_000_000  # "1MB": transformers counts in decimal units


def qwen2_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Qwen2ForCausalLM's state_dict, in its order; lm_head is tied to the embedding, so it
    is not saved."""
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    head_dim = hidden // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim
    shapes = {"model.embed_tokens.weight": (config["vocab_size"], hidden)}
    for i in range(config["num_hidden_layers"]):
        layer = f"model.layers.{i}"
        for name, rows in (("q_proj", hidden), ("k_proj", kv), ("v_proj", kv)):
            shapes[f"{layer}.self_attn.{name}.weight"] = (rows, hidden)
            shapes[f"{layer}.self_attn.{name}.bias"] = (rows,)
        shapes[f"{layer}.self_attn.o_proj.weight"] = (hidden, hidden)
        shapes[f"{layer}.mlp.gate_proj.weight"] = (inner, hidden)
        shapes[f"{layer}.mlp.up_proj.weight"] = (inner, hidden)
        shapes[f"{layer}.mlp.down_proj.weight"] = (hidden, inner)
        shapes[f"{layer}.input_layernorm.weight"] = (hidden,)
        shapes[f"{layer}.post_attention_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    return shapes


def shard(sizes: dict[str, int], limit: int) -> list[list[str]]:
    """save_pretrained's split: tensors in order, a new shard when the next would overflow it."""
    shards: list[list[str]] = [[]]
    used = 0
    for key, size in sizes.items():
        if shards[-1] and used + size > limit:
            shards.append([])
            used = 0
        shards[-1].append(key)
        used += size
    return shards


def write_checkpoint(out: Path) -> list[Path]:
    """Writes the whole checkpoint into `out`; returns its shards in order."""
    rng = np.random.default_rng(0)
    tensors = {
        key: (np.ones(shape, np.float32) if key.endswith("norm.weight")
              else (rng.standard_normal(shape) * 0.02).astype(np.float32))
        for key, shape in qwen2_shapes(CONFIG).items()
    }
    groups = shard({k: t.nbytes for k, t in tensors.items()}, MAX_SHARD_BYTES)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    weight_map, paths = {}, []
    for number, keys in enumerate(groups, 1):
        name = f"model-{number:05d}-of-{len(groups):05d}.safetensors"
        save_file({k: tensors[k] for k in keys}, out / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, name))
        paths.append(out / name)
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return paths


def main(out: Path, whole: bool = False) -> None:
    shards = write_checkpoint(out)
    if whole:
        print(f"demo checkpoint: {out} ({len(shards)} shards)")
        return
    last = shards[-1]
    size = last.stat().st_size
    with open(last, "r+b") as f:
        f.truncate(size * 2 // 5)
    print(f"demo checkpoint: {out} ({len(shards)} shards; {last.name} cut from {size} to {size * 2 // 5} bytes)")


if __name__ == "__main__":
    args = sys.argv[1:]
    whole = "--whole" in args
    args = [a for a in args if a != "--whole"]
    if len(args) != 1:
        sys.exit(__doc__)
    main(Path(args[0]), whole)
