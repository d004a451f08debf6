"""A transformers TrainerCallback that writes shardscan's manifest into every checkpoint."""

from __future__ import annotations

import logging
import os
from typing import Any

from transformers import TrainerCallback

from ..errors import ShardscanError
from ..manifest import write_manifest

_log = logging.getLogger(__name__)


class ManifestCallback(TrainerCallback):
    """Writes `shardscan.manifest.parquet` into `output_dir/checkpoint-N` after the Trainer has
    saved it. `on_save` runs once `_save_checkpoint` has written every file (weights,
    optimizer, scheduler, RNG state and trainer_state.json), on every process: only the
    world's main process writes. A checkpoint that does not scan clean gets no manifest and a
    warning, never an exception that would stop training."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads
        self.written: list[str] = []

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if not state.is_world_process_zero:
            return control
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if not os.path.isdir(checkpoint):
            return control  # save_strategy wrote elsewhere (a custom _save_checkpoint)
        try:
            self.written.append(os.fspath(write_manifest(checkpoint, threads=self.threads)))
        except (ShardscanError, OSError) as exc:
            _log.warning("shardscan: no manifest for %s: %s", checkpoint, exc)
        return control
