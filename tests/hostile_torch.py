"""Small generators of hostile torch.save files, and a measurement of one command run as a
child process (its peak resident memory and CPU time, as the kernel accounts them).

The pickles are written opcode by opcode, so each file is exactly the attack and nothing
else; the archive around them is torch's layout (`archive/data.pkl`, `archive/data/<key>`,
`archive/byteorder`, `archive/version`, stored), written with zipfile."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

PROTO = b"\x80\x02"
STOP = b"."


def text(s: str | bytes) -> bytes:
    raw = s.encode("utf-8", "surrogatepass") if isinstance(s, str) else s
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def integer(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])  # BININT1
    if -(1 << 31) <= n < (1 << 31):
        return b"J" + struct.pack("<i", n)  # BININT
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    assert len(raw) < 256
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def ints(values) -> bytes:
    return b"(" + b"".join(integer(v) for v in values) + b"t"  # MARK ... TUPLE


def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def tensor(key: str, numel: int, shape, stride, *, storage: str = "ByteStorage", offset: int = 0) -> bytes:
    """_rebuild_tensor_v2(persistent storage `key`, offset, shape, stride, False, OrderedDict())."""
    pid = b"(" + text("storage") + glob("torch", storage) + text(key) + text("cpu") + integer(numel) + b"tQ"
    args = pid + integer(offset) + ints(shape) + ints(stride) + b"\x89" + glob("collections", "OrderedDict") + b")R"
    return glob("torch._utils", "_rebuild_tensor_v2") + b"(" + args + b"tR"


def state_dict(items: dict[str, bytes]) -> bytes:
    """A pickle of {name: value} where each value is an opcode sequence."""
    body = b"".join(text(k) + v for k, v in items.items())
    return PROTO + b"}(" + body + b"u" + STOP


def torch_zip(path: Path, pkl: bytes, storages: dict[str, bytes]) -> Path:
    """A torch.save archive in torch's own layout holding this pickle and these storages."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        for key, data in storages.items():
            z.writestr(f"archive/data/{key}", data)
        z.writestr("archive/version", "3\n")
    return path


@dataclass(frozen=True)
class Usage:
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int  # bytes
    cpu: float  # user + system seconds


_MEASURE = """
import resource, subprocess, sys, json
run = subprocess.run(sys.argv[2:], capture_output=True, stdin=subprocess.DEVNULL)
use = resource.getrusage(resource.RUSAGE_CHILDREN)
sys.stdout.write(json.dumps([run.returncode, use.ru_maxrss * 1024, use.ru_utime + use.ru_stime]) + "\\n")
open(sys.argv[1], "wb").write(run.stdout + b"\\0" + run.stderr)
"""


def measure(argv: list[str], tmp: Path, timeout: float = 600) -> Usage:
    """Runs argv in a grandchild and returns what it cost, from getrusage(RUSAGE_CHILDREN) of a
    wrapper that has no other child (so the figures are that command's alone). The timeout
    only keeps a regression from hanging the suite; it is not the measurement. Under the
    sanitizers (scripts/sanitize-tests.sh preloads them) costs mean nothing: the test is skipped
    there, and runs in the normal suite."""
    if "asan" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("costs measured under AddressSanitizer are not comparable")
    out = tmp / f".measure-{os.getpid()}-{len(list(tmp.iterdir()))}"
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(out), *argv], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert done.returncode == 0, done.stderr
    code, rss, cpu = json.loads(done.stdout)
    stdout, _, stderr = out.read_bytes().partition(b"\0")
    out.unlink()
    return Usage(code, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"), rss, cpu)


def shardscan(*args: str) -> list[str]:
    return [sys.executable, "-m", "shardscan", *args]


_TORCH_LOAD = """
import sys, torch
try:
    torch.load(sys.argv[1], weights_only=True, map_location="cpu")
    print("loaded")
except Exception as e:
    print("refused", type(e).__name__, str(e).replace("\\n", " ")[-300:])
"""


def torch_load(path: Path) -> list[str]:
    """The command torch's own weights-only load of `path` is measured by."""
    return [sys.executable, "-c", _TORCH_LOAD, str(path)]
