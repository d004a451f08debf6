"""Type names shared by the package's public functions."""

from __future__ import annotations

import os

#: A path as the public API accepts it: a string or anything os.fspath takes.
PathLike = str | os.PathLike[str]
