"""Finding the checkpoints in a training run's output tree, and ordering them by step.

What counts as one checkpoint (checked in this order for every directory):

==============  ===========================================  ==============================
kind            recognised by                                completeness marker
==============  ===========================================  ==============================
dcp             a ``.metadata`` file or ``*.distcp`` files   ``.metadata`` (written last by
                                                             the coordinator)
megatron        a directory named ``iter_NNNNNNN`` (or       the parent's
                ``release``) holding megatron-core's         ``latest_checkpointed_iteration.txt``:
                ``metadata.json`` or ``common.pt``           an iteration newer than the one
                (checked before dcp: its tensors are a       it names was never finished;
                DCP directory's)                             ``.metadata`` as for dcp
deepspeed       a directory named ``global_stepN``           the parent's ``latest`` tag:
                                                             a step newer than the one it
                                                             names was never finished
hf-trainer      a directory named ``checkpoint-N``           ``trainer_state.json`` (the
                                                             Trainer writes it last)
hf-model        a directory with a shard index, a            the index's shard list
                ``config.json`` or Hugging Face weight        (checked by ``check``)
                names (``model.safetensors``,
                ``pytorch_model-00001-of-00002.bin``, ...)
lightning       a ``.ckpt`` file                             --
safetensors     any other ``.safetensors`` file              --
torch           any other ``.pt``/``.pth``/``.bin`` file     --
==============  ===========================================  ==============================

A checkpoint directory is a leaf: nothing below it is searched for further checkpoints (the
``global_stepN`` inside an HF Trainer checkpoint is part of that checkpoint).

The walk never follows a symlink whose target is inside the tree or is the root or one of its
ancestors (the tree is walked anyway, and that is what makes ``sub/up -> ..`` loops harmless), remembers every directory it entered by
device and inode so links from outside cannot loop either, and never opens anything but
regular files (a FIFO opened for reading waits forever for a writer). Entries it cannot use
are reported, never raised: a checkpoint-like name that cannot be read becomes a Checkpoint
with a problem (so ``audit`` shows it and ``latest`` skips it), a symlink loop becomes a note.

A run's own bookkeeping is judged the same way: a DeepSpeed ``latest`` or a Megatron-LM
``latest_checkpointed_iteration.txt`` naming a directory that is not there becomes an unreadable
Checkpoint of that directory, and a Megatron tracker that is absent or holds no iteration an
unreadable Checkpoint of the tracker file itself (Megatron-LM's ``--load`` without
``--ckpt-step`` then starts from random weights, or exits).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Iterator

from . import formats
_TRAINER = re.compile(r"^checkpoint-(\d+)$")
_DEEPSPEED = re.compile(r"^global_step(\d+)$")
# Megatron-LM (megatron/training/checkpointing.py): `--save DIR` holds one `iter_{:07d}` directory
# per save (`release` for a converted model) and the tracker naming the newest complete one.
_MEGATRON = re.compile(r"^iter_(\d{7,})$")
MEGATRON_RELEASE = "release"
MEGATRON_TRACKER = "latest_checkpointed_iteration.txt"
#: Files megatron-core's dist_checkpointing writes beside the DCP files of a torch_dist save.
MEGATRON_CONFIG, MEGATRON_COMMON = "metadata.json", "common.pt"
_MEGATRON_MAX_ITERATION = 10**18
# Step numbers in names, most specific first: "epoch=3-step=1200", "global_step800",
# "checkpoint-500", "iter_0001000", then a number closing the name ("model_00010").
_STEP_PATTERNS = (
    re.compile(r"(?:^|[^a-z])(?:global_)?step[=_-]?(\d+)", re.IGNORECASE),
    re.compile(r"^checkpoint-(\d+)$"),
    re.compile(r"(?:^|[^a-z])(?:ckpt|iter|iteration)[=_-]?(\d+)", re.IGNORECASE),
    re.compile(r"[=_-](\d+)$"),
)


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint found under the root.

    `path` is the directory or file; `kind` one of the kinds in the module docstring;
    `step` the step number its name carries (None when it carries none); `mtime` its
    modification time (for a directory, the newest of its direct entries, since a save
    writes files into an existing directory); `problems` what discovery already knows is
    wrong, in words (a missing completeness marker, an unreadable entry); `readable` is False
    when there is nothing that may be opened (a FIFO, a broken link, a directory that
    cannot be listed or that `latest` names but does not exist)."""

    path: Path
    kind: str
    step: int | None
    mtime: float
    problems: tuple[str, ...] = ()
    readable: bool = True  # False: nothing to open (missing, FIFO, unlistable); never scanned

    @property
    def sort_key(self) -> tuple[bool, int, float, str]:
        # Checkpoints without a step number sort before those with one: a name like
        # "final.pt" says nothing about where it falls, and guessing "newest" would make
        # `latest` prefer it over a numbered save.
        return (self.step is not None, self.step or 0, self.mtime, os.fspath(self.path))


@dataclass(frozen=True)
class Discovery:
    """Every checkpoint in step order (oldest first), and the entries the walk left alone
    on purpose (symlink loops, links back into the tree), each as (path, reason)."""

    root: Path
    checkpoints: tuple[Checkpoint, ...]
    skipped: tuple[tuple[str, str], ...] = ()


def step_of(name: str) -> int | None:
    """The step number a checkpoint's name carries, or None."""
    stem = formats.step_stem(name)
    for pattern in _STEP_PATTERNS:
        match = pattern.search(stem)
        if match:
            return int(match.group(1))
    return None


def find_checkpoints(root: str | os.PathLike[str]) -> Discovery:
    """Walks `root` (a directory, or a single checkpoint file) and returns its checkpoints.
    Raises FileNotFoundError when `root` does not exist and NotADirectoryError when it is
    neither a directory nor a regular file (a FIFO, a device)."""
    root = Path(root)
    try:
        st = root.stat()
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such file or directory", os.fspath(root)) from None
    if stat.S_ISREG(st.st_mode):
        return Discovery(root, (Checkpoint(root, formats.file_kind(root.name), step_of(root.name), st.st_mtime),))
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory or regular file", os.fspath(root))
    walk = _Walk(root.resolve())
    walk.walk(root, st)
    found = sorted(walk.found, key=lambda c: c.sort_key)
    return Discovery(root, tuple(found), tuple(walk.skipped))


@dataclass
class _Walk:
    resolved_root: Path
    found: list[Checkpoint] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    visited: set[tuple[int, int]] = field(default_factory=set)
    seen_files: set[tuple[int, int]] = field(default_factory=set)

    def walk(self, root: Path, st: os.stat_result) -> None:
        """Depth first in name order, with an explicit stack: a tree thousands of levels deep
        is walked like any other (recursion would end in RecursionError)."""
        stack: list[tuple[Path, Iterator[os.DirEntry[str]]]] = []
        opened = self.directory(root, st)
        if opened is not None:
            stack.append(opened)
        while stack:
            parent, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                continue
            below = self.entry(parent, entry)
            if below is not None:
                opened = self.directory(*below)
                if opened is not None:
                    stack.append(opened)

    def directory(self, path: Path, st: os.stat_result) -> tuple[Path, Iterator[os.DirEntry[str]]] | None:
        """Classifies a directory; returns its entries to walk when it is no checkpoint itself."""
        identity = (st.st_dev, st.st_ino)
        if identity in self.visited:
            self.skipped.append((os.fspath(path), "already visited (symlink loop)"))
            return None
        self.visited.add(identity)
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.found.append(Checkpoint(path, "unreadable", step_of(path.name), st.st_mtime,
                                         (f"cannot list directory: {exc.strerror or exc}",), readable=False))
            return None
        names = {e.name: e for e in entries}
        kind, problems = _classify(path, names)
        if kind is not None:
            self.found.append(Checkpoint(path, kind, step_of(path.name), _newest(entries, st), tuple(problems)))
            return None
        self._deepspeed_tag(path, names)
        self._megatron_tracker(path, names)
        return path, iter(entries)

    def entry(self, parent: Path, entry: os.DirEntry[str]) -> tuple[Path, os.stat_result] | None:
        """Records a file entry; returns (path, stat) of a directory to walk next."""
        path = parent / entry.name
        looks_like_checkpoint = formats.is_tensor_file_name(entry.name)
        is_link = False
        try:
            is_link = entry.is_symlink()
            st = entry.stat(follow_symlinks=True)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self.skipped.append((os.fspath(path), "symlink loop"))
            elif is_link and exc.errno == errno.ENOENT:
                if looks_like_checkpoint:
                    self.found.append(Checkpoint(path, formats.file_kind(entry.name), step_of(entry.name), 0.0,
                                                 ("broken symlink: its target does not exist",), readable=False))
            elif looks_like_checkpoint:
                self.found.append(Checkpoint(path, formats.file_kind(entry.name), step_of(entry.name), 0.0,
                                             (f"cannot stat: {exc.strerror or exc}",), readable=False))
            return
        if stat.S_ISDIR(st.st_mode):
            if is_link and self._inside(path):
                # The target is walked under its own name; following the link as well
                # would list the same checkpoint twice, or loop (sub/up -> ..).
                self.skipped.append((os.fspath(path), "symlink into the tree or above it (not followed)"))
                return None
            return path, st
        elif stat.S_ISREG(st.st_mode):
            if not looks_like_checkpoint:
                return
            identity = (st.st_dev, st.st_ino)
            if is_link and self._inside(path):
                # "last.ckpt -> epoch=3-step=1200.ckpt": the target is a checkpoint already.
                self.skipped.append((os.fspath(path), "symlink into the tree (walked under its own name)"))
                return
            if identity in self.seen_files:
                return
            self.seen_files.add(identity)
            self.found.append(Checkpoint(path, formats.file_kind(entry.name), step_of(entry.name), st.st_mtime))
        elif looks_like_checkpoint:
            # Never opened: reading a FIFO blocks until a writer appears, a device never ends.
            self.found.append(Checkpoint(path, formats.file_kind(entry.name), step_of(entry.name), st.st_mtime,
                                         (f"not a regular file ({_file_type(st.st_mode)})",), readable=False))

    def _inside(self, link: Path) -> bool:
        try:
            target = link.resolve(strict=True)
        except (OSError, RuntimeError):
            return False
        # Inside the tree, or the tree's own root or one of its ancestors (`up -> ..` from
        # the root): following either would walk the tree again.
        root = self.resolved_root
        return target == root or root in target.parents or target in root.parents

    def _deepspeed_tag(self, path: Path, names: dict[str, os.DirEntry[str]]) -> None:
        """DeepSpeed writes `latest` (the tag of the last complete save) after the save; a
        tag naming a directory that is not there is a broken tree. Reported as a row for the
        missing directory, since that is the checkpoint DeepSpeed would try to resume."""
        tag = _read_tag(path, names)
        if tag is None or tag in names:
            return
        self.found.append(Checkpoint(path / tag, "deepspeed", step_of(tag), 0.0,
                                     (f"'latest' names {tag}, which does not exist",), readable=False))

    def _megatron_tracker(self, path: Path, names: dict[str, os.DirEntry[str]]) -> None:
        """The tracker of a Megatron-LM save directory, which `--load DIR` follows: a row for
        the directory it names when that is not there, or for the tracker itself when it holds
        no iteration, or is absent while megatron-core iteration directories are present."""
        candidates = [n for n in names if _MEGATRON.match(n) or n == MEGATRON_RELEASE]
        if MEGATRON_TRACKER not in names and not any(is_megatron_iteration(n, _scan_names(path / n))
                                                     for n in candidates):
            return
        named, problem = read_megatron_tracker(path)
        if named is not None and named not in names:
            self.found.append(Checkpoint(path / named, "megatron", step_of(named), 0.0,
                                         (f"{MEGATRON_TRACKER} names {named}, which does not exist",), readable=False))
        elif problem is not None:
            try:
                mtime = names[MEGATRON_TRACKER].stat(follow_symlinks=False).st_mtime
            except (KeyError, OSError):
                mtime = 0.0
            self.found.append(Checkpoint(path / MEGATRON_TRACKER, "megatron", None, mtime, (problem,), readable=False))


def is_megatron_iteration(name: str, names: Collection[str]) -> bool:
    """Whether a directory of this name and entries is one save of a Megatron-LM run in
    megatron-core's torch_dist format (`iter_0000100/` with metadata.json or common.pt beside
    its DCP files)."""
    return bool(_MEGATRON.match(name) or name == MEGATRON_RELEASE) and (
        MEGATRON_CONFIG in names or MEGATRON_COMMON in names)


def read_megatron_tracker(path: Path) -> tuple[str | None, str | None]:
    """(the iteration directory the tracker in `path` names, what is wrong with the tracker).
    Read as Megatron-LM's `read_metadata` reads it: the stripped text is an iteration number
    (`iter_{:07d}`) or "release"; anything else makes Megatron-LM exit without loading."""
    try:
        st = (path / MEGATRON_TRACKER).stat()
    except FileNotFoundError:
        return None, (f"absent: Megatron-LM's --load {path.name or path} then starts from random weights "
                      "(only --ckpt-step N still finds iter_N)")
    except OSError as exc:
        return None, f"cannot stat: {exc.strerror or exc}"
    try:
        if not stat.S_ISREG(st.st_mode) or st.st_size > 4096:
            return None, f"not a small regular file ({st.st_size} bytes)"
        text = (path / MEGATRON_TRACKER).read_bytes().decode("utf-8").strip()
    except OSError as exc:
        return None, f"cannot read: {exc.strerror or exc}"
    except UnicodeDecodeError:
        return None, "not UTF-8 text: Megatron-LM's read_metadata raises UnicodeDecodeError"
    if text == MEGATRON_RELEASE:
        return MEGATRON_RELEASE, None
    try:
        iteration = int(text)
    except ValueError:
        return None, f"holds {text!r:.40}, neither an iteration number nor 'release': Megatron-LM exits without loading"
    if iteration < 0:
        return None, f"holds {iteration}: Megatron-LM's read_metadata asserts a non-negative iteration"
    if iteration >= _MEGATRON_MAX_ITERATION:  # its directory name could not exist
        return None, f"holds {text:.24}..., an iteration of {len(str(iteration))} digits"
    return f"iter_{iteration:07d}", None


def markers(path: Path) -> tuple[str, ...]:
    """What the completeness markers of the checkpoint directory `path` say is wrong (the
    problems `find_checkpoints` gives its Checkpoint); () for a file."""
    if not path.is_dir():
        return ()
    return tuple(_classify(path, _scan_names(path))[1])


def _classify(path: Path, names: dict[str, os.DirEntry[str]]) -> tuple[str | None, list[str]]:
    """The kind of checkpoint directory `path` is (None for a plain folder) and the problems
    its completeness markers show."""
    problems: list[str] = []
    whole = formats.directory_format(path, names)
    if is_megatron_iteration(path.name, names):
        why = formats.unfinished(whole, names) if whole is not None else None
        return "megatron", ([why] if why else []) + _megatron_newer(path)
    if whole is not None:
        why = formats.unfinished(whole, names)
        return whole.name, [why] if why else []
    match = _DEEPSPEED.match(path.name)
    if match:
        tag = _read_tag(path.parent, _scan_names(path.parent))
        tagged = step_of(tag) if tag else None
        if tag is not None and tagged is not None and int(match.group(1)) > tagged:
            problems.append(f"newer than {tag}, the step 'latest' names: DeepSpeed updates 'latest' "
                            "after a save completes, so this one did not")
        return "deepspeed", problems
    if _TRAINER.match(path.name):
        if "trainer_state.json" not in names:
            problems.append("no trainer_state.json: the Trainer writes it last, so the save was interrupted")
        tag = _read_tag(path, names)
        if tag is not None and tag not in names:
            problems.append(f"'latest' names {tag}, which does not exist")
        return "hf-trainer", problems
    has_weights = any(formats.is_hf_weights(n) for n in names)
    has_loose = any(formats.is_tensor_file_name(n) for n in names)
    if has_weights or ("config.json" in names and has_loose):
        return "hf-model", problems
    return None, problems


def _megatron_newer(path: Path) -> list[str]:
    """An iteration newer than the one the run's tracker names: Megatron-LM rewrites the
    tracker only once a save is complete (async saves too, in their finalize step)."""
    match = _MEGATRON.match(path.name)
    named, _ = read_megatron_tracker(path.parent)
    tracked = _MEGATRON.match(named) if named else None
    # A tracker naming a directory that is not there is the tracker's problem (its own row).
    if match and tracked and int(match.group(1)) > int(tracked.group(1)) and (path.parent / named).is_dir():
        return [f"newer than {named}, which {MEGATRON_TRACKER} names: Megatron-LM writes it after a save "
                "completes, so this one did not"]
    return []


def _scan_names(path: Path) -> dict[str, os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return {e.name: e for e in it}
    except OSError:
        return {}


def _read_tag(path: Path, names: dict[str, os.DirEntry[str]]) -> str | None:
    """The tag in DeepSpeed's `latest` file, or None when there is none (or it is not a
    small regular file: never read a FIFO)."""
    entry = names.get("latest")
    if entry is None:
        return None
    try:
        st = entry.stat(follow_symlinks=True)
        if not stat.S_ISREG(st.st_mode) or st.st_size > 4096:
            return None
        tag = (path / "latest").read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    # A tag is a directory name; anything with a separator is not one we can check.
    return tag if tag and "/" not in tag and tag not in (".", "..") else None


def _newest(entries: list[os.DirEntry[str]], st: os.stat_result) -> float:
    newest = st.st_mtime
    for entry in entries:
        try:
            newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
        except OSError:
            pass
    return newest


def _file_type(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"
