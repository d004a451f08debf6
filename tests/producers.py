"""Checkpoints written by the real frameworks, and resumes done the way those frameworks do them.

Every producer here runs the framework's own save path on a tiny model (CPU, offline, no hub
downloads): `transformers.Trainer.train` with `save_steps`, a PEFT LoRA run through the same
Trainer, `accelerate.Accelerator.save_state`, a Lightning `Trainer.fit` with `ModelCheckpoint`,
`torch.distributed.checkpoint.save` from two real gloo ranks, a legacy (pre-zip) `torch.save`, and
a DeepSpeed ZeRO engine's `save_checkpoint` on CPU. Every `resume_*` helper loads a checkpoint
through the framework's own resume path and raises exactly what a user would see when that fails.
docs/resume-sets.md lists which files each resume path reads.

The damage helpers at the bottom cut, delete or flip bytes of a file the way an interrupted save
or a bad disk does; they never need our own code to find a tensor (`tensor_byte_offset` searches
the file for bytes the framework itself loaded).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import socket
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# DeepSpeed probes for a GPU at import; on this CPU-only machine tell it so instead of guessing.
os.environ.setdefault("DS_ACCELERATOR", "cpu")
# Nothing here may phone home or write outside the test's directories.
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

SEED = 0
VOCAB = 64
SEQUENCE = 8


# --------------------------------------------------------------------------------------------
# transformers.Trainer
# --------------------------------------------------------------------------------------------

HF_MAX_STEPS = 6
HF_SAVE_STEPS = 2


def tiny_llama():
    """A 2-layer Llama, hidden size 32, built from a config (no download)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(SEED)
    return LlamaForCausalLM(config)


def token_dataset(rows: int = 32) -> list[dict[str, torch.Tensor]]:
    """Causal-LM rows the Trainer's default collator stacks as they are."""
    generator = torch.Generator().manual_seed(SEED)
    out = []
    for _ in range(rows):
        ids = torch.randint(0, VOCAB, (SEQUENCE,), generator=generator)
        out.append({"input_ids": ids, "labels": ids.clone()})
    return out


def _training_arguments(output_dir: Path, max_steps: int, **overrides: Any):
    """TrainingArguments of every Trainer run here; `overrides` must be given at construction
    (__post_init__ acts on some, e.g. `deepspeed`)."""
    from transformers import TrainingArguments

    settings: dict[str, Any] = dict(
        output_dir=str(output_dir), max_steps=max_steps, save_steps=HF_SAVE_STEPS,
        per_device_train_batch_size=2, learning_rate=1e-3, report_to=[], use_cpu=True,
        logging_steps=1, disable_tqdm=True, seed=SEED, dataloader_num_workers=0,
    )
    return TrainingArguments(**(settings | overrides))


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def hf_trainer_run(output_dir: Path, *, max_steps: int = HF_MAX_STEPS) -> Path:
    """Trains the tiny Llama with `Trainer.train()`, saving every HF_SAVE_STEPS steps:
    output_dir/checkpoint-2, -4, -6 with model.safetensors, optimizer.pt, scheduler.pt,
    rng_state.pth, trainer_state.json, training_args.bin, config.json, generation_config.json."""
    from transformers import Trainer

    _quiet_transformers()
    trainer = Trainer(model=tiny_llama(), args=_training_arguments(output_dir, max_steps),
                      train_dataset=token_dataset())
    trainer.train()
    return output_dir


@dataclasses.dataclass(frozen=True)
class Resumed:
    """What a resume ended with: the step it resumed at and the step it trained to."""

    resumed_at: int
    final_step: int


def hf_trainer_resume(checkpoint: Path, scratch: Path, *, extra_steps: int = 2) -> Resumed:
    """`Trainer.train(resume_from_checkpoint=checkpoint)` on a fresh model, training
    `extra_steps` more steps into `scratch` (never into the checkpoint's own run)."""
    from transformers import Trainer
    from transformers.trainer_callback import TrainerState

    _quiet_transformers()
    resumed_at = TrainerState.load_from_json(str(checkpoint / "trainer_state.json")).global_step \
        if (checkpoint / "trainer_state.json").is_file() else 0
    args = _training_arguments(scratch, resumed_at + extra_steps, save_strategy="no")
    trainer = Trainer(model=tiny_llama(), args=args, train_dataset=token_dataset())
    trainer.train(resume_from_checkpoint=str(checkpoint))
    return Resumed(resumed_at=resumed_at, final_step=trainer.state.global_step)


# --------------------------------------------------------------------------------------------
# PEFT LoRA through the same Trainer
# --------------------------------------------------------------------------------------------

def _lora_model():
    from peft import LoraConfig, get_peft_model

    return get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))


def peft_trainer_run(output_dir: Path, *, max_steps: int = 4) -> Path:
    """A LoRA fine-tune: each checkpoint-N holds adapter_model.safetensors and
    adapter_config.json instead of the full model, plus the usual optimizer/scheduler/rng/state."""
    from transformers import Trainer

    _quiet_transformers()
    trainer = Trainer(model=_lora_model(), args=_training_arguments(output_dir, max_steps),
                      train_dataset=token_dataset())
    trainer.train()
    return output_dir


def peft_trainer_resume(checkpoint: Path, scratch: Path, *, extra_steps: int = 2) -> Resumed:
    from transformers import Trainer
    from transformers.trainer_callback import TrainerState

    _quiet_transformers()
    resumed_at = TrainerState.load_from_json(str(checkpoint / "trainer_state.json")).global_step
    args = _training_arguments(scratch, resumed_at + extra_steps, save_strategy="no")
    trainer = Trainer(model=_lora_model(), args=args, train_dataset=token_dataset())
    trainer.train(resume_from_checkpoint=str(checkpoint))
    return Resumed(resumed_at=resumed_at, final_step=trainer.state.global_step)


# --------------------------------------------------------------------------------------------
# accelerate
# --------------------------------------------------------------------------------------------

class StepCounter:
    """A custom object registered with `register_for_checkpointing`: accelerate saves its
    state_dict() as custom_checkpoint_0.pkl (a torch.save file despite the name)."""

    def __init__(self) -> None:
        self.batches_seen = 0
        self.loss_ema = torch.zeros(())

    def state_dict(self) -> dict[str, Any]:
        return {"batches_seen": self.batches_seen, "loss_ema": self.loss_ema.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches_seen = int(state["batches_seen"])
        self.loss_ema = state["loss_ema"]


def _small_mlp() -> torch.nn.Module:
    torch.manual_seed(SEED)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


def _regression_loader(rows: int = 64, batch: int = 8):
    from torch.utils.data import DataLoader, TensorDataset

    generator = torch.Generator().manual_seed(SEED)
    data = TensorDataset(torch.randn(rows, 16, generator=generator), torch.randn(rows, 4, generator=generator))
    return DataLoader(data, batch_size=batch, shuffle=True)


@dataclasses.dataclass
class AccelerateSession:
    """The objects a training script hands to one Accelerator, prepared."""

    accelerator: Any
    model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    loader: Any
    counter: StepCounter


def _accelerate_session() -> AccelerateSession:
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    # A seedable sampler is what makes accelerate's sampler state resumable at all.
    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    model = _small_mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    model, optimizer, scheduler, loader = accelerator.prepare(model, optimizer, scheduler, _regression_loader())
    counter = StepCounter()
    accelerator.register_for_checkpointing(counter)
    return AccelerateSession(accelerator, model, optimizer, scheduler, loader, counter)


def accelerate_save_state(output_dir: Path, *, steps: int = 4) -> Path:
    """Trains a few steps, then `Accelerator.save_state(output_dir)`: model.safetensors,
    optimizer.bin, scheduler.bin, random_states_0.pkl, custom_checkpoint_0.pkl (sampler.bin only
    where accelerate's own rule writes one; see docs/resume-sets.md)."""
    session = _accelerate_session()
    batches = iter(session.loader)
    for _ in range(steps):
        inputs, targets = next(batches)
        loss = torch.nn.functional.mse_loss(session.model(inputs), targets)
        session.accelerator.backward(loss)
        session.optimizer.step()
        session.scheduler.step()
        session.optimizer.zero_grad()
        session.counter.batches_seen += 1
        session.counter.loss_ema = 0.9 * session.counter.loss_ema + 0.1 * loss.detach()
    session.accelerator.save_state(str(output_dir))
    return output_dir


def accelerate_resume(checkpoint: Path) -> AccelerateSession:
    """`Accelerator.load_state(checkpoint)` into freshly prepared objects, as a script resumes."""
    session = _accelerate_session()
    session.accelerator.load_state(str(checkpoint))
    return session


# --------------------------------------------------------------------------------------------
# Lightning
# --------------------------------------------------------------------------------------------

LIGHTNING_MAX_STEPS = 4
LIGHTNING_EVERY = 2


def _lightning_module():
    import lightning.pytorch as pl

    class TinyRegression(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _small_mlp()

        def training_step(self, batch, batch_idx):
            inputs, targets = batch
            return torch.nn.functional.mse_loss(self.net(inputs), targets)

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(self.parameters(), lr=1e-2)
            return {"optimizer": optimizer,
                    "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)}

    return TinyRegression()


def _lightning_trainer(root: Path, max_steps: int, callbacks: list):
    import lightning.pytorch as pl

    return pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root),
                      callbacks=callbacks, num_sanity_val_steps=0)


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    names = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def lightning_run(output_dir: Path) -> Path:
    """`Trainer.fit` with `ModelCheckpoint(every_n_train_steps=2, save_top_k=-1)`:
    output_dir/step=2.ckpt and step=4.ckpt, each one self-contained torch.save file."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoints = ModelCheckpoint(dirpath=str(output_dir), filename="{step}", every_n_train_steps=LIGHTNING_EVERY,
                                  save_top_k=-1)
    with _quiet_lightning():
        trainer = _lightning_trainer(output_dir.parent / f"{output_dir.name}.root", LIGHTNING_MAX_STEPS, [checkpoints])
        trainer.fit(_lightning_module(), train_dataloaders=_regression_loader())
    return output_dir


def lightning_resume(checkpoint: Path, scratch: Path, *, extra_steps: int = 2) -> Resumed:
    """`Trainer.fit(model, ckpt_path=checkpoint)` on a fresh module, training `extra_steps` more."""
    resumed_at = int(checkpoint.stem.split("=")[1])
    with _quiet_lightning():
        trainer = _lightning_trainer(scratch, resumed_at + extra_steps, [])
        trainer.fit(_lightning_module(), train_dataloaders=_regression_loader(), ckpt_path=str(checkpoint))
    return Resumed(resumed_at=resumed_at, final_step=trainer.global_step)


# --------------------------------------------------------------------------------------------
# torch.distributed.checkpoint from two gloo ranks
# --------------------------------------------------------------------------------------------

DCP_WORLD = 2


def _dcp_sharded_model(mesh) -> tuple[torch.nn.Module, Any]:
    """The small MLP sharded by FSDP2 over `mesh`, with AdamW: every parameter and optimizer
    moment is a DTensor, so each rank writes its own half (__0_0.distcp, __1_0.distcp)."""
    from torch.distributed.fsdp import fully_shard

    model = _small_mlp()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


@dataclasses.dataclass(frozen=True)
class MultiRankResume:
    """Directories resumed in turn on the same ranks: `loaded`, those every rank loaded;
    `failed`, the one whose load raised on some rank (the run stops there, as a job would), with
    `tracebacks`, each failing rank's traceback as that rank printed it."""

    loaded: list[Path]
    failed: Path | None
    tracebacks: dict[int, str]


def _record_outcome(results: str, rank: int, index: int, load: Callable[[], None]) -> None:
    """Runs one rank's load of directory `index`, leaving a marker of success or the traceback
    (torch.multiprocessing's own error channel can lose it when a peer is killed first)."""
    try:
        load()
    except BaseException:
        (Path(results) / f"{index}.rank{rank}.error").write_text(traceback.format_exc())
        raise
    (Path(results) / f"{index}.rank{rank}.ok").touch()


def _collect_outcome(results: Path, directories: list[Path], world: int) -> MultiRankResume:
    loaded = [d for i, d in enumerate(directories)
              if all((results / f"{i}.rank{r}.ok").exists() for r in range(world))]
    for index, directory in enumerate(directories):
        tracebacks = {r: (results / f"{index}.rank{r}.error").read_text() for r in range(world)
                      if (results / f"{index}.rank{r}.error").exists()}
        if tracebacks:
            return MultiRankResume(loaded, directory, tracebacks)
    return MultiRankResume(loaded, None, {})


def _dcp_rank(rank: int, mode: str, directories: list[str], results: str) -> None:
    """One rank of a DCP save ("save": directories[0]) or of resuming each directory in turn
    ("load"); runs in a spawned process."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", init_method=f"file://{results}/rendezvous", rank=rank, world_size=DCP_WORLD)
    try:
        mesh = init_device_mesh("cpu", (DCP_WORLD,))
        if mode == "save":
            model, optimizer = _dcp_sharded_model(mesh)
            generator = torch.Generator().manual_seed(SEED + rank)
            for _ in range(2):
                model(torch.randn(4, 16, generator=generator)).sum().backward()
                optimizer.step()
                optimizer.zero_grad()
            model_state, optimizer_state = get_state_dict(model, optimizer)
            dcp.save({"model": model_state, "optim": optimizer_state},
                     storage_writer=dcp.FileSystemWriter(directories[0]))
            return
        for index, directory in enumerate(directories):
            # get_state_dict gives a fresh optimizer its (zero) moments, so the load below reads
            # every optimizer tensor of the checkpoint, not only the model's.
            model, optimizer = _dcp_sharded_model(mesh)
            model_state, optimizer_state = get_state_dict(model, optimizer)
            state = {"model": model_state, "optim": optimizer_state}

            def load() -> None:
                dcp.load(state, storage_reader=dcp.FileSystemReader(directory))
                set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])

            _record_outcome(results, rank, index, load)
    finally:
        dist.destroy_process_group()


# Modules the fork server imports once per session; every rank it forks starts with them.
_FORKSERVER_PRELOAD = ["torch", "torch.distributed.checkpoint", "torch.distributed.checkpoint.state_dict",
                       "torch.distributed.device_mesh", "torch.distributed.fsdp",
                       # fully_shard reaches into dynamo on its first call: seconds per rank otherwise.
                       "torch._dynamo", "producers"]


def _spawn_ranks(worker: Callable, world: int, leading_args: tuple, mode: str,
                 directories: list[Path]) -> MultiRankResume:
    """Runs `world` ranks of `worker` through multiprocessing's fork server: a clean process
    (no threads, unlike a test session that has trained models) that imported torch's
    distributed stack once, so each rank starts in a fraction of a second and nothing is
    inherited from the test process. Ranks talk only through gloo and the files they write."""
    import multiprocessing

    import torch.multiprocessing as mp

    multiprocessing.get_context("forkserver").set_forkserver_preload(_FORKSERVER_PRELOAD)
    with tempfile.TemporaryDirectory(prefix="ranks-") as scratch:
        try:
            mp.start_processes(worker, args=(*leading_args, mode, [str(d) for d in directories], scratch),
                               nprocs=world, join=True, start_method="forkserver")
        except (mp.ProcessRaisedException, mp.ProcessExitedException):
            outcome = _collect_outcome(Path(scratch), directories, world)
            if outcome.failed is None:  # the failure was not in a load: ours, not the checkpoint's
                raise
            return outcome
        return _collect_outcome(Path(scratch), directories, world)


def dcp_two_rank_save(directory: Path) -> Path:
    """`dcp.save` of FSDP2 model + optimizer state from 2 real gloo ranks with a FileSystemWriter:
    .metadata, __0_0.distcp, __1_0.distcp."""
    _spawn_ranks(_dcp_rank, DCP_WORLD, (), "save", [directory])
    return directory


def dcp_two_rank_resume(directories: list[Path]) -> MultiRankResume:
    """`dcp.load` of each directory in turn into the same FSDP2 model and optimizer on 2 gloo
    ranks (one spawn for all of them: starting ranks is the slow part). DCP gathers a rank's
    read error to every rank, so the first failing directory stops the run on all ranks."""
    return _spawn_ranks(_dcp_rank, DCP_WORLD, (), "load", directories)


# --------------------------------------------------------------------------------------------
# legacy torch.save (the pre-1.6 format)
# --------------------------------------------------------------------------------------------

def _legacy_training_state() -> tuple[torch.nn.Module, Any]:
    model = _small_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(2):
        model(torch.randn(4, 16, generator=generator)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def legacy_torch_save(path: Path) -> Path:
    """A classic training checkpoint {"model", "optimizer", "epoch"} written with
    `_use_new_zipfile_serialization=False`: a pickle stream then raw storages, no zip."""
    model, optimizer = _legacy_training_state()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3}, path,
               _use_new_zipfile_serialization=False)
    return path


def legacy_torch_resume(path: Path) -> int:
    """`torch.load(weights_only=True)` then load_state_dict into a fresh model and optimizer, as
    a hand-written loop resumes; returns the epoch it resumes at."""
    state = torch.load(path, weights_only=True)
    model = _small_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["epoch"])


# --------------------------------------------------------------------------------------------
# DeepSpeed ZeRO on CPU
# --------------------------------------------------------------------------------------------

DEEPSPEED_WORLD = 2
DEEPSPEED_TAG = "global_step2"
DEEPSPEED_STAGE = 2


def deepspeed_available() -> bool:
    try:
        import deepspeed  # noqa: F401
    except Exception:  # an install without its ops can fail at import in many ways
        return False
    return True


def _deepspeed_config(stage: int) -> dict[str, Any]:
    return {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True,
            "steps_per_print": 10_000, "wall_clock_breakdown": False}


def _deepspeed_engine(stage: int):
    import deepspeed

    model = _small_mlp()
    # A torch optimizer, not DeepSpeed's own: its fused/CPU Adam are compiled ops, absent here.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=_deepspeed_config(stage))
    return engine


def _deepspeed_rank(rank: int, port: int, mode: str, directories: list[str], results: str) -> None:
    """One rank of a DeepSpeed ZeRO save ("save": directories[0]) or of resuming each directory
    in turn ("load"), on the gloo backend; runs in a spawned process."""
    import deepspeed
    import torch.distributed as dist

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(DEEPSPEED_WORLD),
                       "LOCAL_WORLD_SIZE": str(DEEPSPEED_WORLD), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    # DeepSpeed JIT-compiles its shared-memory collective kernel at start-up (minutes of g++ on a
    # fresh machine). An empty compatible-ops table makes it take the path DeepSpeed itself takes
    # where that kernel cannot be built: plain gloo. No op DeepSpeed compiles touches the layout
    # or the bytes of a checkpoint, and this run uses torch's AdamW, not DeepSpeed's fused ones.
    deepspeed.ops.__compatible_ops__ = {}
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    try:
        if mode == "save":
            engine = _deepspeed_engine(DEEPSPEED_STAGE)
            generator = torch.Generator().manual_seed(SEED + rank)
            for _ in range(2):
                engine.backward(engine(torch.randn(4, 16, generator=generator)).sum())
                engine.step()
            engine.save_checkpoint(directories[0], tag=DEEPSPEED_TAG)
            return
        for index, directory in enumerate(directories):
            engine = _deepspeed_engine(DEEPSPEED_STAGE)

            def load() -> None:
                path, _ = engine.load_checkpoint(directory)
                if path is None:
                    # load_checkpoint only logs a warning and returns (None, None) when `latest`
                    # is missing; a script that goes on would silently train from scratch.
                    raise FileNotFoundError(f"DeepSpeed loaded no checkpoint from {directory}")

            _record_outcome(results, rank, index, load)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_zero_save(directory: Path) -> Path:
    """A DeepSpeed engine on 2 gloo ranks saving a ZeRO stage-2 checkpoint: directory/latest
    (naming global_step2), global_step2/mp_rank_00_model_states.pt and one
    zero_pp_rank_{r}_mp_rank_00_optim_states.pt per data-parallel rank, plus the
    zero_to_fp32.py / zero_to_torch.py scripts DeepSpeed copies beside them."""
    _spawn_ranks(_deepspeed_rank, DEEPSPEED_WORLD, (free_port(),), "save", [directory])
    return directory


def deepspeed_zero_resume(directories: list[Path]) -> MultiRankResume:
    """`engine.load_checkpoint(directory)` (which follows directory/latest) for each directory in
    turn on the same 2 gloo ranks; the first failure stops every rank."""
    return _spawn_ranks(_deepspeed_rank, DEEPSPEED_WORLD, (free_port(),), "load", directories)


# --------------------------------------------------------------------------------------------
# transformers.Trainer with DeepSpeed ZeRO-2 (one rank, CPU)
# --------------------------------------------------------------------------------------------

HF_DEEPSPEED_MAX_STEPS = 4


def _hf_deepspeed_arguments(output_dir: str, max_steps: int, **overrides: Any):
    config = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
              "zero_optimization": {"stage": DEEPSPEED_STAGE}, "zero_allow_untested_optimizer": True}
    return _training_arguments(Path(output_dir), max_steps, deepspeed=config, optim="adamw_torch", **overrides)


def _hf_deepspeed_rank(rank: int, port: int, mode: str, directories: list[str], results: str) -> None:
    """The Trainer under DeepSpeed, as `deepspeed train.py` or `accelerate launch` starts it with
    one process: a save run into directories[0], or a resume from each directory in turn."""
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    import deepspeed
    from transformers import Trainer
    from transformers.trainer_callback import TrainerState

    _quiet_transformers()
    deepspeed.ops.__compatible_ops__ = {}  # see _deepspeed_rank
    if mode == "save":
        args = _hf_deepspeed_arguments(directories[0], HF_DEEPSPEED_MAX_STEPS)
        Trainer(model=tiny_llama(), args=args, train_dataset=token_dataset()).train()
        return
    for index, directory in enumerate(directories):
        state = Path(directory) / "trainer_state.json"
        resumed_at = TrainerState.load_from_json(str(state)).global_step if state.is_file() else 0
        args = _hf_deepspeed_arguments(str(Path(results) / f"resumed-{index}"), resumed_at + 2, save_strategy="no")
        trainer = Trainer(model=tiny_llama(), args=args, train_dataset=token_dataset())
        _record_outcome(results, rank, index, lambda: trainer.train(resume_from_checkpoint=directory))


def hf_deepspeed_run(output_dir: Path) -> Path:
    """`Trainer.train()` with a DeepSpeed ZeRO-2 config on one CPU process, saving every
    HF_SAVE_STEPS: checkpoint-N/ holds model.safetensors, scheduler.pt, rng_state.pth,
    trainer_state.json, training_args.bin, config files, and DeepSpeed's `latest`,
    global_stepN/mp_rank_00_model_states.pt and global_stepN/zero_pp_rank_0_mp_rank_00_optim_states.pt
    in place of optimizer.pt."""
    _spawn_ranks(_hf_deepspeed_rank, 1, (free_port(),), "save", [output_dir])
    return output_dir


def hf_deepspeed_resume(directories: list[Path]) -> MultiRankResume:
    """`Trainer.train(resume_from_checkpoint=...)` under the same DeepSpeed config, each
    directory in turn in one process (the first failure stops it)."""
    return _spawn_ranks(_hf_deepspeed_rank, 1, (free_port(),), "load", directories)


# --------------------------------------------------------------------------------------------
# Megatron-LM torch_dist checkpoints, written by megatron-core from two gloo ranks
# --------------------------------------------------------------------------------------------

MEGATRON_WORLD = 2
MEGATRON_ITERATIONS = (10, 20)
MEGATRON_TRACKER = "latest_checkpointed_iteration.txt"
#: How a load that returned without error, but with other values than those saved, fails.
MEGATRON_CHANGED = "loaded values that differ from those saved"


def megatron_available() -> bool:
    try:
        from megatron.core import dist_checkpointing  # noqa: F401
    except ImportError:
        return False
    return True


def _megatron_on_cpu() -> None:
    """megatron-core's torch_dist save makes two CUDA calls that do nothing a CPU save needs:
    `torch.cuda.synchronize()` after copying the tensors to host memory (they are there
    already), and `torch.cuda.current_device()` as the device of a one-element failure flag it
    broadcasts. On a CPU-only torch both raise "Torch not compiled with CUDA enabled", so each
    rank makes them CPU no-ops, as Megatron-LM's open pull request 6270 does in megatron-core
    itself. Neither touches what is written."""
    if not torch.cuda.is_available():
        torch.cuda.synchronize = lambda device=None: None
        torch.cuda.current_device = lambda: "cpu"


def megatron_iteration_dir(iteration: int) -> str:
    """Megatron-LM's name for the checkpoint of an iteration (`get_checkpoint_name`)."""
    return f"iter_{iteration:07d}"


def megatron_training_state(iterations: int) -> dict[str, torch.Tensor]:
    """The full (unsharded) model and Adam moments after `iterations` deterministic steps, the
    same on every rank: what each rank shards into the checkpoint and what a load must give back."""
    model = _small_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(iterations):
        model(torch.randn(4, 16, generator=generator)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    state: dict[str, torch.Tensor] = {}
    for name, parameter in model.named_parameters():
        state[f"model.{name}"] = parameter.detach().clone()
        moments = optimizer.state[parameter]
        state[f"optimizer.{name}.exp_avg"] = moments["exp_avg"].clone()
        state[f"optimizer.{name}.exp_avg_sq"] = moments["exp_avg_sq"].clone()
    return state


def _megatron_sharded_state(rank: int, iteration: int, full: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A sharded state dict shaped like Megatron-LM's `generate_state_dict`: weight matrices
    split by rows over the tensor-parallel ranks, biases replicated (rank 0's copy is the one
    written), one RNG-state ShardedObject per rank, and the plain objects that go to common.pt."""
    from megatron.core.dist_checkpointing import ShardedObject, ShardedTensor

    sharded: dict[str, Any] = {}
    for key, tensor in full.items():
        if tensor.dim() == 2:
            rows = tensor.shape[0] // MEGATRON_WORLD
            local = tensor[rank * rows:(rank + 1) * rows].clone()
            sharded[key] = ShardedTensor.from_rank_offsets(key, local, (0, rank, MEGATRON_WORLD))
        else:
            sharded[key] = ShardedTensor.from_rank_offsets(key, tensor.clone(), replica_id=rank)
    rng = {"random_rng_state": (3, (iteration, rank), None),
           "torch_rng_state": torch.Generator().manual_seed(SEED + 2 * iteration + rank).get_state()}
    sharded["rng_state"] = ShardedObject("rng_state", rng, (MEGATRON_WORLD,), (rank,), replica_id=0)
    sharded.update(iteration=iteration, checkpoint_version=3.0, num_floating_point_operations_so_far=iteration * 1000,
                   opt_param_scheduler={"max_lr": 1e-2, "num_steps": iteration})
    return sharded


def _same(a: Any, b: Any) -> bool:
    """Equal values, tensors by every element, containers item by item."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


def _megatron_load_and_compare(rank: int, directory: str) -> None:
    """dist_checkpointing.load of one iteration directory into fresh (zero) shards, then every
    loaded tensor, object and common.pt value compared with what that iteration saved."""
    from megatron.core import dist_checkpointing

    iteration = int(Path(directory).name.removeprefix("iter_"))
    full = megatron_training_state(iteration)
    expected = _megatron_sharded_state(rank, iteration, full)
    template = _megatron_sharded_state(rank, 0, {k: torch.zeros_like(v) for k, v in full.items()})
    loaded = dist_checkpointing.load({k: v for k, v in template.items() if hasattr(v, "key")}, directory)
    if loaded.keys() != expected.keys():
        raise AssertionError(f"{MEGATRON_CHANGED}: keys {sorted(loaded.keys() ^ expected.keys())}")
    for key, value in expected.items():
        if not _same(loaded[key], getattr(value, "data", value)):
            raise AssertionError(f"{MEGATRON_CHANGED}: {key}")


def _megatron_rank(rank: int, mode: str, directories: list[str], results: str) -> None:
    """One rank of a Megatron run ("save": each iteration of MEGATRON_ITERATIONS into the save
    directory directories[0]) or of loading each iteration directory in turn ("load")."""
    import torch.distributed as dist

    _megatron_on_cpu()
    from megatron.core import dist_checkpointing

    dist.init_process_group("gloo", init_method=f"file://{results}/rendezvous", rank=rank, world_size=MEGATRON_WORLD)
    try:
        if mode == "save":
            save_dir = Path(directories[0])
            for iteration in MEGATRON_ITERATIONS:
                checkpoint = save_dir / megatron_iteration_dir(iteration)
                if rank == 0:  # Megatron-LM: rank 0 creates the directory, every rank writes into it
                    checkpoint.mkdir(parents=True, exist_ok=True)
                dist.barrier()
                state = _megatron_sharded_state(rank, iteration, megatron_training_state(iteration))
                dist_checkpointing.save(state, str(checkpoint))
                dist.barrier()
                if rank == 0:  # Megatron-LM writes the tracker once the save is complete
                    (save_dir / MEGATRON_TRACKER).write_text(str(iteration))
            return
        for index, directory in enumerate(directories):
            _record_outcome(results, rank, index, lambda: _megatron_load_and_compare(rank, directory))
    finally:
        dist.destroy_process_group()


def megatron_run(save_dir: Path) -> Path:
    """A Megatron-LM `--save` directory holding iter_0000010/ and iter_0000020/ in the torch_dist
    format and latest_checkpointed_iteration.txt ("20"). Every file inside an iteration directory
    (.metadata, __{rank}_{n}.distcp, common.pt, metadata.json) is written by megatron-core's own
    `dist_checkpointing.save` on 2 gloo ranks; the directory names and the tracker file come from
    Megatron-LM's training loop (megatron/training/checkpointing.py), which no installable package
    runs on CPU, so this helper writes them exactly as it does: rank 0 creates `iter_{:07d}`
    before the save and writes the iteration number into the tracker after it."""
    _spawn_ranks(_megatron_rank, MEGATRON_WORLD, (), "save", [save_dir])
    return save_dir


def megatron_load(directories: list[Path]) -> MultiRankResume:
    """`dist_checkpointing.load` of each iteration directory in turn on 2 gloo ranks, as
    Megatron-LM's `_load_global_dist_base_checkpoint` does, then a comparison of every loaded
    tensor and the iteration with what was saved there: a load that raises, or that returns
    other values than those saved (AssertionError), fails that directory."""
    return _spawn_ranks(_megatron_rank, MEGATRON_WORLD, (), "load", directories)


# --------------------------------------------------------------------------------------------
# Damage: what interrupted saves and bad disks leave behind
# --------------------------------------------------------------------------------------------

def copy_checkpoint(source: Path, destination: Path) -> Path:
    """A private copy to damage: fixtures are shared by the whole session and stay intact."""
    if source.is_dir():
        shutil.copytree(source, destination)
    else:
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    return destination


def truncate_at(path: Path, fraction: float) -> int:
    """Cuts `path` to `fraction` of its size, as a save killed mid-write leaves it; returns the
    new size."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    size = int(path.stat().st_size * fraction)
    os.truncate(path, size)
    return size


def delete(path: Path) -> None:
    path.unlink()


def flip_byte(path: Path, offset: int) -> None:
    """Inverts every bit of the byte at `offset` (a flipped byte on disk: same size, new value)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        original = f.read(1)
        if len(original) != 1:
            raise ValueError(f"{path} has no byte at offset {offset}")
        f.seek(offset)
        f.write(bytes([original[0] ^ 0xFF]))


def tensor_raw_bytes(tensor: torch.Tensor) -> bytes:
    """The bytes of the tensor's storage span the way every format here stores them:
    row-major, this machine's (little-endian) byte order."""
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def tensor_byte_offset(path: Path, tensor: torch.Tensor) -> int:
    """Where `tensor`'s bytes start inside `path`, found by searching the file for them; the
    tensor must come from the framework loading that file, so no format knowledge of ours is
    involved. Raises if they are absent or appear more than once (ambiguous)."""
    needle = tensor_raw_bytes(tensor)
    if len(needle) < 16:
        raise ValueError("tensor too small to locate unambiguously")
    data = path.read_bytes()
    first = data.find(needle)
    if first < 0:
        raise LookupError(f"tensor bytes not found in {path}")
    if data.find(needle, first + 1) >= 0:
        raise LookupError(f"tensor bytes appear more than once in {path}")
    return first


def flip_tensor_byte(path: Path, tensor: torch.Tensor) -> int:
    """Flips one byte in the middle of `tensor`'s data inside `path`; returns its offset."""
    offset = tensor_byte_offset(path, tensor) + len(tensor_raw_bytes(tensor)) // 2
    flip_byte(path, offset)
    return offset


def largest_tensor(state: Any) -> torch.Tensor:
    """The largest tensor anywhere inside a loaded state (dicts, lists, tuples)."""
    found: list[torch.Tensor] = []

    def walk(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(state)
    if not found:
        raise LookupError("no tensor in state")
    return max(found, key=lambda t: t.numel() * t.element_size())


def files_under(directory: Path) -> set[str]:
    """Every regular file below `directory`, as paths relative to it."""
    return {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}


def run_raises(call: Callable[[], Any]) -> BaseException | None:
    """Runs `call`; returns what it raised, or None when it returned."""
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - the caller asserts on the exact type
        return exc
    return None
