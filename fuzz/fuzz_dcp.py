"""atheris target: a DCP checkpoint's .metadata (pickle + structure checks) on arbitrary bytes.
Allowed outcome: a listing or FormatError/OSError. Anything else is a bug."""

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from shardscan.formats import dcp
    from shardscan.errors import FormatError

# One directory for the whole run, on tmpfs where there is one: each input becomes .metadata.
DIR = Path(tempfile.mkdtemp(prefix="fuzz-dcp-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))


def one(data: bytes) -> None:
    (DIR / ".metadata").write_bytes(data)
    try:
        dcp.read_dir(DIR, "ckpt")
    except (FormatError, OSError):
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
