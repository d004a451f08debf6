"""`scan` draws a progress bar on stderr when stderr is a terminal, and never otherwise.

The bar waits for a second of hashing (a short scan shows none), and the engine reports bytes
done about ten times a second. A small file is hashed long before either, so the terminal test
makes the reporter's clock read a second later and holds the real hashing call until the CLI's
reporter has seen a partial count once: what a big file does by itself, with no waiting on time.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import threading
import time
import types

import pytest
import torch
from safetensors.torch import save_file

from shardscan import _core, cli


@pytest.fixture()
def small_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.randn(256, 256), "b": torch.randn(256)}, str(path))
    return path


def _read_all(fd: int, into: bytearray) -> None:
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError:  # EIO once the other side is closed
            return
        if not chunk:
            return
        into += chunk


def test_scan_draws_a_progress_bar_on_a_terminal(small_file, monkeypatch, capsys):
    master, slave = pty.openpty()
    screen = bytearray()
    reader = threading.Thread(target=_read_all, args=(master, screen), daemon=True)
    reader.start()
    terminal = os.fdopen(slave, "w", encoding="utf-8", buffering=1)
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv("TERM", "xterm-256color")
    for name in ("NO_COLOR", "TERM_PROGRAM", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)

    # The reporter's clock: each reading a second past the last, so the bar is due at once.
    ticks = iter(range(0, 10**6, 2))
    clock = types.SimpleNamespace(**{n: getattr(time, n) for n in dir(time) if not n.startswith("_")})
    clock.monotonic = lambda: float(next(ticks))
    monkeypatch.setattr(cli, "time", clock)

    partial_seen = threading.Event()
    real_reporter = cli._progress_reporter

    def reporter():
        report = real_reporter()
        assert report is not None, "stderr is a terminal: scan must get a progress reporter"

        def spy(done: int, total: int) -> None:
            report(done, total)
            if done < total:
                partial_seen.set()

        return spy

    real_call = _core._Batch._call

    def held_call(self, threads, counter):
        assert counter != _core.ffi.NULL, "scan hashed with no progress counter"
        counter[0] = 1  # one byte "done", as the first poll of a big file sees some
        assert partial_seen.wait(30), "the CLI never polled the counter"
        counter[0] = 0
        return real_call(self, threads, counter)

    monkeypatch.setattr(cli, "_progress_reporter", reporter)
    monkeypatch.setattr(_core._Batch, "_call", held_call)
    with pytest.raises(SystemExit) as exit_:
        cli.app(["scan", str(small_file)], prog_name="shardscan")
    terminal.close()
    reader.join(10)
    os.close(master)

    assert exit_.value.code == 0
    assert "2 tensors" in capsys.readouterr().out
    text = screen.decode("utf-8", "replace")
    assert "\u2501" in text, text  # the bar itself (rich's heavy horizontal line)
    assert "/s" in text, text  # the transfer speed column
    assert "\x1b[" in text  # drawn with terminal control sequences, then cleared (transient)


def test_scan_draws_nothing_when_stderr_is_not_a_terminal(small_file):
    r = subprocess.run([sys.executable, "-m", "shardscan", "scan", str(small_file)], capture_output=True, text=True,
                       env={**os.environ, "TERM": "xterm-256color"}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert "\x1b" not in r.stdout and "\u2501" not in r.stdout
    assert "2 tensors" in r.stdout
