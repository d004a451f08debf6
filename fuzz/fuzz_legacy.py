"""atheris target: a legacy torch.save file (five pickles, then counted storages) on
arbitrary bytes. Allowed outcome: a listing or FormatError/OSError. Anything else is a bug."""

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from shardscan._core import NativeFile
    from shardscan.errors import FormatError
    from shardscan.formats import torch_legacy

# One file for the whole run, on tmpfs where there is one: each input overwrites it.
PATH = Path(tempfile.mkdtemp(prefix="fuzz-legacy-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None)) / "f.pt"


def one(data: bytes) -> None:
    PATH.write_bytes(data)
    try:
        with NativeFile(PATH) as file:
            torch_legacy.read(file, "f.pt")
    except (FormatError, OSError):
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
