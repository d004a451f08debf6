"""A sparse safetensors file of all-zero tensors, of any size, in the time it takes to write a header.

    python benches/make_sparse.py OUT [--tensors 8] [--tensor-size 4GiB]

safetensors' own writers build every tensor in memory first, so a 32 GiB file would need 32 GiB of
RAM; this one writes the header (exactly as safetensors lays it out) and extends the file with
ftruncate, so the data section is one hole that reads as zeros. Offsets past 4 GiB exercise the
64-bit paths of a reader. `same_as_safetensors()` checks the layout against the real library on a
small file (the bench does this untimed before it times the big one).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from pathlib import Path

from make_checkpoint import parse_size

DTYPE = "BF16"  # 2 bytes a value: the commonest dtype of released checkpoints
ITEMSIZE = 2
ALIGN = 8  # safetensors pads the header with spaces so the data section starts 8-byte aligned


def names(tensors: int) -> list[str]:
    # Zero-padded so that name order (which safetensors sorts ties by) is data order.
    return [f"layers.{i:03d}.weight" for i in range(tensors)]


def header(tensors: int, tensor_bytes: int) -> bytes:
    """The 8-byte little-endian length and the JSON header of `tensors` BF16 tensors of
    `tensor_bytes` each, laid out back to back, as safetensors writes them: compact JSON,
    "__metadata__" first, then the tensors in data order, padded with spaces to 8 bytes."""
    if tensor_bytes % (1024 * ITEMSIZE):
        raise ValueError(f"tensor size {tensor_bytes} is not a multiple of {1024 * ITEMSIZE} bytes")
    entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
    for i, name in enumerate(names(tensors)):
        entries[name] = {"dtype": DTYPE, "shape": [tensor_bytes // ITEMSIZE // 1024, 1024],
                         "data_offsets": [i * tensor_bytes, (i + 1) * tensor_bytes]}
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % ALIGN)
    return struct.pack("<Q", len(text)) + text


def write_sparse(path: Path, tensors: int, tensor_bytes: int) -> int:
    """Writes the file (reusing one of the same size and header); returns its size in bytes."""
    head = header(tensors, tensor_bytes)
    size = len(head) + tensors * tensor_bytes
    if path.exists() and path.stat().st_size == size:
        with open(path, "rb") as f:
            if f.read(len(head)) == head:
                return size
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(head)
        f.truncate(size)  # the rest is a hole: no blocks on disk, zeros when read
    os.replace(tmp, path)
    return size


def same_as_safetensors(directory: Path, tensors: int = 8, tensor_bytes: int = 64 << 10) -> str:
    """'' if a small file from write_sparse is byte for byte what safetensors' own save_file
    writes for the same zero tensors, and safe_open reads back every tensor with its shape,
    dtype and zeros; else what differs."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    ours, theirs = directory / "sparse-small.safetensors", directory / "sparse-small-ref.safetensors"
    write_sparse(ours, tensors, tensor_bytes)
    shape = (tensor_bytes // ITEMSIZE // 1024, 1024)
    save_file({n: torch.zeros(shape, dtype=torch.bfloat16) for n in names(tensors)}, str(theirs),
              metadata={"format": "pt"})
    if ours.read_bytes() != theirs.read_bytes():
        return "not byte for byte what safetensors.torch.save_file writes"
    with safe_open(str(ours), framework="pt") as f:
        if list(f.keys()) != names(tensors) or f.metadata() != {"format": "pt"}:
            return f"safe_open lists {list(f.keys())[:3]}..., metadata {f.metadata()}"
        for n in f.keys():
            t = f.get_tensor(n)
            if tuple(t.shape) != shape or str(t.dtype) != "torch.bfloat16" or bool(t.any()):
                return f"safe_open reads {n} as {t.dtype} {tuple(t.shape)}, nonzero={bool(t.any())}"
    return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--tensors", type=int, default=8)
    ap.add_argument("--tensor-size", type=parse_size, default=4 << 30)
    a = ap.parse_args(argv)
    size = write_sparse(a.out, a.tensors, a.tensor_size)
    print(f"{a.out}: {size} bytes, {a.tensors} tensors of {a.tensor_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
