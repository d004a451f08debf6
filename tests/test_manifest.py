"""Manifests written at save time: a checkpoint checks clean against its own manifest, and a
flipped byte anywhere in its resume set, a lost or resized file, fails it."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import xxhash
from safetensors.torch import save_file

import shardscan
from shardscan.errors import FormatError
from shardscan.manifest import METADATA_KEY


def trainer_like(directory: Path, step: int = 5) -> Path:
    """A checkpoint-N directory written the way the HF Trainer writes one (real torch objects)."""
    path = directory / f"checkpoint-{step}"
    path.mkdir(parents=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    save_file(model.state_dict(), path / "model.safetensors")
    torch.save(optimizer.state_dict(), path / "optimizer.pt")
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()},
               path / "rng_state.pth")
    (path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = trainer_like(tmp_path)
    shardscan.write_manifest(path)
    return path


def test_a_checkpoint_checks_clean_against_its_manifest(checkpoint: Path) -> None:
    report = shardscan.check(checkpoint)
    assert report.ok, report.to_dict()
    assert "manifest shardscan.manifest.parquet" in report.layouts


def test_the_manifest_covers_the_resume_set(checkpoint: Path) -> None:
    table = pq.read_table(checkpoint / "shardscan.manifest.parquet")
    assert set(table.column("file").to_pylist()) == {"model.safetensors", "optimizer.pt", "rng_state.pth"}
    metadata = json.loads(table.schema.metadata[METADATA_KEY])
    assert metadata["version"] == 1
    digests = {e["name"]: e["xxh3_128"] for e in metadata["files"]}
    # the oracle: the xxhash package over the file's bytes
    assert digests == {name: xxhash.xxh3_128_hexdigest((checkpoint / name).read_bytes())
                       for name in ("config.json", "trainer_state.json")}
    rows = {(f, k): c for f, k, c in zip(table.column("file").to_pylist(), table.column("key").to_pylist(),
                                          table.column("checksum").to_pylist())}
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    exp_avg = state["state"][0]["exp_avg"].contiguous()
    assert rows[("optimizer.pt", "state.0.exp_avg")] == xxhash.xxh3_128_hexdigest(exp_avg.numpy().tobytes())


def test_a_flipped_byte_in_an_optimizer_tensor_fails(checkpoint: Path) -> None:
    table = shardscan.scan(checkpoint / "optimizer.pt")
    offset = table.column("offset").to_pylist()[table.column("key").to_pylist().index("state.0.exp_avg")]
    flip(checkpoint / "optimizer.pt", offset + 1)
    report = shardscan.check(checkpoint, hash=True)
    assert not report.ok
    # the CRC-32 torch wrote for the record catches it too; the manifest names the tensor
    assert any(m.key == "optimizer.pt:state.0.exp_avg" and m.field == "checksum" for m in report.mismatched)


def test_a_flipped_byte_in_a_json_file_fails(checkpoint: Path) -> None:
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 5, "x": 1}))
    report = shardscan.check(checkpoint)
    assert not report.ok
    [error] = [e for e in report.errors if e.file == "trainer_state.json"]
    assert "changed since the manifest was written" in error.error


def test_a_lost_file_fails(checkpoint: Path) -> None:
    (checkpoint / "config.json").unlink()
    report = shardscan.check(checkpoint)
    assert [(e.file, e.error) for e in report.errors] == [("config.json", "absent: the manifest lists it")]


def test_a_checkpoint_that_does_not_scan_clean_gets_no_manifest(tmp_path: Path) -> None:
    path = trainer_like(tmp_path)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[:-4])
    with pytest.raises(FormatError, match="not writing a manifest"):
        shardscan.write_manifest(path)
    assert not (path / "shardscan.manifest.parquet").exists()


def test_a_file_checkpoint_gets_its_manifest_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "epoch=0-step=10.ckpt"
    torch.save({"state_dict": torch.nn.Linear(3, 2).state_dict(), "global_step": 10}, path)
    written = shardscan.write_manifest(path)
    assert written == tmp_path / "epoch=0-step=10.ckpt.shardscan.manifest.parquet"
    assert shardscan.check(path).ok
    table = shardscan.scan(path)
    flip(path, table.column("offset").to_pylist()[0])
    report = shardscan.check(path)
    assert not report.ok and report.mismatched
