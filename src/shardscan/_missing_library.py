"""The hint for a C core that cannot load because a system library it links is not installed
(a source build moved to another machine, or the library removed since)."""

from __future__ import annotations

import re

#: Libraries whose Debian package does not follow the soname rule below.
_PACKAGES = {"libcrypto": "libssl3"}

_LOADER_ERROR = re.compile(r"(lib[\w+.-]+?)\.so\.(\d+)[\d.]*: cannot open shared object file")


def debian_package(library: str, major: str) -> str:
    """Debian's package for lib`library`.so.`major`: policy names it libfooN, or libfoo2-N
    when the name ends in a digit."""
    if library in _PACKAGES:
        return _PACKAGES[library]
    return f"{library}-{major}" if library[-1].isdigit() else f"{library}{major}"


def hint(error: ImportError) -> str | None:
    """One line naming the missing library and the package to install, or None when the
    loader's message is about something else."""
    match = _LOADER_ERROR.search(str(error))
    if match is None:
        return None
    soname = match.group(0).split(":")[0]
    return (f"the C core needs {soname}, which is not installed: apt-get install "
            f"{debian_package(match.group(1), match.group(2))} (or use the self-contained wheel from scripts/wheel)")
