"""The SIGBUS guard survives another library replacing our handler (Ray does, without chaining
back to us): a file cut while being hashed is still an error, not a crash."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_guard_rearms_after_another_handler_takes_sigbus(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, signal, struct, json
        from shardscan._core import NativeFile, HashJob, hash_jobs, parse_safetensors
        path = {str(tmp_path / "big.safetensors")!r}
        n = 64 << 20
        header = json.dumps({{"a": {{"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}}}).encode()
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header)
            f.write(os.urandom(n))
        with NativeFile(path) as f:
            header = parse_safetensors(f)   # our handler is installed here
            signal.signal(signal.SIGBUS, signal.SIG_DFL)  # ... and replaced here, as Ray does
            os.truncate(path, 4096)
            (result,) = hash_jobs([f], [HashJob(file=0, offset=header.offsets[0], nbytes=header.nbytes[0])])
        print(result.status, result.message)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "shrank while being read" in proc.stdout
