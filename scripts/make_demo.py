"""Builds the demo checkpoint: a tiny 28-layer Qwen2 (random weights, built offline from a
config, no download) saved by transformers' save_pretrained in safetensors shards, whose last
shard is then cut short, as an interrupted save leaves it.

    python scripts/make_demo.py DIR
"""

import sys
from pathlib import Path


def main(out: Path) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=28,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out, max_shard_size="1MB", safe_serialization=True)
    last = sorted(out.glob("model-*.safetensors"))[-1]
    size = last.stat().st_size
    with open(last, "r+b") as f:
        f.truncate(size * 2 // 5)
    print(f"demo checkpoint: {out} ({len(list(out.glob('*.safetensors')))} shards; {last.name} cut from {size} to {size * 2 // 5} bytes)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
