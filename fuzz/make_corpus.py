"""Writes the fuzzers' seed corpus: small real files made by safetensors and torch.

    python fuzz/make_corpus.py [OUT_DIR]      (default: fuzz/corpus)

One folder per target: safetensors/, zip/ (torch.save archives, and the archives of
tests/hostile/make_zips.py that torch would read differently), pickle/ (their data.pkl),
legacy/ (legacy torch.save files, whole and cut), dcp/ (a torch.distributed.checkpoint
.metadata), hash/ (hashing jobs over a small file, in the encoding fuzz/fuzz_hash.c
describes). Deterministic, a few KiB in all, so it can be regenerated and kept in the
repository.
"""

from __future__ import annotations

import io
import sys
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import save as st_save

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hostile.make_safetensors import CASES, VALID  # noqa: E402
from hostile.make_zips import cases as zip_differentials  # noqa: E402


def state_dicts() -> dict[str, dict]:
    gen = torch.Generator().manual_seed(0)
    return {
        "mixed": {"w": torch.randn(3, 4, generator=gen), "b": torch.zeros(4, dtype=torch.bfloat16),
                  "i": torch.arange(5), "flag": torch.tensor(True), "empty": torch.empty(0, 3)},
        "one": {"x": torch.ones(2, dtype=torch.float16)},
        "views": {"t": torch.arange(12.0).reshape(3, 4).t(), "row": torch.arange(6.0)[2:5]},
    }


def main(out: Path) -> None:
    dirs = {name: out / name for name in ("safetensors", "zip", "pickle", "legacy", "dcp", "hash", "index")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    (dirs["safetensors"] / "valid").write_bytes(VALID)
    for case in CASES[::6]:  # a spread of hostile ones: the fuzzer mutates from near each rule
        (dirs["safetensors"] / f"hostile-{case.name}").write_bytes(case.data[:4096])
    for name, sd in state_dicts().items():
        # safetensors refuses shared / non-contiguous tensors: save contiguous copies.
        (dirs["safetensors"] / name).write_bytes(st_save({k: v.contiguous().clone() for k, v in sd.items()}))
        buf = io.BytesIO()
        torch.save(sd, buf)
        blob = buf.getvalue()
        (dirs["zip"] / name).write_bytes(blob)
        (dirs["zip"] / f"{name}-cut").write_bytes(blob[: len(blob) * 2 // 3])
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
            (dirs["pickle"] / name).write_bytes(z.read(pkl))
        legacy = _legacy_file(sd)
        (dirs["legacy"] / name).write_bytes(legacy)
        (dirs["legacy"] / f"{name}-cut").write_bytes(legacy[:-3])  # inside the last storage
    for case in zip_differentials():  # archives torch would read differently: seeds near those rules
        (dirs["zip"] / f"differential-{case.name}").write_bytes(case.data)
    (dirs["pickle"] / "ordered").write_bytes(_plain_pickle())
    _dcp_metadata(dirs["dcp"])
    _hash_jobs(dirs["hash"])
    _indexes(dirs["index"])


def _indexes(out: Path) -> None:
    """Seeds for fuzz_index.c: shard indexes written by huggingface_hub's sharded save."""
    import tempfile

    from huggingface_hub import save_torch_state_dict

    for name, sd in state_dicts().items():
        with tempfile.TemporaryDirectory() as tmp:
            tensors = {k: v.contiguous().clone() for k, v in sd.items()}
            save_torch_state_dict(tensors, tmp, max_shard_size=8, force_contiguous=True)
            index = Path(tmp, "model.safetensors.index.json")
            if index.exists():
                (out / name).write_bytes(index.read_bytes())


def _hash_jobs(out: Path) -> None:
    """Seeds for fuzz_hash.c: jobs near the shapes the readers make, over 256 file bytes."""
    import struct

    file = bytes(range(256))
    run = lambda offset, n: struct.pack("<HH", offset, n)  # noqa: E731
    strided = lambda offset, dims: struct.pack("<BH", len(dims), offset) + b"".join(  # noqa: E731
        struct.pack("<bh", d, s) for d, s in dims)
    contiguous = lambda offset, n: struct.pack("<BHH", 0, offset, n)  # noqa: E731
    # Per job: flags (1 swap, 2 CRC), itemsize, value kind (1 F64, 2 F32, 3 F16, 4 BF16, 5 E5M2,
    # 6 E4M3FN, 7 C64), segment count.
    seeds = {
        # a transposed 3x4 float32 view, swapped, with a CRC of the stored bytes
        "transpose-swapped": bytes([0, 3, 4, 2, 1]) + strided(16, [(4, 4), (3, 16)]),
        # a big-endian run of float64 and a plain run of float8, on two threads
        "runs": bytes([4 | 1, 1, 8, 1, 0]) + run(8, 64) + bytes([2, 1, 5, 0]) + run(100, 33),
        # a bfloat16 job of three segments: an expanded view, a run, a 3-d slice
        "mixed": bytes([0, 1, 2, 4, 3]) + strided(0, [(5, 0)]) + contiguous(32, 16) + strided(64, [(2, 48), (3, 8), (2, 2)]),
    }
    for name, jobs in seeds.items():
        (out / name).write_bytes(jobs + file)


def _legacy_file(sd: dict) -> bytes:
    """sd saved in the legacy layout, its storage keys (memory addresses) renamed by rank to
    digits of the same length, so the file is the same on every run."""
    import pickletools

    buf = io.BytesIO()
    torch.save(sd, buf, _use_new_zipfile_serialization=False)
    blob = buf.getvalue()
    buf.seek(0)
    for _ in range(5):  # magic, version, sys_info, object, key list
        for _op in pickletools.genops(buf):
            pass
    pickles, data = blob[: buf.tell()], blob[buf.tell() :]
    keys = sorted({str(t.untyped_storage()._cdata) for t in sd.values()})
    assert len({len(k) for k in keys}) == 1, "keys of one length keep their order when renamed"
    for rank, key in enumerate(keys):
        size = len(key).to_bytes(4, "little")
        pickles = pickles.replace(b"X" + size + key.encode(), b"X" + size + f"{rank:0{len(key)}d}".encode())
    return pickles + data


def _plain_pickle() -> bytes:
    import pickle

    return pickle.dumps(OrderedDict(a=1, b=[1.5, "x", None], c={"d": (1, 2)}), protocol=2)


def _dcp_metadata(out: Path) -> None:
    import torch.distributed.checkpoint as dcp

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # single process, no process group: torch warns
        dcp.save(state_dicts()["mixed"] | {"step": 7}, checkpoint_id=tmp)
        (out / "mixed").write_bytes((Path(tmp) / ".metadata").read_bytes())


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("corpus"))
