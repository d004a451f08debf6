"""`shardscan check` on real checkpoints written by transformers, safetensors and torch.

Oracles are independent of shardscan: transformers' own `missing_keys` from
`from_pretrained(..., output_loading_info=True)`, safetensors headers parsed here by hand, and
checksums computed with the `xxhash` package over the bytes safetensors hands back.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
xxhash = pytest.importorskip("xxhash")
from safetensors.torch import load_file, save_file  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from shardscan import check  # noqa: E402
from shardscan.cli import app, main  # noqa: E402
from shardscan.layout import MANIFEST_NAME  # noqa: E402

#: Small enough that every model is a few hundred KB, split into many shards.
SHARD = "20KB"


def _qwen2() -> Any:
    # the seed case: Qwen2 with tied embeddings and 28 layers, tiny widths
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=28, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=True, max_position_embeddings=64,
    ))


def _llama_biases() -> Any:
    # untied head, and biases on every projection (attention_bias, mlp_bias)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=6, num_attention_heads=2,
        num_key_value_heads=2, tie_word_embeddings=False, attention_bias=True, mlp_bias=True,
        max_position_embeddings=64,
    ))


def _gpt2() -> Any:
    # a different naming scheme (transformer.h.N) and n_layer instead of num_hidden_layers
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=6, n_head=2, n_positions=32))


MODELS: dict[str, tuple[Callable[[], Any], str]] = {
    # name: (factory, regex of keys an interrupted run lost)
    "qwen2": (_qwen2, r"model\.layers\.(24|25|26|27)\."),
    "llama": (_llama_biases, r"model\.layers\.(4|5)\."),
    "gpt2": (_gpt2, r"transformer\.h\.(4|5)\."),
}


def _save(model: Any, directory: Path, drop: str | None = None) -> Path:
    """save_pretrained in several shards; `drop` removes matching keys from shards and index
    alike (a consistent but incomplete checkpoint)."""
    state = model.state_dict()
    if drop is not None:
        state = {k: v for k, v in state.items() if not re.match(drop, k)}
    model.save_pretrained(directory, state_dict=state, max_shard_size=SHARD)
    return directory


def _missing_per_transformers(directory: Path) -> list[str]:
    _, info = transformers.AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True)
    return sorted(info["missing_keys"])


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every model saved whole and with its last layers dropped, built once per module."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, (factory, drop) in MODELS.items():
        model = factory()
        out[name] = _save(model, root / name)
        out[f"{name}-cut"] = _save(model, root / f"{name}-cut", drop)
    return out


@pytest.fixture
def qwen(built: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the complete Qwen2 checkpoint, free to damage."""
    return Path(shutil.copytree(built["qwen2"], tmp_path / "qwen2"))


def _header(path: Path) -> dict[str, Any]:
    """A safetensors header parsed by hand (the oracle for offsets)."""
    with open(path, "rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
    header.pop("__metadata__", None)
    return {"_start": 8 + size, **header}


def _shards(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.safetensors"))


# ---------------------------------------------------------------------------------------------
# Complete checkpoints pass; the seed case matches transformers exactly.


@pytest.mark.parametrize("name", list(MODELS))
def test_complete_checkpoint_is_ok(built: dict[str, Path], name: str) -> None:
    report = check(built[name], hash=False)
    assert report.ok, report.to_dict()
    assert any(s.startswith("index ") for s in report.layouts)
    assert any("structural" in s for s in report.layouts)
    full = check(built[name], against=built[name] / "config.json", hash=False)
    assert full.ok, full.to_dict()
    assert any("transformers" in s for s in full.layouts)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("via", ["structural", "transformers"])
def test_missing_layers_equal_transformers_missing_keys(built: dict[str, Path], name: str, via: str) -> None:
    directory = built[f"{name}-cut"]
    expected = _missing_per_transformers(directory)
    assert expected  # the oracle itself sees the damage
    against = directory / "config.json" if via == "transformers" else None
    report = check(directory, against=against, hash=False)
    assert sorted(report.missing) == expected
    assert not report.unexpected and not report.mismatched and not report.errors
    assert not report.ok


def test_seed_case_human_output(built: dict[str, Path]) -> None:
    result = CliRunner().invoke(app, ["check", str(built["qwen2-cut"]), "--no-hash"])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0].startswith("missing 48 tensors: model.layers.{24..27}.{")
    assert "self_attn.{{k,q,v}_proj.{bias,weight}, o_proj.weight}" in lines[0]
    assert re.match(r".*: FAILED 48 missing \(", lines[-1])


def test_one_tensor_missing_in_one_layer(built: dict[str, Path], tmp_path: Path) -> None:
    torch.manual_seed(1)
    directory = _save(_llama_biases(), tmp_path / "llama", r"model\.layers\.2\.mlp\.up_proj\.bias$")
    report = check(directory, hash=False)
    assert list(report.missing) == ["model.layers.2.mlp.up_proj.bias"] == _missing_per_transformers(directory)


# ---------------------------------------------------------------------------------------------
# File damage: deleted and truncated shards, flipped bytes, a wrong index.


def test_deleted_shard(qwen: Path) -> None:
    index = json.loads((qwen / "model.safetensors.index.json").read_text())
    victim = _shards(qwen)[2]
    lost = sorted(k for k, f in index["weight_map"].items() if f == victim.name)
    victim.unlink()
    report = check(qwen)
    assert sorted(report.missing) == lost
    assert [e.file for e in report.errors] == [victim.name]
    assert "absent" in report.errors[0].error
    assert CliRunner().invoke(app, ["check", str(qwen)]).exit_code == 1


def test_truncated_shard_forensics(qwen: Path) -> None:
    victim = _shards(qwen)[1]
    header = _header(victim)
    start = header.pop("_start")
    spans = sorted((start + v["data_offsets"][0], start + v["data_offsets"][1], k) for k, v in header.items())
    # cut in the middle of the second tensor: the first survives, the second is cut, the rest lost
    cut_at = (spans[1][0] + spans[1][1]) // 2
    with open(victim, "r+b") as handle:
        handle.truncate(cut_at)
    report = check(qwen)
    (error,) = report.errors
    assert error.file == victim.name
    assert sorted(error.intact) == [spans[0][2]]
    assert list(error.cut) == [spans[1][2]]
    assert sorted(error.lost) == sorted(k for _, _, k in spans[2:])
    assert sorted(report.missing) == sorted(k for _, _, k in spans[1:])
    data = report.to_dict()["errors"][0]
    assert data["cut"] == [spans[1][2]] and data["intact"] == [spans[0][2]]


def test_flipped_byte_against_manifest(qwen: Path) -> None:
    from shardscan.output import write_atomic
    from shardscan.scanner import scan_paths

    write_atomic(scan_paths(qwen).table, qwen / MANIFEST_NAME)
    assert check(qwen).ok
    victim = _shards(qwen)[3]
    header = _header(victim)
    start = header.pop("_start")
    key = sorted(header)[0]
    # hashed now: safetensors may map the file, so the tensor would see the flip
    original = xxhash.xxh3_128_hexdigest(load_file(victim)[key].numpy().tobytes())
    with open(victim, "r+b") as handle:
        handle.seek(start + header[key]["data_offsets"][0] + 1)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x10]))
    flipped = load_file(victim)[key]
    report = check(qwen)
    assert [(m.key, m.field) for m in report.mismatched] == [(key, "checksum")]
    # both checksums from the xxhash package over the bytes safetensors hands back
    assert report.mismatched[0].expected == original
    assert report.mismatched[0].actual == xxhash.xxh3_128_hexdigest(flipped.numpy().tobytes())
    assert any("manifest" in s for s in report.layouts)
    headers_only = check(qwen, hash=False)
    assert headers_only.ok and "checksums not compared (--no-hash)" in headers_only.warnings


def test_index_inconsistencies(qwen: Path) -> None:
    path = qwen / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    keys = sorted(index["weight_map"])
    dropped, moved = keys[0], keys[1]
    del index["weight_map"][dropped]  # a key in a shard that the index does not map
    real = index["weight_map"][moved]
    index["weight_map"][moved] = next(f for f in index["weight_map"].values() if f != real)
    index["weight_map"]["ghost.weight"] = real  # mapped but in no shard
    index["metadata"]["total_size"] += 1
    path.write_text(json.dumps(index))
    report = check(qwen, hash=False)
    assert list(report.unexpected) == [dropped]
    assert list(report.missing) == ["ghost.weight"]
    (error,) = report.errors
    assert error.file == path.name and moved in error.error and real in error.error
    # total_size is advisory, and only judged when every shard is whole


def test_total_size_is_a_warning(qwen: Path) -> None:
    path = qwen / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    index["metadata"]["total_size"] += 2
    path.write_text(json.dumps(index))
    report = check(qwen, hash=False)
    assert report.ok and any("total_size" in w for w in report.warnings)


def test_key_in_two_shards(qwen: Path) -> None:
    first, second = _shards(qwen)[:2]
    tensors = load_file(second)
    key = sorted(load_file(first))[0]
    tensors[key] = load_file(first)[key]
    save_file(tensors, second, metadata={"format": "pt"})
    report = check(qwen, hash=False)
    assert any(key in e.error and e.file == second.name for e in report.errors)


# ---------------------------------------------------------------------------------------------
# Reference checkpoints, prefixes, --model.


def test_reference_with_one_shape_changed(qwen: Path, built: dict[str, Path]) -> None:
    victim = _shards(qwen)[0]
    tensors = load_file(victim)
    key = sorted(tensors)[0]
    old_shape = list(tensors[key].shape)
    tensors[key] = torch.zeros([old_shape[0] + 1, *old_shape[1:]], dtype=tensors[key].dtype)
    save_file(tensors, victim, metadata={"format": "pt"})
    for against in (built["qwen2"], built["qwen2"] / "config.json"):
        report = check(qwen, against=against, hash=False)
        assert [m.to_dict() for m in report.mismatched] == [
            {"key": key, "field": "shape", "expected": old_shape, "actual": [old_shape[0] + 1, *old_shape[1:]]}
        ], against


def test_reference_checksums_only_when_asked(qwen: Path, built: dict[str, Path]) -> None:
    victim = _shards(qwen)[0]
    tensors = load_file(victim)
    key = sorted(tensors)[0]
    tensors[key] = tensors[key] + 1  # a fine-tune changes values by design
    save_file(tensors, victim, metadata={"format": "pt"})
    assert check(qwen, against=built["qwen2"]).ok
    report = check(qwen, against=built["qwen2"], checksums=True)
    assert [(m.key, m.field) for m in report.mismatched] == [(key, "checksum")]
    assert report.mismatched[0].actual == xxhash.xxh3_128_hexdigest(tensors[key].numpy().tobytes())


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod.", "base_model.model."])
def test_wrapper_prefix_detected_and_stripped(built: dict[str, Path], tmp_path: Path, prefix: str) -> None:
    state = {}
    for shard in _shards(built["qwen2"]):
        state.update(load_file(shard))
    save_file({prefix + k: v for k, v in state.items()}, tmp_path / "model.safetensors")
    report = check(tmp_path / "model.safetensors", against=built["qwen2"], hash=False)
    assert not report.ok
    (note,) = [n for n in report.notes if "prefix" in n]
    parts = ["module.", "_orig_mod."] if prefix == "module._orig_mod." else [prefix]
    assert "the keys match" in note and " ".join(f"--strip-prefix {p}" for p in parts) in note
    stripped = check(tmp_path / "model.safetensors", against=built["qwen2"], hash=False, strip_prefix=parts)
    assert stripped.ok, stripped.to_dict()
    result = CliRunner().invoke(app, ["check", str(tmp_path / "model.safetensors"), "-a", str(built["qwen2"]), "--no-hash",
                                      *[arg for p in parts for arg in ("--strip-prefix", p)]])
    assert result.exit_code == 0, result.output


def test_prefix_also_found_with_a_missing_layer(built: dict[str, Path], tmp_path: Path) -> None:
    state = {}
    for shard in _shards(built["qwen2-cut"]):
        state.update(load_file(shard))
    save_file({"module." + k: v for k, v in state.items()}, tmp_path / "model.safetensors")
    report = check(tmp_path / "model.safetensors", against=built["qwen2"], hash=False)
    assert any("'module.'" in n and "48 differences remain" in n for n in report.notes)


def test_model_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "netdef.py").write_text(
        "import torch\n"
        "def build():\n"
        "    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    state = {k: v for k, v in net.state_dict().items() if k != "0.bias"}
    save_file(state, tmp_path / "net.safetensors")
    report = check(tmp_path / "net.safetensors", model="netdef:build", hash=False)
    assert list(report.missing) == ["0.bias"]
    assert {(m.key, m.field) for m in report.mismatched} == {("2.weight", "shape"), ("2.bias", "shape")}


# ---------------------------------------------------------------------------------------------
# transformers hidden: the structural check alone finds the seed case.

_HIDDEN = """
import json, sys
sys.modules["transformers"] = None  # import transformers -> ImportError, find_spec -> None
import shardscan
report = shardscan.check(sys.argv[1], against=sys.argv[1] + "/config.json", hash=False)
assert "transformers" not in sys.modules or sys.modules["transformers"] is None
print(json.dumps({"report": report.to_dict(), "torch": "torch" in sys.modules}))
"""


def test_structural_check_without_transformers(built: dict[str, Path]) -> None:
    directory = built["qwen2-cut"]
    run = subprocess.run([sys.executable, "-c", _HIDDEN, str(directory)], capture_output=True, text=True, check=True)
    out = json.loads(run.stdout)
    assert out["report"]["missing"] == _missing_per_transformers(directory)
    assert any("not installed" in n for n in out["report"]["notes"])
    assert out["report"]["layouts"][0].endswith("(structural)") or any("structural" in s for s in out["report"]["layouts"])
    assert out["torch"] is False  # the structural path never imports torch


# ---------------------------------------------------------------------------------------------
# The CLI: exit codes, one JSON object, help, a real process.


def test_cli_exit_codes_and_json(built: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["check", str(built["qwen2"]), "--json"])
    assert ok.exit_code == 0
    data = json.loads(ok.stdout)
    assert data["ok"] is True and data["files"] == len(_shards(built["qwen2"])) and data["against"] is None
    bad = runner.invoke(app, ["check", str(built["qwen2-cut"]), "--json", "--no-hash"])
    assert bad.exit_code == 1
    data = json.loads(bad.stdout)
    assert data["missing"] == sorted(data["missing"], key=lambda k: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", k)])
    assert len(data["missing"]) == 48
    for name in ("ok", "path", "against", "files", "tensors", "bytes", "missing", "unexpected", "mismatched", "errors"):
        assert name in data
    # usage errors go through main(), the one funnel that turns them into exit code 2
    (tmp_path / "junk.json").write_text("{}")
    for argv in (["check", str(tmp_path / "absent")], ["check", str(built["qwen2"]), "-a", str(tmp_path / "junk.json")],
                 ["diff", str(built["qwen2"]), str(tmp_path / "absent")], ["check", str(built["qwen2"]), "--bogus"],
                 ["check", str(built["qwen2"]), "--model", "no_such_module_here:build"]):
        monkeypatch.setattr(sys, "argv", ["shardscan", *argv])
        with pytest.raises(SystemExit) as exit_info:
            main()
        assert exit_info.value.code == 2, argv
    err = capsys.readouterr().err
    assert "absent: no such file or directory" in err and "neither a shard index" in err


def test_help_texts() -> None:
    for command in ("check", "diff"):
        result = CliRunner().invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "--json" in result.output and "--strip-prefix" in result.output


def test_real_process(built: dict[str, Path], tmp_path: Path) -> None:
    exe = [sys.executable, "-m", "shardscan"]
    run = subprocess.run([*exe, "check", str(built["qwen2-cut"]), "--no-hash", "--json"], capture_output=True, text=True)
    assert run.returncode == 1 and len(json.loads(run.stdout)["missing"]) == 48 and run.stdout.count("\n") == 1
    run = subprocess.run([*exe, "check", str(tmp_path / "nope")], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.startswith("shardscan: ") and "Traceback" not in run.stderr
    run = subprocess.run([*exe, "check", str(built["qwen2"])], capture_output=True, text=True)
    assert run.returncode == 0 and "\x1b[" not in run.stdout  # not a terminal: no colour
    assert run.stdout.splitlines()[-1].startswith(f"{built['qwen2']}: OK")


# ---------------------------------------------------------------------------------------------
# torch.save (.bin) shards with a pytorch_model.bin.index.json, and DCP.


def _bin_checkpoint(source: Path, directory: Path) -> Path:
    """The safetensors shards of `source` re-saved as pytorch_model-*.bin with their index."""
    directory.mkdir()
    shards = _shards(source)
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"pytorch_model-{i:05d}-of-{len(shards):05d}.bin"
        tensors = load_file(shard)
        torch.save(tensors, directory / name)
        weight_map.update({k: name for k in tensors})
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    shutil.copy(source / "config.json", directory / "config.json")
    return directory


def test_bin_shards(built: dict[str, Path], tmp_path: Path) -> None:
    directory = _bin_checkpoint(built["qwen2"], tmp_path / "bin")
    assert check(directory).ok
    cut = _bin_checkpoint(built["qwen2-cut"], tmp_path / "bin-cut")
    assert sorted(check(cut, hash=False).missing) == _missing_per_transformers(built["qwen2-cut"])
    index = json.loads((directory / "pytorch_model.bin.index.json").read_text())
    victim = sorted(directory.glob("*.bin"))[2]
    lost = sorted(k for k, f in index["weight_map"].items() if f == victim.name)
    victim.unlink()
    report = check(directory, hash=False)
    assert sorted(report.missing) == lost and [e.file for e in report.errors] == [victim.name]


def test_bin_truncated_and_flipped(built: dict[str, Path], tmp_path: Path) -> None:
    directory = _bin_checkpoint(built["qwen2"], tmp_path / "bin")
    victim = sorted(directory.glob("*.bin"))[1]
    keys = sorted(torch.load(victim, weights_only=True))
    with open(victim, "r+b") as handle:
        handle.truncate(victim.stat().st_size // 2)
    report = check(directory, hash=False)
    (error,) = report.errors
    assert error.file == victim.name
    # forensics partition the shard's keys; what did not survive whole is missing
    assert sorted([*error.intact, *error.cut, *error.lost]) == keys
    assert sorted(report.missing) == sorted([*error.cut, *error.lost]) and error.lost

    flipped = sorted(directory.glob("*.bin"))[2]
    data = bytearray(flipped.read_bytes())
    tensors = torch.load(flipped, weights_only=True)
    first = sorted(tensors, key=lambda k: tensors[k].numel())[-1]
    raw = tensors[first].numpy().tobytes()
    at = bytes(data).find(raw)
    assert at > 0
    data[at] ^= 0x01
    flipped.write_bytes(bytes(data))
    report = check(directory)  # torch's CRC32 finds it with no manifest at all
    assert any(e.file == flipped.name and "CRC" in e.error for e in report.errors)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_dcp_directory(built: dict[str, Path], tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    state = {}
    for shard in _shards(built["qwen2"]):
        state.update(load_file(shard))
    dcp.save(state, checkpoint_id=str(tmp_path / "dcp"), no_dist=True)
    report = check(tmp_path / "dcp", against=built["qwen2"], checksums=True)
    assert report.ok, report.to_dict()
    cut = {k: v for k, v in state.items() if not re.match(MODELS["qwen2"][1], k)}
    dcp.save(cut, checkpoint_id=str(tmp_path / "dcp-cut"), no_dist=True)
    report = check(tmp_path / "dcp-cut", against=built["qwen2"] / "config.json", hash=False)
    assert sorted(report.missing) == _missing_per_transformers(built["qwen2-cut"])
    victim = sorted((tmp_path / "dcp").glob("*.distcp"))[0]
    victim.unlink()
    report = check(tmp_path / "dcp", against=built["qwen2"], hash=False)
    assert not report.ok and report.errors


def test_single_shard_against_its_index(built: dict[str, Path]) -> None:
    directory = built["qwen2"]
    shard = _shards(directory)[4]
    report = check(shard, against=directory / "model.safetensors.index.json", hash=False)
    assert report.ok, report.to_dict()
    assert report.files == 1


def test_directory_with_two_formats(qwen: Path) -> None:
    """Hub repositories often hold model.safetensors beside pytorch_model.bin; a loader reads
    one of them, so the check does too (the index's family), with a note."""
    state = {}
    for shard in _shards(qwen):
        state.update(load_file(shard))
    torch.save(state, qwen / "pytorch_model.bin")
    report = check(qwen, hash=False)
    assert report.ok, report.to_dict()
    assert any("pytorch_model.bin" in n for n in report.notes)
    assert report.files == len(_shards(qwen))


def test_lightning_and_ddp_bin_prefixes(built: dict[str, Path], tmp_path: Path) -> None:
    """torch.save variants: a Lightning checkpoint nests the weights under "state_dict" (keys
    state_dict.*), DDP adds module.; both are detected against the safetensors reference and
    stripped with --strip-prefix; a changed shape in the .bin is still a shape mismatch."""
    state = {}
    for shard in _shards(built["qwen2"]):
        state.update(load_file(shard))
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 3}, tmp_path / "last.ckpt")
    report = check(tmp_path / "last.ckpt", against=built["qwen2"], hash=False)
    assert any("--strip-prefix state_dict. --strip-prefix module. the keys match" in n for n in report.notes), report.notes
    assert check(tmp_path / "last.ckpt", against=built["qwen2"], strip_prefix=["state_dict.", "module."], checksums=True).ok
    key = "model.norm.weight"
    state[key] = torch.ones(17)
    torch.save(state, tmp_path / "changed.bin")
    report = check(tmp_path / "changed.bin", against=built["qwen2"], hash=False)
    assert [(m.key, m.field, m.expected, m.actual) for m in report.mismatched] == [(key, "shape", (16,), (17,))]


def test_directory_without_tensor_files(built: dict[str, Path], tmp_path: Path) -> None:
    shutil.copy(built["qwen2"] / "config.json", tmp_path / "config.json")
    report = check(tmp_path)
    assert not report.ok and report.errors[0].error == "no tensor files found"


def test_unbuildable_config_falls_back_to_structural(built: dict[str, Path], tmp_path: Path) -> None:
    config = json.loads((built["qwen2-cut"] / "config.json").read_text())
    config["model_type"] = "no-such-model-type"
    (tmp_path / "config.json").write_text(json.dumps(config))
    report = check(built["qwen2-cut"], against=tmp_path / "config.json", hash=False)
    assert len(report.missing) == 48 and any("structural check only" in n for n in report.notes)
    with pytest.raises(Exception):
        check(built["qwen2-cut"], against=tmp_path / "config.json", hash=False, hf=True)


def test_broken_index_is_a_finding(qwen: Path) -> None:
    (qwen / "model.safetensors.index.json").write_text('{"weight_map": ')
    report = check(qwen, hash=False)
    assert [e.file for e in report.errors] == ["model.safetensors.index.json"]
    assert "not valid JSON" in report.errors[0].error


def test_renamed_on_load_architecture_falls_back(tmp_path: Path) -> None:
    """Mixtral's experts are fused in memory but stored one per expert: the meta model's names
    are not on-disk names, so the structural check is used instead of inventing findings."""
    torch.manual_seed(2)
    model = transformers.MixtralForCausalLM(transformers.MixtralConfig(
        vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=1, num_local_experts=2, num_experts_per_tok=1, max_position_embeddings=32,
    ))
    directory = _save(model, tmp_path / "mixtral", r"model\.layers\.2\.")
    report = check(directory, against=directory / "config.json", hash=False, hf=True)
    assert any("renames" in n for n in report.notes)
    # transformers' missing_keys use its in-memory names (experts.gate_up_proj); on disk, layer 2
    # lacks exactly what layer 1 holds, under the stored names
    on_disk = set()
    for shard in _shards(directory):
        on_disk |= set(load_file(shard))
    layer1 = sorted(k.replace("model.layers.1.", "model.layers.2.") for k in on_disk if k.startswith("model.layers.1."))
    assert sorted(report.missing) == layer1 and any("block_sparse_moe.experts.0" in k for k in layer1)
    assert len(_missing_per_transformers(directory)) < len(layer1)  # fused names: fewer, different keys


def test_check_reuses_a_given_scan(qwen: Path) -> None:
    from shardscan.scanner import scan_paths

    victim = _shards(qwen)[5]
    victim.unlink()
    given = scan_paths([str(p) for p in _shards(qwen)], hash=False)  # files named by their full path
    assert check(qwen, hash=False, scan=given).to_dict() | {"elapsed": 0} == check(qwen, hash=False).to_dict() | {"elapsed": 0}


@pytest.mark.parametrize("seed", range(6))
def test_own_index_measured_in_c_finds_what_the_key_by_key_comparison_finds(qwen: Path, seed: int, monkeypatch) -> None:
    """An index that lost keys, gained keys no shard holds, misplaces keys and names a shard
    that is gone: the report is the same whether the core or Python compares it with the scan."""
    import random

    from shardscan import checker

    rng = random.Random(seed)
    index_path = qwen / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    weight_map = index["weight_map"]
    keys, shards = list(weight_map), sorted(set(weight_map.values()))
    for key in rng.sample(keys, rng.randint(1, 5)):
        del weight_map[key]  # held by a shard, absent from the index: unexpected
    for key in rng.sample(list(weight_map), rng.randint(1, 5)):
        weight_map[key] = rng.choice([shard for shard in shards if shard != weight_map[key]])  # misplaced
    for i in range(rng.randint(1, 3)):
        weight_map[f"model.layers.{i}.ghost{'é' * (seed % 2)}.weight"] = rng.choice(shards)  # in no shard: missing
    if seed % 3 == 0:
        weight_map[keys[-1]] = "model-00099-of-00099.safetensors"  # a shard that is not there
    index_path.write_text(json.dumps(index, ensure_ascii=seed % 2 == 0))
    used = []
    real = checker._index_in_c
    monkeypatch.setattr(checker, "_index_in_c", lambda *a: used.append(real(*a)) or used[-1])
    in_c = check(qwen, hash=False).to_dict()
    assert used and used[0] is not None  # the core did measure it
    monkeypatch.setattr(checker, "_index_in_c", lambda *a: None)
    key_by_key = check(qwen, hash=False).to_dict()
    in_c.pop("elapsed"), key_by_key.pop("elapsed")
    assert in_c == key_by_key
    assert in_c["missing"] and in_c["unexpected"] and any("but they are in" in e["error"] for e in in_c["errors"])


@pytest.mark.parametrize("name", ["qwen2-cut", "gpt2-cut", "llama-cut"])
def test_blocks_measured_block_by_block_find_what_the_key_by_key_comparison_finds(built: dict[str, Path], name: str,
                                                                                  monkeypatch) -> None:
    """Dense models whose last layers an interrupted run lost: config.json's structural layout
    finds the same whether measured block by block or key by key."""
    from shardscan.layout import BlockLayout

    by_block = check(built[name], hash=False).to_dict()
    monkeypatch.setattr(BlockLayout, "block_findings", lambda self: None)
    key_by_key = check(built[name], hash=False).to_dict()
    by_block.pop("elapsed"), key_by_key.pop("elapsed")
    assert by_block == key_by_key
    assert by_block["missing"] and all(re.match(MODELS[name[:-4]][1], key) for key in by_block["missing"])


@pytest.mark.parametrize("hashed", [False, True])
def test_a_key_two_shards_hold_is_a_duplicate(tmp_path: Path, hashed: bool) -> None:
    # A loader keeps whichever copy it reads last: the checkpoint says two things at once.
    save_file({"a": torch.zeros(2), "b": torch.ones(2)}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"c": torch.ones(3), "a": torch.ones(2)}, tmp_path / "model-00002-of-00002.safetensors")
    report = check(tmp_path, hash=hashed)
    assert [(e.file, e.kind) for e in report.errors] == [("model-00002-of-00002.safetensors", "duplicate")]
    assert "'a'" in report.errors[0].error and not report.ok
    # Each name once across the shards: no finding.
    save_file({"c": torch.ones(3), "d": torch.ones(2)}, tmp_path / "model-00002-of-00002.safetensors")
    assert check(tmp_path, hash=hashed).ok
