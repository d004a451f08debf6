"""Files that are not what their names say: each is built by the tool that really makes such
a file (git-lfs's pointer format, an HTTP server's error page, gzip, tarfile, zstandard,
zipfile, numpy, gguf, torch.onnx.export, torch.jit.save), saved as model.safetensors or
pytorch_model.bin, and must get one line naming what it is, with its `kind` in JSON, from
scan, check, audit and latest. The safetensors library is the oracle that none is a valid
file. Nothing from any file is loaded, imported or executed."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import zipfile
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from shardscan.cli import app
from shardscan.errors import KINDS
from shardscan.formats import wrong

runner = CliRunner()


def lfs_pointer_of(content: bytes) -> bytes:
    # git-lfs's pointer, byte for byte as `git lfs pointer` and the clean filter write it
    # (docs/spec.md of git-lfs: version, then keys sorted, each line ending in "\n").
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(content).hexdigest()}\n"
            f"size {len(content)}\n").encode()


def real_safetensors(tmp: Path) -> bytes:
    path = tmp / "real.safetensors"
    save_file({"w": torch.arange(300, dtype=torch.float32).reshape(10, 30)}, path)
    return path.read_bytes()


def big_lfs_pointer(tmp: Path) -> bytes:
    # What a clone without git-lfs leaves for a 4.9 GB shard: the pointer names its size.
    head = lfs_pointer_of(b"")
    return head.replace(b"size 0\n", b"size 4900000000\n")


def html_error_page(tmp: Path) -> bytes:
    # The page Python's own HTTP server sends with an error: what a proxy in front of the
    # hub answers with, saved by `wget -O model.safetensors` as if it were the file.
    text = BaseHTTPRequestHandler.error_message_format % {
        "code": 502, "message": "Bad Gateway", "explain": "Invalid responses from another server/proxy."}
    return text.encode()


def json_error(tmp: Path) -> bytes:
    return json.dumps({"error": "Repository Not Found for url: https://huggingface.co/api/models/org/name."}).encode()


def xml_error(tmp: Path) -> bytes:
    # S3's answer to an expired presigned URL.
    return (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
            b"<Message>Request has expired</Message></Error>")


def gzip_file(tmp: Path) -> bytes:
    return gzip.compress(real_safetensors(tmp))


def tar_file(tmp: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(_saved(tmp), "model.safetensors")
    return buffer.getvalue()


def _saved(tmp: Path) -> Path:
    real_safetensors(tmp)
    return tmp / "real.safetensors"


def zstd_file(tmp: Path) -> bytes:
    zstandard = pytest.importorskip("zstandard")
    return zstandard.ZstdCompressor().compress(real_safetensors(tmp))


def plain_zip(tmp: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model/config.json", "{}")
        archive.write(_saved(tmp), "model/model.safetensors")
    return buffer.getvalue()


def gguf_file(tmp: Path) -> bytes:
    gguf = pytest.importorskip("gguf")
    path = tmp / "model.gguf"
    writer = gguf.GGUFWriter(os.fspath(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def onnx_file(tmp: Path) -> bytes:
    path = tmp / "model.onnx"
    try:
        torch.onnx.export(torch.nn.Linear(4, 2), (torch.zeros(1, 4),), os.fspath(path), dynamo=False)
    except Exception as exc:  # the exporter needs the onnx package
        pytest.skip(f"torch.onnx.export: {exc}")
    return path.read_bytes()


def npy_file(tmp: Path) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.arange(12, dtype=np.float32).reshape(3, 4))
    return buffer.getvalue()


def npz_file(tmp: Path) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, weight=np.ones((3, 4), dtype=np.float32), bias=np.zeros(3, dtype=np.float32))
    return buffer.getvalue()


def npz_compressed(tmp: Path) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, weight=np.ones((3, 4), dtype=np.float32))
    return buffer.getvalue()


def torchscript(tmp: Path) -> bytes:
    path = tmp / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 2)), path)
    return path.read_bytes()


#: (id, builder, kind, words the line must hold)
CASES: list[tuple[str, Callable[[Path], bytes], str, str]] = [
    ("lfs", lambda tmp: lfs_pointer_of(real_safetensors(tmp)), "lfs-pointer",
     "a Git LFS pointer to a 1.3 kB file, not the file itself: run git lfs pull"),
    ("lfs-4.9GB", big_lfs_pointer, "lfs-pointer", "a Git LFS pointer to a 4.9 GB file, not the file itself: run git lfs pull"),
    ("html", html_error_page, "html", "an HTML page titled 'Error response', not a checkpoint"),
    ("json", json_error, "json", "JSON text, not a checkpoint"),
    ("xml", xml_error, "xml", "XML text, not a checkpoint"),
    ("gzip", gzip_file, "gzip", "a gzip-compressed file, not a checkpoint: decompress it"),
    ("tar", tar_file, "tar", "a tar archive, not a checkpoint: extract it"),
    ("zstd", zstd_file, "zstd", "a zstd-compressed file, not a checkpoint: decompress it"),
    ("zip", plain_zip, "zip", "a zip archive without data.pkl, not a torch.save checkpoint"),
    ("gguf", gguf_file, "gguf", "a GGUF v3 model (llama.cpp), not a safetensors or torch checkpoint"),
    ("onnx", onnx_file, "onnx", "an ONNX model (protobuf ModelProto), not a safetensors or torch checkpoint"),
    ("npy", npy_file, "npy", "a numpy .npy array (numpy.save), not a checkpoint"),
    ("npz", npz_file, "npz", "a numpy .npz archive (numpy.savez), not a checkpoint"),
    ("npz-compressed", npz_compressed, "npz", "a numpy .npz archive (numpy.savez), not a checkpoint"),
    ("torchscript", torchscript, "torchscript", "a TorchScript archive (torch.jit.save), not a torch.save checkpoint"),
    ("empty", lambda tmp: b"", "empty", "an empty file (0 bytes)"),
]
NAMES = ["model.safetensors", "pytorch_model.bin"]


@pytest.fixture(params=CASES, ids=[c[0] for c in CASES])
def case(request, tmp_path) -> tuple[bytes, str, str]:
    _, build, kind, words = request.param
    return build(tmp_path), kind, words


def safetensors_refuses(path: Path) -> bool:
    """The safetensors library's verdict (it parses the header; no tensor is read)."""
    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            list(handle.keys())
    except (SafetensorError, OSError, ValueError):
        return True
    return False


def only_line(output: str) -> str:
    """The one line that says what failed (check closes with a summary line of its own)."""
    (line,) = [line for line in output.splitlines() if "FAILED" in line and "file error" not in line]
    return line


@pytest.mark.parametrize("name", NAMES)
def test_scan_and_check_name_the_wrong_file(case, name, tmp_path):
    data, kind, words = case
    path = tmp_path / name
    path.write_bytes(data)
    assert safetensors_refuses(path)

    scanned = runner.invoke(app, ["scan", os.fspath(path)])
    assert scanned.exit_code == 1
    line = only_line(scanned.output)
    assert line.startswith(f"{path}: FAILED ") and words in line
    scanned_json = json.loads(runner.invoke(app, ["scan", "--json", os.fspath(path)]).output)
    assert [(e["kind"], words in e["error"]) for e in scanned_json["errors"]] == [(kind, True)]

    assert words in only_line(runner.invoke(app, ["check", os.fspath(path)]).output)
    checked = runner.invoke(app, ["check", "--json", os.fspath(path)])
    assert checked.exit_code == 1
    errors = json.loads(checked.output)["errors"]
    assert [(e["file"], e["kind"]) for e in errors] == [(os.fspath(path), kind)] and words in errors[0]["error"]
    assert kind in KINDS


@pytest.mark.parametrize("size", [1 << 20, wrong.ZERO_SCAN_LIMIT + (1 << 20)], ids=["scanned-whole", "sampled"])
def test_preallocated_files_are_zeros(size, tmp_path):
    # Download managers and `fallocate` reserve the whole size before writing; a crash
    # leaves a file of the right length holding nothing but zeros (here sparse: no disk used).
    path = tmp_path / "model.safetensors"
    with open(path, "wb") as handle:
        handle.truncate(size)
    assert safetensors_refuses(path)
    checked = json.loads(runner.invoke(app, ["check", "--json", os.fspath(path)]).output)
    (error,) = checked["errors"]
    assert error["kind"] == "zeros" and "is zero" in error["error"] and "preallocated" in error["error"]


def test_a_file_zero_except_at_its_end_is_no_preallocated_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(bytes(1 << 20) + b"\x01")
    error, = json.loads(runner.invoke(app, ["scan", "--json", os.fspath(path)]).output)["errors"]
    assert error["kind"] != "zeros"


def test_a_real_checkpoint_is_no_wrong_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(real_safetensors(tmp_path))
    assert runner.invoke(app, ["check", os.fspath(path)]).exit_code == 0


def trainer_run(tmp_path: Path, bad: bytes) -> Path:
    """Two Trainer checkpoints whose files are real, the newer one's weights replaced by `bad`."""
    run = tmp_path / "run"
    for step in (2, 4):
        checkpoint = run / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        save_file({"w": torch.full((4, 4), float(step))}, checkpoint / "model.safetensors")
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (run / "checkpoint-4" / "model.safetensors").write_bytes(bad)
    return run


def test_audit_and_latest_name_the_wrong_file(tmp_path):
    run = trainer_run(tmp_path, html_error_page(tmp_path))
    audited = runner.invoke(app, ["audit", "--json", os.fspath(run)])
    rows = {Path(r["path"]).name: r for r in json.loads(audited.output)["checkpoints"]}
    assert rows["checkpoint-2"]["ok"] and rows["checkpoint-2"]["kinds"] == []
    assert rows["checkpoint-4"]["kinds"] == ["html"]
    (error,) = rows["checkpoint-4"]["file_errors"]
    assert error["kind"] == "html" and error["error"].startswith("an HTML page titled 'Error response'")
    assert any("an HTML page" in p for p in rows["checkpoint-4"]["problems"])

    picked = runner.invoke(app, ["latest", "--json", os.fspath(run)])
    latest = json.loads(picked.output)
    assert Path(latest["path"]).name == "checkpoint-2"
    (rejected,) = latest["rejected"]
    assert "an HTML page titled 'Error response'" in rejected["problem"]
    assert rejected["kinds"] == ["html"]


def test_variants_real_downloads_produce(tmp_path):
    # A pointer checked out with core.autocrlf, and a long page whose first 4 KiB end inside
    # a multi-byte character: still what they are.
    crlf = tmp_path / "crlf" / "model.safetensors"
    crlf.parent.mkdir()
    crlf.write_bytes(lfs_pointer_of(b"x" * 5000).replace(b"\n", b"\r\n"))
    page = tmp_path / "page" / "model.safetensors"
    page.parent.mkdir()
    page.write_bytes(("<!DOCTYPE html><html><head><title>Fehler – Zugriff verweigert</title></head><body>"
                      + "ä" * 5000 + "</body></html>").encode())
    for path, kind, words in ((crlf, "lfs-pointer", "to a 5.0 kB file"), (page, "html", "Fehler – Zugriff verweigert")):
        (error,) = json.loads(runner.invoke(app, ["scan", "--json", os.fspath(path)]).output)["errors"]
        assert error["kind"] == kind and words in error["error"], error


def test_the_python_api_carries_the_kind(tmp_path):
    import shardscan

    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(gzip_file(tmp_path))
    with pytest.raises(shardscan.FormatError) as raised:
        shardscan.scan(path)
    assert raised.value.kind == "gzip"
    (problem,) = shardscan.scan_paths([path]).problems
    assert problem.kind == "gzip"


def _kind_literals() -> list[tuple[str, str]]:
    """Every kind the package's code names: `kind="..."` arguments of errors (Layout's `kind`
    is another word), class-level `kind = "..."`, and the values of the status table in _core."""
    import ast

    import shardscan

    found = []
    for source in Path(shardscan.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")).endswith(
                    ("Error", "fail", "replace")):
                found += [(source.name, k.value.value) for k in node.keywords
                          if k.arg == "kind" and isinstance(k.value, ast.Constant)]
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "kind" for t in node.targets) \
                    and isinstance(node.value, ast.Constant):
                found.append((source.name, node.value.value))
    from shardscan import _core

    found += [("_core.py", kind) for kind in _core._KINDS.values()]
    return found


def test_every_kind_the_code_names_is_in_the_vocabulary_and_documented():
    named = _kind_literals()
    assert len(named) > 20  # the scan sees the code
    assert [entry for entry in named if entry[1] not in KINDS and entry[1] is not None] == []
    table = (Path(__file__).resolve().parents[1] / "docs" / "report-json.md").read_text()
    undocumented = [kind for kind in KINDS if f"`{kind}`" not in table]
    assert undocumented == []
    assert len(set(KINDS)) == len(KINDS)


def test_a_dcp_metadata_fetched_as_an_lfs_pointer(dcp_two_rank_checkpoint, tmp_path):
    # torch.distributed.checkpoint directories pushed to the hub travel through git-lfs too.
    import shutil

    copy = tmp_path / "step_2"
    shutil.copytree(dcp_two_rank_checkpoint, copy)
    metadata = copy / ".metadata"
    metadata.write_bytes(lfs_pointer_of(metadata.read_bytes()))
    (error,) = json.loads(runner.invoke(app, ["check", "--json", os.fspath(copy)]).output)["errors"]
    assert error["kind"] == "lfs-pointer" and error["error"].startswith(".metadata: a Git LFS pointer to a ")
    missing = tmp_path / "unfinished"
    shutil.copytree(dcp_two_rank_checkpoint, missing)
    (missing / ".metadata").unlink()
    kinds = {e["kind"] for e in json.loads(runner.invoke(app, ["check", "--json", os.fspath(missing)]).output)["errors"]}
    assert kinds == {"unfinished"}
