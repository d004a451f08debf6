"""cffi builder for shardscan._native (API, out-of-line mode).

Sources: every csrc/*.c; declarations visible to Python: csrc/shardscan.cdef (checked against
csrc/shardscan.h by the compiler, since API mode compiles the generated code with the header).
XXH3 comes from the system's libxxhash (Debian: libxxhash-dev), CRC32 from libdeflate
(libdeflate-dev), SHA-256 from OpenSSL's libcrypto (libssl-dev).
SHARDSCAN_SANITIZE=1 builds with AddressSanitizer + UndefinedBehaviorSanitizer for the tests.
"""
import os
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"


def _require_headers() -> None:
    include_dirs = ["/usr/include", "/usr/local/include", *os.environ.get("CPATH", "").split(":")]
    for header, package in (("xxhash.h", "libxxhash-dev"), ("libdeflate.h", "libdeflate-dev"),
                            ("openssl/evp.h", "libssl-dev")):
        if not any(d and Path(d, header).exists() for d in include_dirs):
            sys.exit(f"shardscan: {header} not found; install it first: apt-get install {package}")


_require_headers()

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
    libraries=["xxhash", "deflate", "crypto"],
    extra_compile_args=flags,
    extra_link_args=["-pthread"] + (["-fsanitize=address,undefined"] if sanitize else []),
)

