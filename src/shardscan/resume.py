"""The resume set: every file a framework reads when it resumes from a checkpoint, and the role
each plays. `scan DIR`, `check`, `audit` and `latest` all judge this set, so a manifest written
by `scan` always checks clean against the same untouched directory, and OK means "resuming
from here works", not only "the weights load". docs/resume-sets.md lists, per framework, what
its loader reads and why.

Roles:

model    the weights: compared with the layouts the checkpoint declares (index, config.json,
         manifest). One family only, since a loader reads one (safetensors before .bin).
state    other tensor files the framework loads with torch's weights-only loader (optimizer,
         scheduler, scaler, DeepSpeed and FSDP shards): listed and hashed like the weights,
         their keys qualified by the file ("optimizer.pt:state.0.exp_avg").
objects  files the framework unpickles in full (RNG states holding numpy arrays, pickled
         TrainingArguments, accelerate's .pkl states): judged as containers, so the zip, every
         record's CRC-32 and the whole pickle are read; the globals they name are described,
         never imported or called.

A file of the set that is absent is a problem when the framework's rules need it, or when the
sibling checkpoints of the same run all have it (an interrupted save that left a directory
looking complete).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from . import formats
from .discover import MEGATRON_COMMON, MEGATRON_CONFIG, is_megatron_iteration

MODEL, STATE, OBJECTS = "model", "state", "objects"

# Files of a checkpoint directory that are not the model, by role. Names are matched whole,
# relative to the checkpoint directory.
_STATE = re.compile(
    r"^(?:optimizer|scheduler|scaler)(?:_\d+)?\.(?:pt|bin)$"  # Trainer, accelerate
    r"|^model_\d+\.(?:safetensors|bin)$"  # accelerate: the second and later prepared models
)
_OBJECTS = re.compile(
    r"^rng_state(?:_\d+)?\.pth$|^training_args\.bin$"  # Trainer
    r"|^(?:random_states|custom_checkpoint)_\d+\.pkl$|^sampler(?:_\d+)?\.bin$"  # accelerate
    # DeepSpeed pickles its own classes (loss scaler, ZeRO stage enum) and loads with
    # weights_only=False: module states and ZeRO optimizer shards.
    r"|^mp_rank_\d+_model_states\.pt$|^(?:bf16_)?zero_pp_rank_\d+_mp_rank_\d+_optim_states\.pt$"
    # megatron-core torch_dist: everything that is not sharded (iteration, scheduler, args).
    r"|^common\.pt$"
)
_STATE_DIRS = re.compile(r"^optimizer(?:_\d+)?$")  # FSDP sharded optimizer state (DCP)
_TRAINER = re.compile(r"^checkpoint-(\d+)$")
_RANKED = re.compile(r"^(rng_state|random_states)_(\d+)\.(pth|pkl)$")
_ZERO_SHARD = re.compile(r"^((?:bf16_)?zero_pp_rank_)(\d+)(_mp_rank_(\d+)_optim_states\.pt)$")
#: Files whose absence a sibling checkpoint can reveal (trainer_state.json's absence is
#: discovery's finding: the Trainer writes it last).
_EXPECTED = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth", "optimizer.bin", "scheduler.bin")


def role_of(name: str) -> str:
    """The role of a file of a checkpoint directory, by its name relative to the directory."""
    parts = name.split("/")
    if len(parts) > 1:
        # Inside a subdirectory: DeepSpeed's global_stepN/ files by their own names, FSDP's
        # optimizer_0/ is state, FSDP's pytorch_model_fsdp_0/ the model.
        if parts[0].startswith("pytorch_model_fsdp"):
            return MODEL
        return OBJECTS if _OBJECTS.match(parts[-1]) else STATE
    if _OBJECTS.match(name):
        return OBJECTS
    if _STATE.match(name) or _STATE_DIRS.match(name):
        return STATE
    return MODEL


@dataclass(frozen=True)
class Member:
    """One file (or DCP directory) of the set; `name` is relative to the checkpoint."""

    path: Path
    name: str
    role: str


@dataclass(frozen=True)
class ResumeSet:
    """The members to read, in reading order, and what is wrong with the set itself (absent
    files, a trainer_state.json that does not belong here). `skipped`: tensor files of the
    model family a loader does not read (model.safetensors beside pytorch_model.bin)."""

    members: tuple[Member, ...]
    problems: tuple[tuple[str, str, str], ...] = ()  # (file, what is wrong, its kind of errors.KINDS)
    skipped: tuple[str, ...] = ()

    def paths(self, role: str | None = None) -> list[Path]:
        return [m.path for m in self.members if role is None or m.role == role]


def resume_set(path: Path, index_shards: list[str] | None = None) -> ResumeSet:
    """The resume set of the checkpoint at `path`: a file or a DCP directory is its own set;
    a directory's members are its tensor and state files (see the module doc), with the model
    weights narrowed to the family its indexes name (`index_shards`) or the preferred one.
    Raises OSError when the directory cannot be listed."""
    if not path.is_dir():
        return ResumeSet((Member(path, os.fspath(path), MODEL),))
    names = sorted(os.listdir(path))
    if is_megatron_iteration(path.name, names):
        return _megatron(path, set(names))
    if formats.directory_format(path, names):
        return ResumeSet((Member(path, os.fspath(path), MODEL),))
    members: list[Member] = []
    model: list[Member] = []
    for name in names:
        entry = path / name
        if entry.is_dir():
            members += _directory_members(entry, name)
        elif formats.is_tensor_file_name(name) or _OBJECTS.match(name):
            member = Member(entry, name, role_of(name))
            (model if member.role == MODEL else members).append(member)
    chosen, skipped = _one_family(model, index_shards)
    problems = _absent(path, set(names)) + _rank_gaps(names) + _trainer_state(path, set(names))
    problems += [p for p in _trainer_rules(path, set(names)) if p[0] not in {q[0] for q in problems}]
    problems += _zero_shards(path, names)
    for name in names:
        if name.startswith("global_step") and (path / name).is_dir():
            problems += _zero_shards(path / name, sorted(os.listdir(path / name)), f"{name}/")
    return ResumeSet(tuple(chosen + members), tuple(problems), tuple(skipped))


def _directory_members(entry: Path, name: str) -> list[Member]:
    """A subdirectory that belongs to the checkpoint: a DCP directory (FSDP's sharded model or
    optimizer) is one member; DeepSpeed's global_stepN/ contributes its .pt files."""
    if formats.directory_format(entry):
        return [Member(entry, name, role_of(f"{name}/"))]
    if name.startswith("global_step"):
        return [Member(entry / f, f"{name}/{f}", role_of(f"{name}/{f}")) for f in sorted(os.listdir(entry))
                if formats.is_tensor_file_name(f)]
    return []


def _zero_shards(path: Path, names: list[str], under: str = "") -> list[tuple[str, str, str]]:
    """DeepSpeed ZeRO: one optimizer shard per data-parallel rank, as many as the module
    states record (`dp_world_size`); DeepSpeed itself only warns when one is missing."""
    from ._core import NativeFile
    from .errors import ShardscanError
    from .formats.torch_zip import load_objects

    shards: dict[tuple[str, str, int], set[int]] = {}
    for m in filter(None, map(_ZERO_SHARD.match, names)):
        shards.setdefault((m.group(1), m.group(3), int(m.group(4))), set()).add(int(m.group(2)))
    problems = []
    for (head, tail, mp_rank), ranks in sorted(shards.items()):
        world = max(ranks) + 1
        states = path / f"mp_rank_{mp_rank:02d}_model_states.pt"
        try:
            with NativeFile(states) as file:
                recorded = load_objects(file)
            size = recorded.get("dp_world_size") if isinstance(recorded, dict) else None
            world = max(world, size) if isinstance(size, int) and 0 < size <= 1 << 20 else world
        except (ShardscanError, OSError):
            pass  # an unreadable module states file is its own problem, reported when read
        for rank in sorted(set(range(world)) - ranks):
            problems.append((f"{under}{head}{rank}{tail}",
                             f"absent: the checkpoint records {world} data-parallel ranks, rank {rank} saved no shard", "absent"))
    return problems


def _one_family(model: list[Member], index_shards: list[str] | None) -> tuple[list[Member], list[str]]:
    families = {formats.family_of(m.name) for m in model}
    if len(families) <= 1:
        return model, []
    wanted = {formats.family_of(name) for name in index_shards or ()} & families
    chosen = min(wanted or families)
    keep = [m for m in model if formats.family_of(m.name) == chosen]
    return keep, [m.name for m in model if m not in keep]


def _absent(path: Path, names: set[str]) -> list[tuple[str, str, str]]:
    """Files every other checkpoint of the same run has and this one lacks."""
    match = _TRAINER.match(path.name)
    if not match:
        return []
    siblings = []
    try:
        for other in os.scandir(path.parent):
            if other.name != path.name and _TRAINER.match(other.name) and other.is_dir():
                siblings.append((other.name, set(os.listdir(other.path))))
    except OSError:
        return []
    if not siblings:
        return []
    problems = []
    for name in _EXPECTED:
        if name not in names and all(name in have for _, have in siblings):
            shown = ", ".join(sorted(s for s, _ in siblings)[:3])
            problems.append((name, f"absent: every other checkpoint of the run has it ({shown})", "absent"))
    return problems


def _trainer_rules(path: Path, names: set[str]) -> list[tuple[str, str, str]]:
    """What the Trainer's own loading demands of a checkpoint-N directory: it restores the
    optimizer only when optimizer.pt and scheduler.pt are both there (one alone is silently
    ignored: a fresh optimizer), and under DeepSpeed (a global_stepN/ inside) scheduler.pt is
    required outright."""
    if not _TRAINER.match(path.name):
        return []
    problems = []
    deepspeed = any(n.startswith("global_step") and (path / n).is_dir() for n in names)
    if deepspeed:  # the engine restores its own optimizer from global_stepN/
        if "scheduler.pt" not in names:
            problems.append(("scheduler.pt", "absent: the Trainer under DeepSpeed requires it to resume", "absent"))
    elif ("optimizer.pt" in names) != ("scheduler.pt" in names):
        have, lacking = ("optimizer.pt", "scheduler.pt") if "optimizer.pt" in names else ("scheduler.pt", "optimizer.pt")
        problems.append((lacking, f"absent beside {have}: the Trainer then ignores both and resumes with a fresh optimizer",
                         "absent"))
    return problems


def _rank_gaps(names: list[str]) -> list[tuple[str, str, str]]:
    """Per-rank files (rng_state_{rank}.pth, random_states_{i}.pkl) must count from 0 up."""
    ranks: dict[tuple[str, str], set[int]] = {}
    for name in names:
        m = _RANKED.match(name)
        if m:
            ranks.setdefault((m.group(1), m.group(3)), set()).add(int(m.group(2)))
    problems = []
    for (stem, ext), have in sorted(ranks.items()):
        for rank in sorted(set(range(max(have) + 1)) - have):
            problems.append((f"{stem}_{rank}.{ext}", f"absent: ranks 0..{max(have)} saved {stem}, rank {rank} did not",
                             "absent"))
    return problems


def _trainer_state(path: Path, names: set[str]) -> list[tuple[str, str, str]]:
    """trainer_state.json of a `checkpoint-N` directory: valid JSON whose global_step is N
    (the Trainer resumes its counters from it)."""
    match = _TRAINER.match(path.name)
    if not match or "trainer_state.json" not in names:
        return []  # its absence is discovery's finding: the Trainer writes it last
    try:
        with open(path / "trainer_state.json", encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        return [("trainer_state.json", f"not valid JSON ({type(exc).__name__})", "format")]
    step = state.get("global_step") if isinstance(state, dict) else None
    if step != int(match.group(1)):
        return [("trainer_state.json", f"global_step is {step!r}, but the directory is {path.name}", "format")]
    return []


#: The (backend, version) pairs megatron-core's dist_checkpointing.load has a strategy for.
_MEGATRON_BACKENDS = {"sharded_backend": ("torch_dist", "sharded_backend_version"),
                      "common_backend": ("torch", "common_backend_version")}


def _megatron(path: Path, names: set[str]) -> ResumeSet:
    """A Megatron-LM iteration directory in megatron-core's torch_dist format: its DCP files
    (`.metadata` and every `.distcp` it names, read as one member named "."), `common.pt`
    (unpickled in full by `load_common`) and `metadata.json` (read first, to pick the loader).
    megatron-core's `dist_checkpointing.load` raises without any of them."""
    members, problems = [], _megatron_config(path, names)
    if formats.directory_format(path, names):
        members.append(Member(path, ".", MODEL))
    else:
        problems.append((".", "absent: no .metadata or .distcp files, so none of the sharded tensors", "absent"))
    if MEGATRON_COMMON in names:
        members.append(Member(path / MEGATRON_COMMON, MEGATRON_COMMON, OBJECTS))
    else:
        problems.append((MEGATRON_COMMON, "absent: megatron-core loads it before any tensor", "absent"))
    return ResumeSet(tuple(members), tuple(problems))


def _megatron_config(path: Path, names: set[str]) -> list[tuple[str, str, str]]:
    """metadata.json as megatron-core reads it: a JSON object of exactly CheckpointingConfig's
    fields, naming backends it has a loader for."""
    if MEGATRON_CONFIG not in names:
        return [(MEGATRON_CONFIG, "absent: without it megatron-core does not take the directory for a "
                 "distributed checkpoint and dist_checkpointing.load raises", "absent")]
    try:
        with open(path / MEGATRON_CONFIG, "rb") as handle:
            config = json.loads(handle.read(1 << 20).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        return [(MEGATRON_CONFIG, f"not valid JSON ({type(exc).__name__})", "format")]
    if not isinstance(config, dict):
        return [(MEGATRON_CONFIG, "not a JSON object", "format")]
    known = set(_MEGATRON_BACKENDS) | {version for _, version in _MEGATRON_BACKENDS.values()}
    unknown = sorted(set(config) - known)
    if unknown:
        return [(MEGATRON_CONFIG, f"unknown field {unknown[0]!r:.40}: megatron-core's CheckpointingConfig refuses it",
                 "format")]
    for field, (backend, version_field) in _MEGATRON_BACKENDS.items():
        named = config.get(field, "torch" if field == "common_backend" else None)
        version = config.get(version_field, 1)
        if (named, version) != (backend, 1):
            return [(MEGATRON_CONFIG, f"{field} is {named!r:.40} version {version!r:.20}: megatron-core loads "
                     f"{backend!r} version 1 only", "format")]
    return []
