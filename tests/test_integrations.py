"""The save-time integrations, run inside the real frameworks: every checkpoint the Trainer or
Lightning saves gets a manifest, which then proves it intact or fails it."""

from __future__ import annotations

from pathlib import Path

import pytest

import producers
import shardscan

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")


def test_the_trainer_callback_writes_a_manifest_into_every_checkpoint(tmp_path: Path) -> None:
    pytest.importorskip("accelerate")
    from transformers import Trainer

    from shardscan.integrations.transformers import ManifestCallback

    callback = ManifestCallback()
    args = producers._training_arguments(tmp_path / "run", 4)
    Trainer(model=producers.tiny_llama(), args=args, train_dataset=producers.token_dataset(),
            callbacks=[callback]).train()
    checkpoints = sorted((tmp_path / "run").glob("checkpoint-*"))
    assert checkpoints and all((c / "shardscan.manifest.parquet").is_file() for c in checkpoints)
    assert [Path(p) for p in callback.written] == [c / "shardscan.manifest.parquet" for c in checkpoints]
    newest = checkpoints[-1]
    report = shardscan.check(newest)
    assert report.ok and "manifest shardscan.manifest.parquet" in report.layouts
    # a byte the Trainer would load without noticing: the manifest catches it
    producers.flip_byte(newest / "rng_state.pth", (newest / "rng_state.pth").stat().st_size // 2)
    assert not shardscan.check(newest).ok
    assert shardscan.latest(tmp_path / "run") == checkpoints[-2]


def test_the_lightning_checkpoint_io_writes_a_manifest_beside_every_ckpt(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from shardscan.integrations.lightning import ManifestCheckpointIO

    saving = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), filename="{step}", every_n_train_steps=2, save_top_k=1,
                             monitor="step", mode="max")
    with producers._quiet_lightning():
        trainer = pl.Trainer(max_steps=6, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=[saving],
                             plugins=[ManifestCheckpointIO()], num_sanity_val_steps=0)
        trainer.fit(producers._lightning_module(), train_dataloaders=producers._regression_loader())
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    # save_top_k=1 removed the older checkpoints, and their manifests with them
    assert files == ["step=6.ckpt", "step=6.ckpt.shardscan.manifest.parquet"]
    checkpoint = tmp_path / "ckpt" / "step=6.ckpt"
    assert shardscan.check(checkpoint).ok
    table = shardscan.scan(checkpoint)
    producers.flip_byte(checkpoint, table.column("offset").to_pylist()[0])
    assert not shardscan.check(checkpoint).ok
