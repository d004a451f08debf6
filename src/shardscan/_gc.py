"""The cyclic garbage collector, paused around the building of per-tensor objects."""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def paused() -> Iterator[None]:
    """Pauses the cyclic collector for the block (or, as a decorator, the call) and restores
    it after. A scan of a million tensors allocates millions of acyclic objects (keys, shapes,
    Specs); every collection pass walks all those still alive and frees none, which cost about
    a third of such a scan. Reference counting still frees everything as usual."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
