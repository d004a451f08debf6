"""Generate benchmark checkpoints: an LLM-shaped sharded checkpoint, and many-tiny-tensor files.

    python benches/make_checkpoint.py llm OUT_DIR --size 4GiB [--shard-size 1GiB] [--no-bin]
    python benches/make_checkpoint.py many OUT_FILE --count 100000

`llm` writes, from one state dict:
  OUT_DIR/model-0000k-of-0000n.safetensors + model.safetensors.index.json   (real safetensors library)
  OUT_DIR/bin/pytorch_model-0000k-of-0000n.bin + pytorch_model.bin.index.json   (real torch.save)
The two formats sit in separate directories so that a directory scan of OUT_DIR sees only safetensors.

The tensor mix follows a Llama-style decoder (a large bf16 embedding and lm_head, per layer four
attention projections, three MLP projections and two norms, a final norm), with the width picked
from the requested size and the depth filling the rest. Tensor bytes are random (15 of every 16
bits) so no layer of the stack (filesystem, page cache, hash) can profit from compressibility or
repetition; the top exponent bit of each bf16 is cleared so that, like real weights, no value is
NaN or Inf (a checkpoint full of them is one `check` rightly fails).

A manifest (bench-manifest.json) records the parameters; a second call with the same parameters
reuses the files instead of rewriting gigabytes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "bench-manifest.json"
# Bump when the layout of generated files changes, so stale workdirs are regenerated.
GENERATOR_VERSION = 2

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gib": 1 << 30, "kb": 10**3, "mb": 10**6, "gb": 10**9}


def parse_size(text: str) -> int:
    """'4GiB' -> 4294967296; '512MiB', '3MB', '1.5g' and plain byte counts also work."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 4GiB, 512MiB, 3MB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass(frozen=True)
class Shape:
    """Width parameters of the generated decoder."""

    vocab: int
    hidden: int
    intermediate: int
    kv_hidden: int


# Widths from real model families (TinyLlama-1.1B, a Llama-7B-like, and two miniatures for small
# sizes), chosen so that the embedding stays a few percent of the checkpoint, as in real LLMs.
_SHAPES = [
    (3 << 30, Shape(vocab=32000, hidden=4096, intermediate=11008, kv_hidden=4096)),
    (256 << 20, Shape(vocab=32000, hidden=2048, intermediate=5632, kv_hidden=256)),
    (16 << 20, Shape(vocab=8000, hidden=512, intermediate=1408, kv_hidden=128)),
    (0, Shape(vocab=1000, hidden=128, intermediate=352, kv_hidden=32)),
]


def llm_tensor_specs(target_bytes: int) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes (all bf16) of a decoder whose total size is close to target_bytes."""
    shape = next(s for floor, s in _SHAPES if target_bytes >= floor)
    h, i, kv, v = shape.hidden, shape.intermediate, shape.kv_hidden, shape.vocab
    layer = [
        ("self_attn.q_proj.weight", (h, h)),
        ("self_attn.k_proj.weight", (kv, h)),
        ("self_attn.v_proj.weight", (kv, h)),
        ("self_attn.o_proj.weight", (h, h)),
        ("mlp.gate_proj.weight", (i, h)),
        ("mlp.up_proj.weight", (i, h)),
        ("mlp.down_proj.weight", (h, i)),
        ("input_layernorm.weight", (h,)),
        ("post_attention_layernorm.weight", (h,)),
    ]
    per_layer = sum(2 * _numel(s) for _, s in layer)
    fixed = 2 * (2 * v * h + h)  # embed_tokens + lm_head + final norm
    layers = max(1, round((target_bytes - fixed) / per_layer))
    specs = [("model.embed_tokens.weight", (v, h))]
    for n in range(layers):
        specs += [(f"model.layers.{n}.{name}", s) for name, s in layer]
    specs += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return specs


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _split_shards(specs, shard_bytes: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Greedy split in tensor order, like transformers' save_pretrained(max_shard_size=...)."""
    shards: list[list] = [[]]
    used = 0
    for name, shape in specs:
        nbytes = 2 * _numel(shape)
        if shards[-1] and used + nbytes > shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append((name, shape))
        used += nbytes
    return shards


def _random_bf16(gen, shape: tuple[int, ...]):
    """A bf16 tensor of random finite values (|x| < 2), made without Python-level loops.

    SFC64's raw output is the fastest incompressible source numpy has (~1.8 GB/s here, against
    ~0.2 GB/s for os.urandom); the uint64 array is reinterpreted in place, not copied.
    """
    import numpy as np
    import torch

    nbytes = 2 * _numel(shape)
    words = gen.random_raw((nbytes + 7) // 8)
    words &= np.uint64(0xBFFF_BFFF_BFFF_BFFF)  # bit 14 of each bf16: the exponent's top bit
    flat = torch.from_numpy(words.view(np.uint8))
    if flat.numel() != nbytes:
        # Cloning drops the slack: torch.save writes whole storages, not views.
        flat = flat[:nbytes].clone()
    return flat.view(torch.bfloat16).reshape(shape)


def _manifest_matches(path: Path, params: dict) -> bool:
    try:
        return json.loads(path.read_text())["params"] == params
    except (OSError, ValueError, KeyError):
        return False


def llama_config(size: int) -> dict:
    """A Llama config.json describing exactly the tensors llm_tensor_specs(size) writes, so that
    `check` can build the expected layout from the architecture (structurally or with
    transformers on the meta device)."""
    shape = next(s for floor, s in _SHAPES if size >= floor)
    specs = llm_tensor_specs(size)
    layers = sum(1 for name, _ in specs if name.endswith(".input_layernorm.weight"))
    head_dim = 128 if shape.hidden >= 512 else 32
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16",
        "vocab_size": shape.vocab, "hidden_size": shape.hidden, "intermediate_size": shape.intermediate,
        "num_hidden_layers": layers, "num_attention_heads": shape.hidden // head_dim,
        "num_key_value_heads": shape.kv_hidden // head_dim, "head_dim": head_dim,
        "tie_word_embeddings": False, "rms_norm_eps": 1e-5,
    }


def make_llm(out_dir: Path, size: int, shard_size: int = 1 << 30, with_bin: bool = True,
             seed: int = 0, quiet: bool = False) -> dict:
    """Write (or reuse) an LLM-like checkpoint; return the manifest (files, bytes, tensor count)."""
    params = {"kind": "llm", "size": size, "shard_size": shard_size, "bin": with_bin, "seed": seed,
              "version": GENERATOR_VERSION}
    manifest_path = out_dir / MANIFEST
    if _manifest_matches(manifest_path, params):
        _write_json(out_dir / "config.json", llama_config(size))  # cheap; older sets lacked it
        return json.loads(manifest_path.read_text())

    import numpy as np
    import torch
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)  # a half-written set must never look complete
    bin_dir = out_dir / "bin"
    if with_bin:
        bin_dir.mkdir(exist_ok=True)

    specs = llm_tensor_specs(size)
    shards = _split_shards(specs, shard_size)
    n = len(shards)
    gen = np.random.SFC64(seed)
    st_map: dict[str, str] = {}
    bin_map: dict[str, str] = {}
    total = 0
    t0 = time.perf_counter()
    # One shard in memory at a time, so an 8 GiB checkpoint needs ~1 GiB of RAM, not 8.
    for k, shard in enumerate(shards, start=1):
        tensors = {name: _random_bf16(gen, shape) for name, shape in shard}
        st_name = f"model-{k:05d}-of-{n:05d}.safetensors"
        save_file(tensors, str(out_dir / st_name), metadata={"format": "pt"})
        st_map.update(dict.fromkeys(tensors, st_name))
        if with_bin:
            bin_name = f"pytorch_model-{k:05d}-of-{n:05d}.bin"
            torch.save(tensors, bin_dir / bin_name)
            bin_map.update(dict.fromkeys(tensors, bin_name))
        total += sum(t.numel() * 2 for t in tensors.values())
        del tensors
        if not quiet:
            print(f"  shard {k}/{n} written ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)

    _write_json(out_dir / "model.safetensors.index.json",
                {"metadata": {"total_size": total}, "weight_map": st_map})
    _write_json(out_dir / "config.json", llama_config(size))
    if with_bin:
        _write_json(bin_dir / "pytorch_model.bin.index.json",
                    {"metadata": {"total_size": total}, "weight_map": bin_map})
    # Dirty pages cannot be evicted by posix_fadvise(DONTNEED); flush them now so cold runs
    # really start cold.
    os.sync()

    st_files = sorted(out_dir.glob("model-*.safetensors"))
    bin_files = sorted(bin_dir.glob("pytorch_model-*.bin")) if with_bin else []
    manifest = {
        "params": params,
        "tensors": len(specs),
        "tensor_bytes": total,
        "safetensors": [p.name for p in st_files],
        "safetensors_bytes": sum(p.stat().st_size for p in st_files),
        "bin": [f"bin/{p.name}" for p in bin_files],
        "bin_bytes": sum(p.stat().st_size for p in bin_files),
    }
    _write_json(manifest_path, manifest)  # last: its presence means the set is complete
    return manifest


def make_many(out_file: Path, count: int, seed: int = 0) -> dict:
    """Write (or reuse) one safetensors file of `count` tiny float32 tensors (header-dominated)."""
    params = {"kind": "many", "count": count, "seed": seed, "version": GENERATOR_VERSION}
    manifest_path = out_file.with_name(out_file.name + "." + MANIFEST)
    if out_file.exists() and _manifest_matches(manifest_path, params):
        return json.loads(manifest_path.read_text())

    import numpy as np
    from safetensors.numpy import save_file

    out_file.parent.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)
    rng = np.random.default_rng(seed)
    # Names shaped like a deep model's so the header's key lengths are realistic (~40 bytes).
    block = rng.random((count, 4), dtype=np.float32)
    tensors = {f"model.layers.{k // 8}.block.{k % 8}.weight": block[k] for k in range(count)}
    save_file(tensors, str(out_file))
    os.sync()
    manifest = {"params": params, "tensors": count, "bytes": out_file.stat().st_size}
    _write_json(manifest_path, manifest)
    return manifest


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="kind", required=True)
    llm = sub.add_parser("llm", help="sharded LLM-like checkpoint, safetensors + torch .bin")
    llm.add_argument("out_dir", type=Path)
    llm.add_argument("--size", type=parse_size, default=4 << 30, help="total tensor bytes (default 4GiB)")
    llm.add_argument("--shard-size", type=parse_size, default=1 << 30, help="max bytes per shard (default 1GiB)")
    llm.add_argument("--no-bin", action="store_true", help="skip the torch.save copy")
    llm.add_argument("--seed", type=int, default=0)
    many = sub.add_parser("many", help="one safetensors file of COUNT tiny tensors")
    many.add_argument("out_file", type=Path)
    many.add_argument("--count", type=int, required=True)
    many.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.kind == "llm":
        m = make_llm(args.out_dir, args.size, args.shard_size, not args.no_bin, args.seed)
    else:
        m = make_many(args.out_file, args.count, args.seed)
    print(json.dumps({k: v for k, v in m.items() if k != "params"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
