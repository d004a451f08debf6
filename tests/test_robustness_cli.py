"""One bad file never takes down a run, and output can neither be forged by names nor destroy
an input. Every hostile input is built here; every command runs as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hostile_torch import state_dict, tensor, torch_zip

FORGED = "x\x1b]0;pwned\x07\x1b[2J\rFAKE: OK (all tensors verified)\n\u202eevil"


def cli(*args: str | bytes, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shardscan", *args], capture_output=True, timeout=300,
                          stdin=subprocess.DEVNULL, cwd=cwd, env={**os.environ, "PYTHONIOENCODING": "utf-8",
                                                                  "LC_ALL": "C.UTF-8"})


def text(run: subprocess.CompletedProcess) -> str:
    return run.stdout.decode("utf-8") + run.stderr.decode("utf-8")


def assert_clean_lines(run: subprocess.CompletedProcess) -> None:
    """No control character but newline, no bidi override, no traceback, valid UTF-8."""
    out = text(run)
    assert "Traceback" not in out, out
    assert not any((ord(c) < 32 and c != "\n") or 0x7F <= ord(c) < 0xA0 or 0x202A <= ord(c) <= 0x202E for c in out), out


def good_checkpoint(path: Path, name: str = "model.safetensors") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.ones(2)}, str(path / name))
    finished(path)
    return path


def finished(path: Path) -> None:
    """The Trainer's last file of a save, naming the step its directory is named after."""
    step = int(path.name.rpartition("-")[2]) if path.name.startswith("checkpoint-") else 0
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))


# ---- one bad file never takes down a run ---------------------------------------------------


def test_shape_over_int64_is_not_ok_without_hashing(tmp_path):
    # torch refuses (2^32, 2^32) over one byte ("numel: integer multiplication overflow").
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch_zip(ckpt / "pytorch_model.bin", state_dict({"w": tensor("0", 1, (1 << 32, 1 << 32), (0, 0))}), {"0": b"\x01"})
    with pytest.raises(RuntimeError):
        torch.load(ckpt / "pytorch_model.bin", weights_only=True)
    for args in (["check", "--no-hash", str(ckpt)], ["latest", "--no-hash", str(tmp_path)], ["scan", str(ckpt)]):
        run = cli(*args)
        assert run.returncode == 1, (args, text(run))
        assert_clean_lines(run)
    assert "more than int64 counts" in text(cli("check", "--no-hash", str(ckpt)))


def test_bad_file_among_good_ones_keeps_the_others(tmp_path):
    # A 2^61-element float64 expanded view and a shape over int64 beside a good file: both are
    # problems of their own file, the good file is scanned.
    huge = torch_zip(tmp_path / "huge.pt", state_dict({"w": tensor("0", 1, (1 << 61,), (0,), storage="DoubleStorage")}),
                     {"0": bytes(8)})
    over = torch_zip(tmp_path / "over.pt", state_dict({"w": tensor("0", 1, (1 << 32, 1 << 32), (0, 0))}), {"0": b"\x01"})
    good = tmp_path / "good.safetensors"
    save_file({"w": torch.ones(2)}, str(good))
    run = cli("scan", "--json", str(huge), str(over), str(good))
    assert run.returncode == 1, text(run)
    payload = json.loads(run.stdout)
    assert payload["tensors"] == 1 and sorted(e["file"] for e in payload["errors"]) == [str(huge), str(over)]


@pytest.mark.parametrize("what", ["config.json", "model.safetensors.index.json"])
def test_json_nested_100000_levels_is_a_finding(tmp_path, what):
    deep = tmp_path / "run" / "checkpoint-2"
    good_checkpoint(tmp_path / "run" / "checkpoint-1")
    good_checkpoint(deep)
    (deep / what).write_text("[" * 100_000 + "]" * 100_000)
    run = cli("check", str(deep))
    assert run.returncode == 1, text(run)
    assert "nested too deeply" in text(run)
    assert_clean_lines(run)
    run = cli("audit", "--json", str(tmp_path / "run"))
    assert run.returncode == 1, text(run)
    rows = {Path(r["path"]).name: r for r in json.loads(run.stdout)["checkpoints"]}
    assert rows["checkpoint-1"]["ok"] and not rows["checkpoint-2"]["ok"]
    assert Path(cli("latest", str(tmp_path / "run")).stdout.decode().strip()).name == "checkpoint-1"


def test_directory_tree_600_levels_deep(tmp_path):
    root = tmp_path / "run"
    deep = root
    for _ in range(600):
        deep = deep / "d"
    good_checkpoint(deep / "checkpoint-7")
    good_checkpoint(root / "checkpoint-3")
    run = cli("audit", "--json", str(root))
    assert run.returncode == 0, text(run)
    assert len(json.loads(run.stdout)["checkpoints"]) == 2
    assert cli("latest", str(root)).stdout.decode().strip().endswith("checkpoint-7")


def test_lone_surrogate_key_and_non_utf8_file_name(tmp_path):
    # torch decodes pickled text with surrogatepass, so a key may be a lone surrogate; a file
    # name may be any bytes. Human output escapes them, JSON keeps them exactly, tables write
    # their escape, and the run goes on.
    ckpt = tmp_path / "run" / "checkpoint-1"
    ckpt.mkdir(parents=True)
    torch_zip(ckpt / "pytorch_model.bin", state_dict({"a\ud800b": tensor("0", 2, (2,), (1,))}), {"0": b"\x01\x02"})
    finished(ckpt)
    assert list(torch.load(ckpt / "pytorch_model.bin", weights_only=True)) == ["a\ud800b"]
    odd = os.fsencode(tmp_path / "run") + b"/\xff-odd.bin"
    with open(odd, "wb") as f:
        f.write((ckpt / "pytorch_model.bin").read_bytes())
    listed = cli("scan", "--list", str(ckpt))
    assert listed.returncode == 0 and "a\\ud800b" in text(listed), text(listed)
    assert json.loads(cli("scan", "--json", "--list", str(ckpt)).stdout)["rows"][0]["key"] == "a\ud800b"
    out = tmp_path / "out.parquet"
    assert cli("scan", "-o", str(out), str(ckpt)).returncode == 0
    import pyarrow.parquet as pq

    assert pq.read_table(out).column("key").to_pylist() == ["a\\ud800b"]
    run = cli("scan", "--list", odd)
    assert run.returncode == 0 and "\\udcff-odd.bin" in text(run), text(run)
    audit = cli("audit", "-o", str(tmp_path / "audit.parquet"), str(tmp_path / "run"))
    assert audit.returncode == 0, text(audit)
    assert_clean_lines(audit)
    latest = cli("latest", str(tmp_path / "run"))
    assert latest.returncode == 0 and latest.stdout.strip() in (odd, os.fsencode(ckpt))


# ---- output that cannot be forged or destroy input -----------------------------------------


def test_control_characters_in_names_are_escaped_in_human_output(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    save_file({FORGED: torch.ones(2), "ok": torch.zeros(1)}, str(ckpt / "model.safetensors"))
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {FORGED: "model.safetensors", "ok": "model.safetensors", FORGED + "2": "model.safetensors"}}))
    bad = tmp_path / f"bad{FORGED}.safetensors"
    bad.write_bytes(b"\x01")
    runs = [cli("scan", "--list", str(ckpt), str(bad)), cli("check", str(ckpt)), cli("diff", str(ckpt), str(bad)),
            cli("audit", str(tmp_path))]
    for run in runs:
        assert_clean_lines(run)
        assert not any(line.startswith("FAKE") for line in text(run).splitlines()), text(run)
    assert "\\x1b]0;pwned\\x07" in text(runs[0]) and "\\u202eevil" in text(runs[1])
    # JSON keeps the exact names.
    assert FORGED + "2" in json.loads(cli("check", "--json", str(ckpt)).stdout)["missing"]


@pytest.mark.parametrize("spelling", ["same", "symlink", "hardlink", "inside a directory"])
def test_output_that_is_an_input_is_refused_before_writing(tmp_path, spelling):
    source = tmp_path / "model.csv"  # torch.save takes any name: the input looks like a table
    torch.save({"w": torch.ones(2)}, source)
    given, target = source, source
    if spelling == "symlink":
        target = tmp_path / "link.csv"
        target.symlink_to(source)
    elif spelling == "hardlink":
        target = tmp_path / "hard.csv"
        os.link(source, target)
    elif spelling == "inside a directory":
        given = tmp_path / "ckpt"
        given.mkdir()
        source = target = given / "model.bin"
        torch.save({"w": torch.ones(2)}, source)
    before = source.read_bytes()
    run = cli("scan", str(given), "-o", str(target))
    assert run.returncode == 2, text(run)
    assert "is one of the inputs" in text(run) and len(text(run).splitlines()) == 1
    assert source.read_bytes() == before
    assert cli("scan", str(given), "-o", str(tmp_path / "other.csv")).returncode == 0  # any other output is fine


def test_corrupt_manifest_inside_a_checkpoint_is_a_finding(tmp_path):
    ckpt = good_checkpoint(tmp_path / "ckpt")
    (ckpt / "shardscan.manifest.parquet").write_bytes(b"PAR1 this is not parquet")
    run = cli("check", str(ckpt))
    assert run.returncode == 1, text(run)
    assert "shardscan.manifest.parquet: FAILED unreadable manifest" in text(run)
    report = json.loads(cli("check", "--json", str(ckpt)).stdout)
    assert not report["ok"] and report["errors"][0]["file"] == "shardscan.manifest.parquet"


@pytest.mark.parametrize("where", ["a new manifest in a checkpoint", "a shard of a checkpoint"])
def test_audit_output_inside_a_checkpoint_is_refused(tmp_path, where):
    run_dir = tmp_path / "run"
    for step in (10, 20):
        good_checkpoint(run_dir / f"checkpoint-{step}")
    inside = run_dir / "checkpoint-20"
    output = inside / ("shardscan.manifest.parquet" if where.startswith("a new") else "model.safetensors")
    before = {p: p.read_bytes() for p in inside.iterdir()}
    run = cli("audit", str(run_dir), "-o", str(output))
    assert run.returncode == 2, text(run)
    assert "lies in checkpoint" in text(run) and len(text(run).splitlines()) == 1
    assert {p: p.read_bytes() for p in inside.iterdir()} == before  # nothing written, nothing added
    assert cli("audit", str(run_dir), "-o", str(run_dir / "audit.parquet")).returncode == 0  # beside them is fine
