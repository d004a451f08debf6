"""The format registry: every checkpoint format shardscan reads, and the questions the rest of
the package asks about files by their names and first bytes.

Adding a format is one module here declaring a `FORMAT` (see base.Format) and one entry in
`FORMATS`. Nothing outside this package names a checkpoint file's suffix or sniffs its bytes:
scanner, discover, checker and layout ask the functions below. The recipe, with an example,
is in docs/architecture.md.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Collection

from ..errors import NotACheckpointError
from . import dcp, safetensors, torch_legacy, torch_zip, wrong
from .base import HEAD, FileProblem, Format, Job, Listing, verify

if TYPE_CHECKING:
    from .._core import NativeFile

__all__ = [
    "FORMATS", "HEAD", "FileProblem", "Format", "Job", "Listing", "directory_format", "family_of", "family_suffix",
    "file_kind", "is_hf_weights", "is_tensor_file_name", "read_file", "sniffs_as_checkpoint", "step_stem",
    "tensor_files", "unfinished", "verify",
]

#: Every format, in order of preference: a loader that finds several families of tensor files
#: in one directory reads the first (safetensors before torch .bin).
FORMATS: list[Format] = [safetensors.FORMAT, torch_zip.FORMAT, torch_legacy.FORMAT, dcp.FORMAT]

#: Files in a checkpoint directory that carry tensor-file suffixes but hold no tensors: the HF
#: Trainer's pickled TrainingArguments and RNG states (numpy objects), which any weights-only
#: reader refuses. Given by name on the command line, they are still read (and refused).
NOT_TENSOR_FILES = ("training_args.bin", "rng_state")

# Hugging Face weight file and shard index names: their presence makes a directory one model
# checkpoint rather than a folder of unrelated loose files.
_HF_WEIGHTS = re.compile(
    r"^(?:model|pytorch_model|adapter_model|tf_model|diffusion_pytorch_model)"
    r"(?:-\d{5}-of-\d{5})?\.(?:safetensors|bin)$"
)
_HF_INDEX = re.compile(r"\.(?:safetensors|bin)\.index\.json$")


def _file_suffixes() -> tuple[str, ...]:
    """Suffixes of files read on their own (a DCP .distcp file is read with its directory),
    in order of preference."""
    return tuple(s for f in FORMATS if f.read is not None for s in f.suffixes)


def family_of(name: str) -> int | None:
    """The preference rank of the family a tensor file belongs to by its name (0 is preferred),
    or None for a name no file format claims."""
    for rank, suffix in enumerate(_file_suffixes()):
        if name.endswith(suffix):
            return rank
    return None


def family_suffix(name: str) -> str | None:
    """The suffix naming a tensor file's family (".safetensors", ".bin"), or None."""
    rank = family_of(name)
    return _file_suffixes()[rank] if rank is not None else None


def is_tensor_file_name(name: str) -> bool:
    """Whether a file of this name may hold tensors on its own."""
    return family_of(name) is not None


def step_stem(name: str) -> str:
    """The name without its tensor-file suffix (where a step number may end)."""
    rank = family_of(name)
    return name[: -len(_file_suffixes()[rank])] if rank is not None else name


def is_hf_weights(name: str) -> bool:
    """A Hugging Face weight file or shard index name (model.safetensors,
    pytorch_model-00001-of-00002.bin, model.safetensors.index.json, ...)."""
    return _HF_WEIGHTS.match(name) is not None or _HF_INDEX.search(name) is not None


def file_kind(name: str) -> str:
    """The checkpoint kind of a loose file, by its name: the name of the format claiming its
    suffix, or a kind that format declares for it (".ckpt": "lightning")."""
    for fmt in FORMATS:
        for suffix, kind in fmt.kinds.items():
            if name.endswith(suffix):
                return kind
        if fmt.read is not None and name.endswith(fmt.suffixes):
            return fmt.name
    return torch_zip.NAME  # the catch-all of torch.save: any name at all


def tensor_files(directory: Path) -> list[Path]:
    """The tensor files of a checkpoint directory, sorted by name (not recursive)."""
    return sorted(
        p for p in directory.iterdir()
        if is_tensor_file_name(p.name) and not p.name.startswith(NOT_TENSOR_FILES) and not p.is_dir()
    )


def unfinished(fmt: Format, names: Collection[str]) -> str | None:
    """Why a directory of `fmt` holding these entries is a save that did not finish, or None."""
    return fmt.unfinished(names) if fmt.unfinished is not None else None


def directory_format(path: Path, names: Collection[str] | None = None) -> Format | None:
    """The format of a directory read as one checkpoint (DCP), or None for a directory whose
    files are read one by one. `names`: its entries, when the caller has listed them."""
    if names is None:
        try:
            names = os.listdir(path)
        except OSError:
            return None
    return next((f for f in FORMATS if f.is_directory is not None and f.is_directory(names)), None)


def sniffs_as_checkpoint(path: Path) -> bool:
    """Whether the first bytes of the file at `path` are those of a format this package reads."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(HEAD)
    except OSError:
        return False
    return any(f.sniff is not None and f.sniff(head) for f in FORMATS if f.read is not None)


def read_file(file: "NativeFile", name: str, objects: bool = False) -> Listing:
    """Hands an opened file to the reader its first bytes call for, else to a reader that
    claims its name (by_name), else raises NotACheckpointError (saying what the file is
    instead where shardscan.formats.wrong recognises it). `objects`: the framework
    unpickles this file in full (Format.read_objects)."""
    head = file.read(0, min(file.size, HEAD))
    readers = [f for f in FORMATS if f.read is not None]
    fmt = next((f for f in readers if f.sniff is not None and f.sniff(head)), None)
    fmt = fmt or next((f for f in readers if f.by_name and name.endswith(f.suffixes)), None)
    if fmt is None or fmt.read is None:
        refusal = wrong.refusal(file)
        if refusal is not None:
            raise refusal
        known = " or ".join(dict.fromkeys(f.name for f in readers))  # two readers share "torch"
        raise NotACheckpointError(f"not a {known} checkpoint file", path=file.path)
    if objects and fmt.read_objects is not None:
        return fmt.read_objects(file, name)
    return fmt.read(file, name)
