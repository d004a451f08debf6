"""The CLI: exit codes, output dialects, the error funnel, start-up cost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from shardscan.cli import _app_for, _command_name, app

from oracle import tensor_checksum

runner = CliRunner()


@pytest.fixture()
def checkpoint(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    tensors = {"a.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b.bias": torch.ones(5, dtype=torch.bfloat16)}
    save_file(tensors, tmp_path / "model.safetensors")
    return tmp_path, tensors


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The installed entry point, in a real process, as users run it."""
    return subprocess.run([sys.executable, "-m", "shardscan", *args], capture_output=True, text=True, timeout=120)


def test_every_command_has_help():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    commands = {c.name or c.callback.__name__.replace("_", "-"): c.callback for c in app.registered_commands}
    assert {"scan"} <= set(commands)
    for name, callback in commands.items():
        assert callback.__doc__, f"{name} has no help text"
        assert name in result.output
        sub = runner.invoke(app, [name, "--help"])
        assert sub.exit_code == 0, sub.output
        assert " ".join(callback.__doc__.split())[:40] in " ".join(sub.output.split())


def test_a_command_alone_parses_and_helps_as_in_the_whole_app(checkpoint):
    names = [_command_name(c) for c in app.registered_commands]
    for name in names:
        alone = _app_for(["--version", name, "x"])  # options before the command are passed over
        assert [_command_name(c) for c in alone.registered_commands] == [name]
        assert runner.invoke(alone, [name, "--help"]).output == runner.invoke(app, [name, "--help"]).output
    path, _ = checkpoint
    whole, alone = (runner.invoke(cli, ["check", "--json", "--no-hash", str(path)]) for cli in (app, _app_for(["check"])))
    assert whole.exit_code == alone.exit_code == 0
    assert {**json.loads(alone.output), "elapsed": 0} == {**json.loads(whole.output), "elapsed": 0}
    # No command, or an unknown one: the whole app, for its listing and its suggestions.
    assert _app_for([]) is app and _app_for(["--help"]) is app and _app_for(["chek"]) is app


def test_scan_json_is_one_object_with_oracle_checksums(checkpoint):
    directory, tensors = checkpoint
    result = runner.invoke(app, ["scan", str(directory), "--json", "--list"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["ok"] is True and payload["files"] == 1 and payload["tensors"] == 2
    assert payload["bytes"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert {r["key"]: r["checksum"] for r in payload["rows"]} == {k: tensor_checksum(t) for k, t in tensors.items()}


def test_scan_writes_parquet_manifest(checkpoint, tmp_path):
    directory, tensors = checkpoint
    out = tmp_path / "out" / "manifest.parquet"
    out.parent.mkdir()
    result = runner.invoke(app, ["scan", str(directory), "-o", str(out)])
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert sorted(table.column("key").to_pylist()) == sorted(tensors)
    assert "2 tensors" in result.stdout


def test_scan_reports_a_cut_shard_with_exit_1(checkpoint):
    directory, _ = checkpoint
    shard = directory / "model.safetensors"
    os.truncate(shard, shard.stat().st_size - 3)
    proc = run_cli("scan", str(directory))
    assert proc.returncode == 1
    assert "model.safetensors: FAILED truncated" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_missing_path_is_exit_2_one_line(tmp_path):
    proc = run_cli("scan", str(tmp_path / "nope"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "nope" in proc.stderr and "Traceback" not in proc.stderr


def test_usage_error_is_exit_2():
    proc = run_cli("scan", "--threads", "0", ".")
    assert proc.returncode == 2


def test_unwritable_output_is_a_one_line_error(checkpoint, tmp_path):
    directory, _ = checkpoint
    proc = run_cli("scan", str(directory), "-o", str(tmp_path / "no-such-dir" / "m.parquet"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("shardscan: ")


def test_debug_env_shows_the_traceback(tmp_path):
    env = dict(os.environ, SHARDSCAN_DEBUG="1")
    proc = subprocess.run([sys.executable, "-m", "shardscan", "scan", str(tmp_path / "x"), "-o", str(tmp_path / "a" / "b.parquet")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_output_through_a_pipe_arrives_whole_with_its_exit_code(tmp_path):
    # The process ends without the interpreter's teardown: what it printed must still all arrive.
    save_file({f"layer.{i}.weight": torch.zeros(1) for i in range(3000)}, tmp_path / "model.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes((tmp_path / "model.safetensors").read_bytes()[:-2])
    proc = run_cli("scan", "-o", "-", str(tmp_path / "model.safetensors"), str(cut))
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.count("layer.") == 3000 + 2999  # the cut file's last tensor is gone


def test_cli_start_up_imports_no_heavy_modules():
    code = "import sys, shardscan.cli; print(sorted(m for m in ('torch', 'transformers', 'numpy', 'pyarrow') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


@pytest.mark.parametrize("command", [["scan"], ["scan", "--no-hash"], ["check"], ["check", "--no-hash"]])
def test_commands_without_a_table_output_import_no_heavy_modules(tmp_path, command):
    save_file({"w": torch.ones(4, 4)}, str(tmp_path / "model.safetensors"))
    code = ("import sys, shardscan.cli\n"
            "try:\n    shardscan.cli.main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'pyarrow') if m in sys.modules), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, *command, str(tmp_path / "model.safetensors")],
                          capture_output=True, text=True, timeout=60)
    assert proc.stderr.strip().splitlines()[-1] == "[]", proc.stdout + proc.stderr


def test_scan_torch_bin_and_refuse_an_unsafe_pickle(tmp_path):
    tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3).t(), "b": torch.ones(3, dtype=torch.float16)}
    torch.save(tensors, tmp_path / "pytorch_model.bin")
    proc = run_cli("scan", str(tmp_path / "pytorch_model.bin"), "--json", "--list")
    assert proc.returncode == 0, proc.stderr
    rows = {r["key"]: r for r in json.loads(proc.stdout)["rows"]}
    assert {k: r["checksum"] for k, r in rows.items()} == {k: tensor_checksum(t) for k, t in tensors.items()}
    assert rows["w"]["shape"] == [3, 2] and rows["w"]["format"] == "torch"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'canary'}",))

    torch.save({"w": torch.ones(1), "evil": Payload()}, tmp_path / "evil.pt")
    proc = run_cli("scan", str(tmp_path / "evil.pt"))
    assert proc.returncode == 1
    assert "unsafe pickle global posix.system" in proc.stdout
    assert not (tmp_path / "canary").exists()
