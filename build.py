"""cffi builder for shardscan._native (API, out-of-line mode).

Sources: every csrc/*.c; declarations visible to Python: csrc/shardscan.cdef (checked against
csrc/shardscan.h by the compiler, since API mode compiles the generated code with the header).
The system libraries it links are listed once, in SYSTEM_LIBRARIES; scripts/bootstrap.sh and
scripts/wheel read it from here (`python build.py --system-libraries`: one
"header library package" line each).
SHARDSCAN_SANITIZE=1 builds with AddressSanitizer + UndefinedBehaviorSanitizer for the tests.
"""
import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

#: (header, library to link, Debian package with both): one line per system library.
SYSTEM_LIBRARIES = (
    ("xxhash.h", "xxhash", "libxxhash-dev"),  # XXH3-128, the tensor checksums
    ("isa-l/crc.h", "isal", "libisal-dev"),  # CRC-32 of torch.save's zip records (Intel ISA-L)
    ("openssl/evp.h", "crypto", "libssl-dev"),  # SHA-256 of whole files (OpenSSL's EVP interface)
)

if __name__ == "__main__" and sys.argv[1:] == ["--system-libraries"]:
    # Before anything else, so that set-up scripts can ask on a machine without cffi or headers.
    print("\n".join(" ".join(entry) for entry in SYSTEM_LIBRARIES))
    sys.exit(0)

from cffi import FFI

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"


def compiler() -> list[str]:
    """The C compiler setuptools will use: $CC, else the one Python was built with."""
    return shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")


def missing_headers(libraries=SYSTEM_LIBRARIES) -> list[tuple[str, str]]:
    """(header, Debian package) for every header the compiler cannot include. The compiler
    itself is asked, so every place it searches counts: CFLAGS/CPPFLAGS -I, C_INCLUDE_PATH,
    CPATH and its built-in directories. Raises FileNotFoundError when there is no compiler."""
    flags = shlex.split(os.environ.get("CPPFLAGS", "")) + shlex.split(os.environ.get("CFLAGS", ""))
    missing = []
    for header, _, package in libraries:
        probe = subprocess.run(
            [*compiler(), *flags, "-E", "-x", "c", "-o", os.devnull, "-"],
            input=f"#include <{header}>\n", capture_output=True, text=True,
        )
        if probe.returncode != 0:
            missing.append((header, package))
    return missing


def require_headers(libraries=SYSTEM_LIBRARIES) -> None:
    """Stops the build with one message naming every missing header and its package."""
    try:
        missing = missing_headers(libraries)
    except FileNotFoundError:
        sys.exit(f"shardscan: no C compiler ({' '.join(compiler())}); install one first: apt-get install gcc")
    if missing:
        headers = ", ".join(header for header, _ in missing)
        packages = " ".join(package for _, package in missing)
        sys.exit(f"shardscan: the C compiler cannot find {headers}; install them first: apt-get install {packages}")


require_headers()

sanitize = os.environ.get("SHARDSCAN_SANITIZE") == "1"
flags = ["-std=c11", "-O2", "-g", "-Wall", "-Wextra", "-pthread", "-fvisibility=hidden"]
if sanitize:
    flags += ["-O1", "-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
if os.environ.get("SHARDSCAN_WERROR") == "1":
    flags.append("-Werror")

ffibuilder = FFI()
ffibuilder.cdef((CSRC / "shardscan.cdef").read_text())
ffibuilder.set_source(
    "shardscan._native",
    '#include "shardscan.h"',
    # setuptools wants paths relative to the project root, where it runs this file.
    sources=sorted(str(p.relative_to(HERE)) for p in CSRC.glob("*.c")),
    include_dirs=["csrc"],
    libraries=[library for _, library, _ in SYSTEM_LIBRARIES],
    extra_compile_args=flags,
    extra_link_args=["-pthread"] + (["-fsanitize=address,undefined"] if sanitize else []),
)
