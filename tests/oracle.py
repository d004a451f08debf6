"""Independent oracles for tests: checksums computed with the `xxhash` package over bytes that
torch or safetensors hand back, never with shardscan's own code."""

from __future__ import annotations

import xxhash


def tensor_bytes(tensor) -> bytes:
    """A torch tensor's logical bytes: row-major, little-endian (this machine's order)."""
    import torch

    flat = tensor.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def checksum(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def tensor_checksum(tensor) -> str:
    return checksum(tensor_bytes(tensor))
