"""`shardscan audit` and discovery, on real trees written by torch, safetensors and DCP
(tests/checkpoint_trees.py), each breakage asserted by name."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import xxhash
from typer.testing import CliRunner

import checkpoint_trees as trees
from shardscan import audit
from shardscan.cli import app
from shardscan.discover import find_checkpoints, step_of


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP warns that it saves without a process group
        return trees.build_run(tmp_path_factory.mktemp("tree"))


def rel(run: Path, path: str) -> str:
    return os.path.relpath(path, run)


@pytest.mark.parametrize(
    "name, step",
    [
        ("checkpoint-500", 500),  # HF Trainer
        ("global_step800", 800),  # DeepSpeed
        ("epoch=3-step=1200.ckpt", 1200),  # Lightning: the step, not the epoch
        ("iter_0001000", 1000),  # Megatron
        ("model_00010.pt", 10),  # a number closing the name
        ("last.ckpt", None),  # no number
        ("llama-7b.safetensors", None),  # a size, not a step
    ],
)
def test_step_of(name: str, step: int | None) -> None:
    assert step_of(name) == step


def test_discovery_finds_every_kind_in_step_order(run: Path) -> None:
    found = find_checkpoints(run)
    got = [(rel(run, os.fspath(c.path)), c.kind, c.step) for c in found.checkpoints]
    assert got == [
        # no step: before every numbered checkpoint, then by mtime
        *sorted([("loose/final.safetensors", "safetensors", None), ("loose/pipe.safetensors", "safetensors", None)],
                key=lambda r: next(c.mtime for c in found.checkpoints if c.path.name == Path(r[0]).name)),
        ("loose/step_1.pt", "torch", 1),
        ("deepspeed/global_step5", "deepspeed", 5),
        ("deepspeed/global_step6", "deepspeed", 6),
        ("deepspeed/global_step7", "deepspeed", 7),
        ("dcp/step_10", "dcp", 10),
        ("dcp/step_20", "dcp", 20),
        ("loose/epoch=0-step=50.ckpt", "lightning", 50),
        ("hf/checkpoint-100", "hf-trainer", 100),
        ("hf/checkpoint-200", "hf-trainer", 200),
        ("hf/checkpoint-300", "hf-trainer", 300),
    ]
    skipped = {rel(run, p): reason for p, reason in found.skipped}
    assert skipped["loose/self"] == "symlink loop"
    assert skipped["loose/up"] == "symlink into the tree or above it (not followed)"


def test_fifo_is_a_row_and_never_opened(run: Path) -> None:
    # Opening a FIFO for reading blocks until a writer appears: the audit returning at all
    # is half of this test.
    result = audit(run, hash=False)
    row = next(r for r in result.rows if r.path.endswith("pipe.safetensors"))
    assert not row.ok and row.problem == "not a regular file (FIFO)" and row.files == 0


def test_rows_name_the_right_problems(run: Path) -> None:
    rows = {rel(run, r.path): r for r in audit(run).rows}
    assert {k for k, r in rows.items() if not r.ok} == {
        "hf/checkpoint-300", "dcp/step_20", "deepspeed/global_step7", "loose/pipe.safetensors"}

    interrupted = rows["hf/checkpoint-300"]
    assert interrupted.problem.startswith("no trainer_state.json")
    # the truncated shard too: its cut tensor is missing and the file is an error
    assert any(p.startswith("model-00002-of-00002.safetensors:") for p in interrupted.problems)
    assert interrupted.missing == 1 and any(p == "missing 1 tensor: model.layers.1.mlp.weight" for p in interrupted.problems)
    assert interrupted.errors == 2  # the marker and the shard

    assert rows["dcp/step_20"].problem.startswith("no .metadata")
    assert rows["deepspeed/global_step7"].problem == "'latest' names global_step7, which does not exist"
    for name in ("hf/checkpoint-100", "hf/checkpoint-200", "dcp/step_10", "deepspeed/global_step6",
                 "loose/epoch=0-step=50.ckpt", "loose/step_1.pt", "loose/final.safetensors"):
        assert rows[name].ok and rows[name].tensors == 5 and rows[name].problem is None, name


def test_frozen_layers_and_identical_checkpoints(run: Path, tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    shutil.copytree(run / "hf", hf)
    shutil.copytree(hf / "checkpoint-200", hf / "checkpoint-250")  # a save that changed nothing
    result = audit(hf)
    # layer 0 was copied from step 100 into every later save; everything else trained
    assert result.frozen == ("model.layers.0.mlp.bias", "model.layers.0.mlp.weight")
    assert result.frozen_across == 4
    assert [(rel(hf, a), rel(hf, b)) for a, b in result.identical] == [("checkpoint-250", "checkpoint-200")]


def test_no_summaries_without_hashes(run: Path) -> None:
    result = audit(run / "hf", hash=False)
    assert result.frozen == () and result.identical == ()
    assert [r.ok for r in result.rows] == [True, True, False]


def test_cross_tree_identity(run: Path) -> None:
    # step_1.pt holds state_dict(1), the same tensors as checkpoint-100: checksums are
    # format-independent, so a torch file and safetensors shards compare equal.
    result = audit(run)
    assert [(rel(run, a), rel(run, b)) for a, b in result.identical] == [("hf/checkpoint-100", "loose/step_1.pt")]


def test_manifest_checksum_mismatch_found_by_the_shared_scan(tmp_path: Path) -> None:
    """The audit hashes in one shared scan and asks `check` for headers only; a flipped byte
    against the checkpoint's own manifest must still fail the row, as `check` alone does."""
    from shardscan import scan
    from shardscan.checker import check
    from shardscan.output import write_atomic

    out = tmp_path / "out"
    directory = trees.trainer_checkpoint(out, 100, trees.state_dict(1))
    write_atomic(scan(directory), directory / "shardscan.manifest.parquet")
    shard = directory / "model-00001-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01  # the last byte of the last tensor in the shard
    shard.write_bytes(bytes(data))

    (row,) = audit(out).rows
    reference = check(directory)
    assert not reference.ok and len(reference.mismatched) == 1
    assert not row.ok and row.mismatched == 1 and "checksum" in row.problem
    assert audit(out, hash=False).rows[0].ok  # without hashes only the layout is checked


def test_dcp_rows_in_the_table(run: Path) -> None:
    # DCP rows are named by their .distcp file, relative to the directory; the audit's part
    # of the shared scan is selected by the path it read (the directory), not by row names.
    table = audit(run / "dcp").table
    assert set(table.column("checkpoint").to_pylist()) == {os.fspath(run / "dcp" / "step_10")}
    assert set(table.column("file").to_pylist()) == {"__0_0.distcp"} and table.num_rows == 5
    assert None not in table.column("checksum").to_pylist()


def test_one_unjudgeable_checkpoint_does_not_stop_the_audit(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(run / "hf" / "checkpoint-100", out / "checkpoint-100")
    broken = shutil.copytree(run / "hf" / "checkpoint-200", out / "checkpoint-200")
    (broken / "model.safetensors.index.json").write_text("{not json")
    rows = audit(out).rows
    assert rows[0].ok and rows[0].tensors == 5
    # a broken index is a finding of check, named by the file, not a failure to check
    assert not rows[1].ok and rows[1].problem.startswith("model.safetensors.index.json: not valid JSON")
    assert rows[1].tensors == 5 and rows[1].errors == 1


def test_file_changing_during_the_audit(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard cut between listing the tree and the shared scan: the checkpoint is judged on
    the bytes the scan read (each checkpoint gets its rows by file path), so it fails with the
    truncation and the other checkpoint is untouched."""
    import shardscan.scanner as scanner

    out = tmp_path / "out"
    for name in ("checkpoint-100", "checkpoint-200"):
        shutil.copytree(run / "hf" / name, out / name)
    real = scanner.scan_paths

    def scan_paths(paths, **kwargs):  # type: ignore[no-untyped-def]
        if len(paths) == 4:  # the shared scan of both checkpoints' shards: one is cut first
            trees.truncate(out / "checkpoint-100" / "model-00001-of-00002.safetensors", 200)
        return real(paths, **kwargs)

    monkeypatch.setattr(scanner, "scan_paths", scan_paths)
    rows = audit(out).rows
    assert not rows[0].ok and rows[0].problem.startswith("model-00001-of-00002.safetensors: ")
    assert rows[1].ok and rows[1].tensors == 5


def test_checkpoint_deleted_during_the_audit(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Trainer deleting its oldest checkpoint (save_total_limit) after the tree was listed:
    that checkpoint fails, the audit goes on."""
    import shardscan.scanner as scanner

    out = tmp_path / "out"
    for name in ("checkpoint-100", "checkpoint-200"):
        shutil.copytree(run / "hf" / name, out / name)
    real = scanner.scan_paths

    def scan_paths(paths, **kwargs):  # type: ignore[no-untyped-def]
        if (out / "checkpoint-100").exists() and len(paths) == 4:
            shutil.rmtree(out / "checkpoint-100")
        return real(paths, **kwargs)

    monkeypatch.setattr(scanner, "scan_paths", scan_paths)
    rows = audit(out).rows
    assert not rows[0].ok and rows[0].problem.startswith("cannot check: ")
    assert rows[1].ok and rows[1].tensors == 5


def test_same_rows_for_any_thread_count(run: Path) -> None:
    one, many = audit(run, threads=1), audit(run, threads=4)
    assert [r.to_dict() for r in one.rows] == [r.to_dict() for r in many.rows]
    assert one.table.equals(many.table)


def test_unlistable_directory_is_an_error_row(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root, which reads every directory: simulate EACCES on one.
    real = os.scandir
    blocked = os.fspath(run / "hf")

    def scandir(path: object = ".") -> object:
        if os.fspath(path) == blocked:  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", blocked)
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)
    found = find_checkpoints(run)
    (row,) = [c for c in found.checkpoints if c.path == run / "hf"]
    assert row.kind == "unreadable" and not row.readable
    assert row.problems == ("cannot list directory: Permission denied",)


def test_deepspeed_step_newer_than_latest_is_not_ok(tmp_path: Path) -> None:
    root = trees.build_deepspeed_run(tmp_path)
    (root / "latest").write_text("global_step5\n")
    rows = {r.path.rsplit("/", 1)[-1]: r for r in audit(root).rows}
    assert rows["global_step5"].ok
    assert not rows["global_step6"].ok and rows["global_step6"].problem.startswith("newer than global_step5")


def test_missing_root() -> None:
    with pytest.raises(FileNotFoundError):
        audit("/nonexistent/run")


# ----------------------------------------------------------------------------------------
# CLI


def test_cli_json(run: Path) -> None:
    result = CliRunner().invoke(app, ["audit", os.fspath(run / "hf"), "--json"])
    assert result.exit_code == 1, result.output
    payload = json.loads(result.stdout)
    assert payload["latest_ok"] == os.fspath(run / "hf" / "checkpoint-200")
    assert [c["ok"] for c in payload["checkpoints"]] == [True, True, False]
    first = payload["checkpoints"][2]
    assert set(first) >= {"path", "step", "format", "files", "tensors", "bytes", "ok", "missing", "unexpected",
                          "mismatched", "errors", "problem"}
    assert first["step"] == 300 and first["format"] == "hf-trainer" and first["missing"] == 1
    assert payload["frozen"] == ["model.layers.0.mlp.bias", "model.layers.0.mlp.weight"]


def test_cli_table_and_parquet(run: Path, tmp_path: Path) -> None:
    target = tmp_path / "audit.parquet"
    result = CliRunner().invoke(app, ["audit", os.fspath(run / "hf"), "-o", os.fspath(target)])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["STEP", "FORMAT", "FILES", "TENSORS", "SIZE", "STATUS", "MISS", "UNEXP", "MISM", "ERR", "PATH"]
    assert any(line.split()[-1] == "checkpoint-300" and "FAILED" in line for line in lines)
    assert "frozen across 3 checkpoints: 2 tensors: model.layers.0.mlp.{bias,weight}" in lines
    assert lines[-1].startswith("3 checkpoints, 2 OK, 1 FAILED; latest OK: checkpoint-200")

    table = pq.read_table(target)
    assert table.column_names[0] == "checkpoint"
    assert table.num_rows == 5 + 5 + 4  # the truncated shard keeps its intact tensors
    # an independent oracle for one row: xxhash of the tensor's bytes
    tensor = trees.state_dict(2, frozen_from=100)["lm_head.weight"]
    rows = [r for r in table.to_pylist() if r["checkpoint"].endswith("checkpoint-200") and r["key"] == "lm_head.weight"]
    assert rows[0]["checksum"] == xxhash.xxh3_128_hexdigest(tensor.numpy().tobytes())


def test_cli_clean_tree_exits_0(run: Path) -> None:
    result = CliRunner().invoke(app, ["audit", os.fspath(run / "hf" / "checkpoint-100")])
    assert result.exit_code == 0, result.output


def test_cli_help_texts() -> None:
    for command in ("audit", "latest"):
        result = CliRunner().invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "ROOT" in result.stdout


def test_subprocess(run: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "shardscan", "audit", os.fspath(run), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["latest_ok"] == os.fspath(run / "hf" / "checkpoint-200")


def test_audit_reads_what_check_reads(tmp_path: Path) -> None:
    """A directory holding two families, the index naming the second one: the audit must
    read the family check reads (the index's .bin, not the unreadable .safetensors) and agree
    with check on everything."""
    import torch

    from shardscan.checker import check

    directory = tmp_path / "out" / "checkpoint-1"
    directory.mkdir(parents=True)
    tensors = trees.state_dict(1)
    torch.save(tensors, directory / "pytorch_model.bin")
    (directory / "pytorch_model.bin.index.json").write_text(
        json.dumps({"weight_map": {k: "pytorch_model.bin" for k in tensors}}))
    (directory / "model.safetensors").write_bytes(b"not a safetensors file")
    (directory / "trainer_state.json").write_text(json.dumps({"global_step": 1}))

    (row,) = audit(tmp_path / "out").rows
    report = check(directory)
    assert report.ok and row.ok, row.problems
    assert (row.files, row.tensors, row.bytes) == (report.files, report.tensors, report.bytes) == (1, 5, report.bytes)


def test_symlink_to_outside_is_followed(run: Path, tmp_path: Path) -> None:
    # Checkpoints moved to other storage and linked back are part of the run.
    root = tmp_path / "out"
    root.mkdir()
    os.symlink(run / "hf" / "checkpoint-100", root / "checkpoint-100")
    (row,) = audit(root).rows
    assert row.path == os.fspath(root / "checkpoint-100") and row.ok and row.tensors == 5


def test_truncated_lightning_file(tmp_path: Path) -> None:
    import torch

    for step in (10, 20):
        torch.save({"state_dict": trees.state_dict(step), "global_step": step}, tmp_path / f"epoch=0-step={step}.ckpt")
    trees.truncate(tmp_path / "epoch=0-step=20.ckpt", 600)
    rows = audit(tmp_path).rows
    assert [r.ok for r in rows] == [True, False]
    assert rows[1].problem.startswith(os.fspath(tmp_path / "epoch=0-step=20.ckpt") + ": truncated")


def test_subprocess_missing_root_is_usage_error(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "shardscan", "audit", os.fspath(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"shardscan: {tmp_path / 'nope'}: no such file or directory\n"
