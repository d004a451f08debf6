"""Every way a real checkpoint goes bad gets its documented `kind` in the JSON of check, diff
and scan: files written by safetensors and torch.save, then damaged the way interrupted saves,
bad disks and hand-edited indexes damage them."""

from __future__ import annotations

import json
import os
import shutil
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch
from typer.testing import CliRunner

from checkpoint_trees import save_sharded, state_dict, truncate
from shardscan.cli import app
from shardscan.errors import KINDS

runner = CliRunner()


def check_kinds(path: Path, *args: str) -> list[tuple[str, str]]:
    result = runner.invoke(app, ["check", "--json", *args, os.fspath(path)])
    assert result.exit_code == 1, result.output
    return sorted((Path(e["file"]).name, e["kind"]) for e in json.loads(result.output)["errors"])


def test_truncated_and_absent_shards(tmp_path):
    directory = tmp_path / "ckpt"
    save_sharded(directory, state_dict(1))
    shard = directory / "model-00002-of-00002.safetensors"
    truncate(shard, shard.stat().st_size - 40)
    assert check_kinds(directory) == [("model-00002-of-00002.safetensors", "truncated")]
    shard.unlink()
    assert check_kinds(directory) == [("model-00002-of-00002.safetensors", "absent")]


def test_an_index_naming_the_wrong_shard_and_a_tensor_in_two_files(tmp_path):
    directory = tmp_path / "ckpt"
    save_sharded(directory, state_dict(1))
    index = directory / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    key = sorted(data["weight_map"])[0]
    data["weight_map"][key] = "model-00002-of-00002.safetensors"
    index.write_text(json.dumps(data))
    assert ("model.safetensors.index.json", "misplaced") in check_kinds(directory)


def test_crc_of_a_torch_save_record(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.arange(64, dtype=torch.float32)}, path)
    with zipfile.ZipFile(path) as archive:
        record = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
    data = bytearray(path.read_bytes())
    # The local header's own name and extra lengths (torch pads the extra field to align data).
    name_len, extra_len = struct.unpack_from("<HH", data, record.header_offset + 26)
    at = record.header_offset + 30 + name_len + extra_len + 5
    data[at] ^= 0xFF  # one bit pattern flipped inside the tensor's bytes; the structure intact
    path.write_bytes(bytes(data))
    assert check_kinds(path) == [("pytorch_model.bin", "crc")]


class Opaque:
    """A class a pickle names: a file holding one must never be unpickled by a weights-only reader."""


def test_an_unsafe_global(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save(OrderedDict(w=torch.zeros(2), extra=Opaque()), path)
    assert check_kinds(path) == [("pytorch_model.bin", "unsafe-global")]


def test_unfinished_save_and_io(tmp_path):
    run = tmp_path / "run" / "checkpoint-2"
    save_sharded(run, state_dict(1))  # no trainer_state.json: the Trainer writes it last
    assert ("checkpoint-2", "unfinished") in check_kinds(run)
    unreadable = tmp_path / "model.safetensors"
    shutil.copy(run / "model-00001-of-00002.safetensors", unreadable)
    unreadable.chmod(0)
    try:
        if os.access(unreadable, os.R_OK):  # root reads anything
            return
        scanned = json.loads(runner.invoke(app, ["scan", "--json", os.fspath(unreadable)]).output)
        assert [e["kind"] for e in scanned["errors"]] == ["io"]
    finally:
        unreadable.chmod(0o644)


def test_diff_errors_carry_kinds(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    save_sharded(a, state_dict(1))
    save_sharded(b, state_dict(1))
    shard = b / "model-00001-of-00002.safetensors"
    truncate(shard, shard.stat().st_size - 16)
    result = json.loads(runner.invoke(app, ["diff", "--json", os.fspath(a), os.fspath(b)]).output)
    (error,) = result["errors"]
    assert error["file"].endswith("b/model-00001-of-00002.safetensors") and error["kind"] == "truncated"
    assert all(e["kind"] in KINDS for e in result["errors"])


def test_a_byte_flipped_after_download_is_sha256(tmp_path):
    # coreutils wrote the digests when the file was whole; one byte of tensor data changed since.
    import subprocess

    directory = tmp_path / "download"
    save_sharded(directory, state_dict(1))
    names = sorted(p.name for p in directory.iterdir())
    sums = subprocess.run(["sha256sum", *names], cwd=directory, check=True, capture_output=True, text=True).stdout
    (directory / "SHA256SUMS").write_text(sums)
    shard = directory / "model-00001-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x01
    shard.write_bytes(bytes(data))
    assert ("model-00001-of-00002.safetensors", "sha256") in check_kinds(directory)
