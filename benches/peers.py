"""The Python programs a user would write instead of shardscan, each run as its own process.

    python benches/peers.py st-xxh FILE...       safe_open + xxhash.xxh3_128 per tensor
    python benches/peers.py torch-xxh FILE...    torch.load(mmap=True, weights_only=True) + xxh3_128
    python benches/peers.py st-headers FILE...   every tensor's dtype and shape through safe_open
    python benches/peers.py json-headers FILE... the same from the raw header with the json module

Each prints one line per tensor (file, key, digest or dtype/shape) to stdout, so the work cannot be
skipped and the digests can be compared with shardscan's. They are deliberately the obvious code,
not tuned: the point is what the straightforward approach costs, imports included.
"""

from __future__ import annotations

import sys


def _tensor_bytes(t):
    """A tensor's bytes in row-major order as a buffer, without a copy (view as uint8)."""
    import torch

    return t.reshape(-1).view(torch.uint8).numpy()


def st_xxh(paths: list[str], out) -> None:
    import xxhash
    from safetensors import safe_open

    for path in paths:
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                digest = xxhash.xxh3_128_hexdigest(_tensor_bytes(f.get_tensor(key)))
                out.write(f"{path}\t{key}\t{digest}\n")


def torch_xxh(paths: list[str], out) -> None:
    import torch
    import xxhash

    for path in paths:
        state = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
        for key, t in state.items():
            out.write(f"{path}\t{key}\t{xxhash.xxh3_128_hexdigest(_tensor_bytes(t))}\n")
        del state


def torch_headers(paths: list[str], out) -> None:
    import torch

    # mmap=True: only the pickle is read and the storages are mapped, not touched.
    for path in paths:
        state = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
        for key, t in state.items():
            out.write(f"{path}\t{key}\t{t.dtype}\t{tuple(t.shape)}\n")
        del state


def st_headers(paths: list[str], out) -> None:
    from safetensors import safe_open

    # framework="numpy" so that no torch import is charged to a header-only read.
    for path in paths:
        with safe_open(path, framework="numpy") as f:
            for key in f.keys():
                s = f.get_slice(key)
                out.write(f"{path}\t{key}\t{s.get_dtype()}\t{s.get_shape()}\n")


def json_headers(paths: list[str], out) -> None:
    import json
    import struct

    for path in paths:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for key, entry in header.items():
            if key != "__metadata__":
                out.write(f"{path}\t{key}\t{entry['dtype']}\t{entry['shape']}\n")


COMMANDS = {
    "st-xxh": st_xxh,
    "torch-xxh": torch_xxh,
    "torch-headers": torch_headers,
    "st-headers": st_headers,
    "json-headers": json_headers,
}


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 2
    COMMANDS[argv[0]](argv[1:], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
