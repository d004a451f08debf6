"""A Lightning CheckpointIO that writes shardscan's manifest beside every checkpoint file."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

try:
    from lightning.pytorch.plugins.io import TorchCheckpointIO
except ImportError:  # the standalone package
    from pytorch_lightning.plugins.io import TorchCheckpointIO  # type: ignore[no-redef]

from ..errors import ShardscanError
from ..manifest import manifest_path, write_manifest

_log = logging.getLogger(__name__)


class ManifestCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO that, once a `.ckpt` file is written, writes
    `<file>.shardscan.manifest.parquet` beside it, and removes it with the checkpoint.
    A Callback's on_save_checkpoint runs before the file exists; CheckpointIO.save_checkpoint
    is what writes it, and Lightning calls it on the global rank 0 only."""

    def __init__(self, threads: int | None = None) -> None:
        super().__init__()
        self.threads = threads

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        try:
            write_manifest(Path(os.fspath(path)), threads=self.threads)
        except (ShardscanError, OSError) as exc:
            _log.warning("shardscan: no manifest for %s: %s", path, exc)

    def remove_checkpoint(self, path: Any) -> None:
        super().remove_checkpoint(path)
        try:
            manifest_path(Path(os.fspath(path))).unlink()
        except FileNotFoundError:
            pass
