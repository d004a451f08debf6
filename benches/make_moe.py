"""A DeepSeek-V3-shaped checkpoint whose cost is all in its headers.

The key names, the layer plan (61 layers, the first 3 dense, 256 routed experts and 1 shared expert
per MoE layer, the multi-token-prediction layer stored as layer 61) and the FP8 block-scale tensors
(`weight_scale_inv` beside each quantised linear) follow the released DeepSeek-V3 checkpoint, so
the tensor count (~92k) and key lengths are real. The dimensions are tiny (transformers'
DeepseekV3Config with small widths), so the 163 shards hold a few MB: only headers are measured.

    python benches/make_moe.py OUT_DIR [--shards 163]
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

GENERATOR_VERSION = 1
MANIFEST = "bench-manifest.json"

#: Tiny widths; every count that shapes the key set keeps DeepSeek-V3's value.
TINY_DIMS = dict(vocab_size=64, hidden_size=16, intermediate_size=32, moe_intermediate_size=8,
                 num_attention_heads=2, num_key_value_heads=2, q_lora_rank=8, kv_lora_rank=8,
                 qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=4)
FP8_BLOCK = 128


def deepseek_v3_config() -> dict:
    """config.json of the tiny model: transformers' own DeepseekV3Config fields, FP8 as released."""
    from transformers import DeepseekV3Config

    cfg = DeepseekV3Config(**TINY_DIMS).to_dict()
    cfg["architectures"] = ["DeepseekV3ForCausalLM"]
    cfg["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                  "weight_block_size": [FP8_BLOCK, FP8_BLOCK]}
    return cfg


def _linear(prefix: str, out_f: int, in_f: int) -> list[tuple[str, tuple[int, ...]]]:
    scale = (math.ceil(out_f / FP8_BLOCK), math.ceil(in_f / FP8_BLOCK))
    return [(f"{prefix}.weight", (out_f, in_f)), (f"{prefix}.weight_scale_inv", scale)]


def _mlp(prefix: str, hidden: int, inter: int) -> list[tuple[str, tuple[int, ...]]]:
    return (_linear(f"{prefix}.gate_proj", inter, hidden) + _linear(f"{prefix}.up_proj", inter, hidden)
            + _linear(f"{prefix}.down_proj", hidden, inter))


def _layer(c: dict, i: int) -> list[tuple[str, tuple[int, ...]]]:
    p, h = f"model.layers.{i}", c["hidden_size"]
    heads, qk = c["num_attention_heads"], c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
    specs = [(f"{p}.input_layernorm.weight", (h,)), (f"{p}.post_attention_layernorm.weight", (h,))]
    a = f"{p}.self_attn"
    specs += _linear(f"{a}.q_a_proj", c["q_lora_rank"], h) + [(f"{a}.q_a_layernorm.weight", (c["q_lora_rank"],))]
    specs += _linear(f"{a}.q_b_proj", heads * qk, c["q_lora_rank"])
    specs += _linear(f"{a}.kv_a_proj_with_mqa", c["kv_lora_rank"] + c["qk_rope_head_dim"], h)
    specs += [(f"{a}.kv_a_layernorm.weight", (c["kv_lora_rank"],))]
    specs += _linear(f"{a}.kv_b_proj", heads * (c["qk_nope_head_dim"] + c["v_head_dim"]), c["kv_lora_rank"])
    specs += _linear(f"{a}.o_proj", h, heads * c["v_head_dim"])
    if i < c["first_k_dense_replace"]:
        return specs + _mlp(f"{p}.mlp", h, c["intermediate_size"])
    e = c["n_routed_experts"]
    specs += [(f"{p}.mlp.gate.weight", (e, h)), (f"{p}.mlp.gate.e_score_correction_bias", (e,))]
    for j in range(e):
        specs += _mlp(f"{p}.mlp.experts.{j}", h, c["moe_intermediate_size"])
    return specs + _mlp(f"{p}.mlp.shared_experts", h, c["moe_intermediate_size"] * c["n_shared_experts"])


def _mtp_extras(c: dict, i: int) -> list[tuple[str, tuple[int, ...]]]:
    p, h, v = f"model.layers.{i}", c["hidden_size"], c["vocab_size"]
    return [(f"{p}.embed_tokens.weight", (v, h)), (f"{p}.enorm.weight", (h,)), (f"{p}.hnorm.weight", (h,)),
            (f"{p}.eh_proj.weight", (h, 2 * h)), (f"{p}.shared_head.norm.weight", (h,)),
            (f"{p}.shared_head.head.weight", (v, h))]


def deepseek_v3_specs(c: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) in the released checkpoint's order: embeddings, layers 0..60, MTP layer(s), head."""
    layers = c["num_hidden_layers"]
    specs = [("model.embed_tokens.weight", (c["vocab_size"], c["hidden_size"]))]
    for i in range(layers):
        specs += _layer(c, i)
    for i in range(layers, layers + c["num_nextn_predict_layers"]):
        specs += _layer(c, i) + _mtp_extras(c, i)
    return specs + [("model.norm.weight", (c["hidden_size"],)), ("lm_head.weight", (c["vocab_size"], c["hidden_size"]))]


def _manifest_ok(path: Path, params: dict) -> bool:
    try:
        return json.loads(path.read_text())["params"] == params
    except (OSError, ValueError, KeyError):
        return False


def make_deepseek_v3(out_dir: Path, shards: int = 163) -> dict:
    """Write (or reuse) the checkpoint in out_dir; returns its manifest (tensors, shards, files)."""
    params = {"kind": "deepseek-v3", "shards": shards, "dims": TINY_DIMS, "version": GENERATOR_VERSION}
    manifest_path = out_dir / MANIFEST
    if _manifest_ok(manifest_path, params):
        return json.loads(manifest_path.read_text())

    import numpy as np
    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)
    config = deepseek_v3_config()
    specs = deepseek_v3_specs(config)
    per_shard = math.ceil(len(specs) / shards)
    weight_map, files, total = {}, [], 0
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:06d}.safetensors"  # the released spelling
        part = specs[s * per_shard:(s + 1) * per_shard]
        # FP8 weights as uint8 bytes would lose the dtype; float16 stands in (only headers matter).
        tensors = {k: np.zeros(shape, dtype=np.float32 if k.endswith("_scale_inv") else np.float16)
                   for k, shape in part}
        save_file(tensors, str(out_dir / name), metadata={"format": "pt"})
        total += sum(t.nbytes for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, name))
        files.append(name)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    manifest = {"params": params, "tensors": len(specs), "shards": shards, "files": files}
    tmp = manifest_path.with_name(manifest_path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, manifest_path)
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--shards", type=int, default=163)
    a = ap.parse_args(argv)
    man = make_deepseek_v3(a.out_dir, a.shards)
    print(f"{man['tensors']} tensors in {man['shards']} shards: {a.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
