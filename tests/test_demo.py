"""The demo: its checkpoint is written without torch yet laid out exactly as transformers'
save_pretrained lays it out, and ./scripts/demo sets up only what it needs and prints the
README's transcript. The end-to-end run is slow (a venv and a build): it runs once."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAKE_DEMO = ROOT / "scripts" / "make_demo.py"
HEAVY = ("torch", "transformers", "ray", "atheris", "hypothesis")


def write_demo(out: Path, *extra: str) -> str:
    # torch and transformers made unimportable: the demo's writer must not need them.
    code = ("import runpy, sys\n"
            "sys.modules.update(torch=None, transformers=None)\n"
            f"sys.argv = ['make_demo.py', {str(out)!r}, *{list(extra)!r}]\n"
            f"runpy.run_path({str(MAKE_DEMO)!r}, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_demo_checkpoint_is_what_save_pretrained_writes(tmp_path):
    import torch
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    ours = tmp_path / "ours"
    write_demo(ours, "--whole")
    config = {k: v for k, v in json.loads((ours / "config.json").read_text()).items() if k not in ("architectures", "model_type", "dtype")}
    Qwen2ForCausalLM(Qwen2Config(**config)).save_pretrained(tmp_path / "theirs", max_shard_size="1MB")

    index = lambda d: json.loads((d / "model.safetensors.index.json").read_text())
    assert index(ours)["weight_map"] == index(tmp_path / "theirs")["weight_map"]
    assert index(ours)["metadata"]["total_size"] == index(tmp_path / "theirs")["metadata"]["total_size"]
    sizes = lambda d: {p.name: p.stat().st_size for p in d.glob("*.safetensors")}
    assert sizes(ours) == sizes(tmp_path / "theirs")

    model, info = AutoModelForCausalLM.from_pretrained(ours, output_loading_info=True)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    stored = {}
    for shard in ours.glob("*.safetensors"):
        stored.update(load_file(shard))
    state = model.state_dict()
    assert all(torch.equal(state[k], torch.from_numpy(v)) for k, v in stored.items())


def readme_transcript() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```console\n\$ ./scripts/demo\n(.*?)```", text, re.S).group(1)
    return block.splitlines()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """./scripts/demo in a fresh copy of the checkout, as a new user runs it."""
    if not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to copy (git ls-files)")
    copy = tmp_path_factory.mktemp("checkout")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    subprocess.run(["cp", "--parents", "-t", str(copy), *[f.decode() for f in files if f and (ROOT / f.decode()).exists()]],
                   cwd=ROOT, check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "LD_PRELOAD", "LD_LIBRARY_PATH")}
    proc = subprocess.run([str(copy / "scripts" / "demo")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=env, cwd=copy, timeout=900)
    assert proc.returncode == 0, proc.stdout
    return copy, proc.stdout.splitlines()


def test_the_demo_installs_nothing_heavy(demo_run):
    copy, _ = demo_run
    code = f"import importlib.util; print([m for m in {HEAVY!r} if importlib.util.find_spec(m)])"
    proc = subprocess.run([str(copy / ".venv" / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_the_demo_prints_the_readme_transcript(demo_run):
    _, lines = demo_run
    start = next(i for i, line in enumerate(lines) if line.startswith("demo checkpoint:"))
    shown = readme_transcript()
    assert lines[start : start + len(shown)] == shown


def test_the_source_install_links_the_system_libraries(demo_run):
    copy, _ = demo_run
    code = "import shardscan._native as n; print(n.__file__)"
    core = subprocess.run([str(copy / ".venv" / "bin" / "python"), "-c", code], capture_output=True, text=True,
                          check=True, cwd=copy).stdout.strip()
    ldd = subprocess.run(["ldd", core], capture_output=True, text=True, check=True).stdout
    for soname in ("libxxhash.so", "libisal.so"):
        [line] = [line for line in ldd.splitlines() if soname in line]
        assert "=> /usr/lib/" in line or "=> /lib/" in line, line
