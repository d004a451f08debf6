"""Expected layouts: what a checkpoint should hold, from whichever source declares it.

Every source becomes a `Layout`: expected keys with whatever is known about each (dtype,
shape, checksum, shard file), which absent keys are acceptable (tied weights, the model's own
ignore lists) and whether keys outside it are unexpected. `check` compares the checkpoint's
scan with each layout in the same way, so a new source only has to build a Layout.

Sources (docs/report-json.md):
* a shard index (`*.safetensors.index.json`, `*.bin.index.json`): keys and the shard of each;
* a manifest written by `shardscan scan -o` (Parquet, Arrow IPC or CSV): keys, dtypes, shapes,
  checksums; inside a checkpoint directory it is picked up as MANIFEST_NAME;
* a reference checkpoint (file or directory, any format the scanner reads);
* a Hugging Face config.json: (a) the structural check, standard library only; (b) the full
  layout of the model built on the meta device by transformers;
* `module:factory`: any torch.nn.Module factory, built on the meta device.

torch and transformers are imported only by the last two, inside the functions that need them.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from itertools import groupby
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from . import moe

if TYPE_CHECKING:
    from ._core import Names, ShardIndex

#: The manifest `check` uses automatically when it lies inside the checkpoint directory.
MANIFEST_NAME = "shardscan.manifest.parquet"
#: Also accepted inside a directory, in this order after MANIFEST_NAME.
MANIFEST_NAMES = (MANIFEST_NAME, "shardscan.manifest.arrow", "shardscan.manifest.feather")

#: Prefixes wrappers add to every key: DDP, torch.compile, PEFT, a nested "state_dict".
KNOWN_PREFIXES = ("module.", "_orig_mod.", "base_model.model.", "state_dict.")

#: config.json fields that give the number of repeated blocks, in the order tried.
LAYER_COUNT_FIELDS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")

#: Container names whose numbered children are the config's repeated blocks.
_BLOCK_CONTAINERS = ("layers", "h", "layer", "blocks", "block", "decoder_layers")

#: A key inside a numbered block: (container, block number, suffix), the first block-list
#: component followed by a number deciding. The core applies the same rule (ss_block_split);
#: this reads the keys it cannot be given.
_BLOCK_KEY = re.compile(r"((?:[^.]*\.)*?(?:%s))\.([0-9]+)\.(.*)" % "|".join(_BLOCK_CONTAINERS), re.DOTALL)

_SHAPE = attrgetter("shape")

_SERIES = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<total>\d{5})(?P<ext>\.[^.]+)$")


@dataclass(frozen=True)
class Spec:
    """What a layout knows about one expected tensor; None = not known, not compared."""

    dtype: str | None = None
    shape: tuple[int, ...] | None = None
    checksum: str | None = None
    file: str | None = None


@dataclass
class Layout:
    """An expected layout.

    `kind`: "index", "manifest", "reference", "config", "transformers" or "model".
    `source`: how the report names it ("index model.safetensors.index.json").
    `ties`: target -> source; either may be absent when the other is present (tied weights).
    `ignore_missing` / `ignore_unexpected`: regexes (searched) the model itself tolerates.
    `complete`: keys the checkpoint holds outside `specs` are unexpected (the structural
    check constrains only the numbered blocks, so it is not complete).
    `files`: for an index, every shard it names; `extra`: keys the checkpoint holds that this
    layout rules out even when it is not complete; `errors` / `warnings`: found while building.
    """

    kind: str
    source: str
    specs: dict[str, Spec]
    ties: dict[str, str] = field(default_factory=dict)
    ignore_missing: re.Pattern[str] | None = None
    ignore_unexpected: re.Pattern[str] | None = None
    complete: bool = True
    files: tuple[str, ...] = ()
    extra: set[str] = field(default_factory=set)
    errors: list[tuple[str, str, str]] = field(default_factory=list)  # (file, problem, kind of errors.KINDS)
    warnings: list[str] = field(default_factory=list)
    total_size: int | None = None


# ----------------------------------------------------------------------------------------
# Shard index


def find_indexes(directory: Path) -> list[Path]:
    """The shard index files of a checkpoint directory (`*.index.json`), sorted by name."""
    return sorted(p for p in directory.iterdir() if p.name.endswith(".index.json") and p.is_file())


def index_layout(path: Path) -> Layout:
    """The layout an index declares: every key of its `weight_map`, each in its shard.
    `metadata.total_size` is kept for the advisory comparison. Raises ValueError when the
    file is not a shard index (no `weight_map` object of key -> file name)."""
    from ._core import parse_index

    with open(path, "rb") as handle:
        raw = handle.read()
    plain = parse_index(raw)  # the common case in C
    if plain is not None:
        return IndexLayout(path.name, plain)
    data = _parse_json(raw, path)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    try:  # checked on the few distinct values, not on every key's
        shards = set(weight_map.values()) if isinstance(weight_map, dict) else None
    except TypeError:  # a list or object as a value
        shards = None
    if shards is None or not all(isinstance(v, str) for v in shards):
        raise ValueError(f"{path}: not a shard index (no weight_map of key -> shard file)")
    spec_of = {shard: Spec(file=shard) for shard in shards}
    metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    total = metadata.get("total_size")
    return Layout(
        kind="index",
        source=f"index {path.name}",
        specs=dict(zip(weight_map, map(spec_of.__getitem__, weight_map.values()))),
        files=tuple(sorted(shards)),
        total_size=int(total) if isinstance(total, (int, float)) and not isinstance(total, bool) else None,
    )


class LazyLayout(Layout):
    """A layout whose `specs`, one Python object per key, are made by `_make_specs` on first
    use: `check` measures the checkpoint against what the layout holds instead. Setting
    `specs` drops that (`_drop`), since it would no longer agree with them."""

    @property  # type: ignore[override]
    def specs(self) -> dict[str, Spec]:
        if self._specs is None:
            self._specs = self._make_specs()
        return self._specs

    @specs.setter
    def specs(self, specs: dict[str, Spec] | None) -> None:
        if specs is not None:
            self._drop()
        self._specs = specs

    def _make_specs(self) -> dict[str, Spec]:
        raise NotImplementedError

    def _drop(self) -> None:
        raise NotImplementedError


class IndexLayout(LazyLayout):
    """An index the core read (a plain one: see ss_index_parse); `check` measures the
    checkpoint's own scan against `index` in C."""

    def __init__(self, name: str, index: ShardIndex) -> None:
        self.index: ShardIndex | None = index
        super().__init__(kind="index", source=f"index {name}", specs=None, files=tuple(sorted(index.shards)),  # type: ignore[arg-type]
                         total_size=index.total_size)

    def _make_specs(self) -> dict[str, Spec]:
        assert self.index is not None, "an IndexLayout holds its index or its specs"
        spec_of = [Spec(file=shard) for shard in self.index.shards]  # Specs are frozen: one per shard
        return dict(zip(self.index.keys, map(spec_of.__getitem__, self.index.shard_of)))

    def _drop(self) -> None:
        self.index = None


def series_gaps(names: Iterable[str]) -> list[tuple[str, str]]:
    """(absent shard name, series) for every gap in `-0000i-of-0000N` series among `names`,
    e.g. model-00002-of-00004.safetensors when 1, 3 and 4 are present."""
    series: dict[tuple[str, str, str], set[int]] = {}
    for name in names:
        match = _SERIES.match(name)
        if match:
            series.setdefault((match["stem"], match["total"], match["ext"]), set()).add(int(match["index"]))
    gaps = []
    for (stem, total, ext), present in series.items():
        for i in range(1, int(total) + 1):
            if i not in present:
                gaps.append((f"{stem}-{i:05d}-of-{total}{ext}", f"{stem}-*-of-{total}{ext}"))
    return gaps


# ----------------------------------------------------------------------------------------
# Manifest and reference checkpoint


def find_manifest(directory: Path) -> Path | None:
    """The manifest inside a checkpoint directory (MANIFEST_NAMES), or beside a checkpoint
    file (`<file name>.shardscan.manifest.parquet`), or None."""
    if not directory.is_dir():
        beside = directory.with_name(f"{directory.name}.{MANIFEST_NAME}")
        return beside if beside.is_file() else None
    for name in MANIFEST_NAMES:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def read_manifest(path: Path) -> Any:
    """A table written by `scan -o`, as a pyarrow.Table. Raises ValueError for an unknown
    suffix or a table without the key/dtype/shape columns."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    elif suffix in (".arrow", ".feather"):
        import pyarrow.feather as feather

        table = feather.read_table(path)
    elif suffix == ".csv":
        import pyarrow.csv as csv

        table = csv.read_csv(path)
    else:
        raise ValueError(f"{path}: unknown manifest format {suffix!r} (use .parquet, .arrow, .feather or .csv)")
    for column in ("key", "dtype", "shape"):
        if column not in table.column_names:
            raise ValueError(f"{path}: not a shardscan manifest (no {column!r} column)")
    return table


def table_specs(table: Any, *, checksums: bool) -> dict[str, Spec]:
    """key -> Spec from a manifest table (pyarrow.Table with the scan schema's columns)."""
    names = table.column_names

    def column(name: str) -> list[Any]:
        return table.column(name).to_pylist() if name in names else [None] * table.num_rows

    return rows_specs(column("key"), column("dtype"), column("shape"),
                      column("checksum") if checksums else [None] * table.num_rows, column("file"))


def rows_specs(keys: Sequence[str], dtypes: Sequence[str | None], shapes: Sequence[Any],
               checksums: Sequence[str | None], files: Sequence[str | None]) -> dict[str, Spec]:
    """key -> Spec from parallel columns. A key listed twice keeps its first row (the
    duplicate itself is reported by the check of that checkpoint)."""
    specs: dict[str, Spec] = {}
    for key, dtype, shape, checksum, file in zip(keys, dtypes, shapes, checksums, files):
        if key not in specs:
            specs[key] = Spec(dtype=dtype, shape=None if shape is None else _shape(shape), checksum=checksum, file=file)
    return specs


def _shape(value: Any) -> tuple[int, ...]:
    # CSV manifests carry shapes as their JSON text, "[4096, 1024]".
    if isinstance(value, str):
        value = json.loads(value)
    return tuple(int(v) for v in value)


def manifest_layout(path: Path, checkpoint: Path | None = None) -> Layout:
    """Keys, dtypes, shapes and checksums from a manifest (checksums compared when present);
    with `checkpoint`, the files the manifest lists by size and digest are verified too
    (shardscan.manifest), each mismatch an error of the layout."""
    from .manifest import verify_files

    table = read_manifest(path)
    layout = Layout(kind="manifest", source=f"manifest {path.name}", specs=table_specs(table, checksums=True))
    if checkpoint is not None:
        layout.errors += verify_files(table, checkpoint)
    return layout


# ----------------------------------------------------------------------------------------
# Hugging Face config.json


def read_config(path: Path) -> dict[str, Any]:
    """config.json as a dict (a directory means its config.json). Raises ValueError when it
    is not a JSON object, FileNotFoundError when absent."""
    if path.is_dir():
        path = path / "config.json"
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a model config (expected a JSON object)")
    return data


def layer_count(config: Mapping[str, Any]) -> int | None:
    """The number of repeated blocks a config declares (num_hidden_layers, n_layer, ...),
    looking into `text_config` for multimodal configs; None when it declares none."""
    for scope in (config, config.get("text_config") if isinstance(config.get("text_config"), dict) else {}):
        for name in LAYER_COUNT_FIELDS:
            value = scope.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
    return None


def structural_layout(config: Mapping[str, Any], keys: Sequence[str] | Names, shapes: Sequence[tuple[int, ...] | None],
                      source: str) -> Layout:
    """Level (a), standard library only: with `num_hidden_layers` = N, every block 0..N-1 of
    the model's block container must carry the same tensor suffixes, with the same shapes,
    as the blocks present. `keys` are the checkpoint's (distinct), `shapes` their shapes.

    The block container is the one named like a block list (layers, h, blocks, ...) that
    holds the most keys; its expected keys are every present suffix at every index, each
    with the shape most blocks agree on. Keys of blocks numbered N or beyond are `extra`
    (unexpected); keys outside the container are not judged (the layout is not complete).

    A config that declares routed experts (moe.py) adds what the blocks cannot show: every
    MoE block holds experts 0..E-1 (each with every per-expert tensor any expert has), or
    fused expert tensors whose first dimension is E; its shared experts when declared; dense
    blocks hold no experts (expert tensors there are unexpected); and the multi-token-
    prediction blocks N.. are allowed, whole when present, never required."""
    count = layer_count(config)
    layout = BlockLayout(f"{source} (structural)")
    if count is None:
        layout.warnings.append(f"{source}: no num_hidden_layers (or n_layer, num_layers): no structural check")
        return layout
    by_container: dict[str, dict[int, dict[str, tuple[int, ...] | None]]] = {}
    from ._core import Names

    runs, suffixes = _block_columns(keys if isinstance(keys, Names) else Names(list(keys)))
    canonical = True  # every block number written as str(int) writes it ("3", never "03")
    for head, start, end in runs:  # keys come block by block: Python runs once per run
        if head:
            container, _, number = head.rpartition(".")
            block = int(number)
            canonical = canonical and str(block) == number
            by_container.setdefault(container, {}).setdefault(block, {}).update(zip(suffixes[start:end], shapes[start:end]))
    if not by_container:
        if count:
            layout.warnings.append(f"{source}: num_hidden_layers = {count} but no numbered blocks (layers.N, h.N) found")
        return layout
    container = max(by_container, key=lambda c: (sum(len(b) for b in by_container[c].values()), c))
    blocks = by_container[container]
    layout.container = container
    layout.blocks = blocks if canonical else None
    plan = moe.moe_plan(config, count)
    if plan is None:
        _expect_blocks(layout, container, blocks, count)
    else:
        _expect_moe_blocks(layout, container, blocks, plan)
    return layout


class BlockLayout(LazyLayout):
    """The structural layout of a config: `container`.i.suffix for each block i and each suffix
    of `expected[i]` (dicts of suffix -> Spec, shared by blocks that expect the same). `blocks`
    (block -> suffix -> shape, as found in the checkpoint it was built from, or None when block
    numbers are not canonical) lets `check` measure that checkpoint block by block
    (block_findings)."""

    def __init__(self, source: str) -> None:
        self.container = ""
        self.expected: dict[int, dict[str, Spec]] = {}
        self.blocks: dict[int, dict[str, tuple[int, ...] | None]] | None = None
        super().__init__(kind="config", source=source, specs=None, complete=False)  # type: ignore[arg-type]

    def _make_specs(self) -> dict[str, Spec]:
        specs: dict[str, Spec] = {}
        for i, suffixes in self.expected.items():
            prefix = f"{self.container}.{i}."
            specs.update(zip(map(prefix.__add__, suffixes), suffixes.values()))
        return specs

    def _drop(self) -> None:
        self.blocks = None

    def block_findings(self) -> tuple[set[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]] | None:
        """(expected keys absent, (key, expected shape, shape) of each tensor whose shape
        differs) in the checkpoint the layout was built from, worked out a block at a time: set
        operations over each block's suffixes, strings only for what they find. None when the
        blocks were not kept."""
        if self.blocks is None:
            return None
        missing: set[str] = set()
        changed = []
        shapes_of: dict[int, dict[str, tuple[int, ...] | None]] = {}  # by id of a shared expected dict
        for i, want in self.expected.items():
            have = self.blocks.get(i, {})
            shapes = shapes_of.get(id(want))
            if shapes is None:
                shapes = shapes_of[id(want)] = dict(zip(want, map(_SHAPE, want.values())))
            if have == shapes:  # the block as expected (compared in C, nothing made): the common case
                continue
            prefix = f"{self.container}.{i}."
            missing.update(map(prefix.__add__, want.keys() - have.keys()))
            for suffix, shape in have.items() - shapes.items():  # what differs, and what is not expected
                spec = want.get(suffix)
                if spec is not None and spec.shape is not None and shape is not None:
                    changed.append((prefix + suffix, spec.shape, shape))
        return missing, changed


def _block_columns(keys: Names) -> tuple[list[tuple[str, int, int]], list[str]]:
    """(block, first key, end key) of each run of consecutive keys in one block, the block ""
    for keys in none, and the suffix of each key ("" in no block). The first block-list
    component followed by a number decides: model.layers.3.mlp.experts.7.w is block
    model.layers.3 with the suffix mlp.experts.7.w. Split in C, key by key here only when a
    key holds a NUL (or a lone surrogate)."""
    from ._core import block_split

    split = block_split(keys, _BLOCK_CONTAINERS)
    if split is not None:
        return split
    matches = list(map(_BLOCK_KEY.fullmatch, keys.items))
    runs, start = [], 0
    for head, run in groupby(f"{m[1]}.{m[2]}" if m else "" for m in matches):
        end = start + sum(1 for _ in run)
        runs.append((head, start, end))
        start = end
    return runs, [m[3] if m else "" for m in matches]


def _majority_specs(blocks: Iterable[Mapping[str, tuple[int, ...] | None]],
                    rename: Mapping[str, str] | None = None) -> dict[str, Spec]:
    """suffix -> a Spec with the shape most of its tensors have; ties broken by the shape's
    text so the result is deterministic. `rename` maps a suffix to the one it is counted
    under. One Spec per suffix, shared by every block (Specs are frozen)."""
    counts: Counter = Counter()
    # Neighbouring blocks are mostly equal (compared in C: their suffixes and shapes are shared
    # objects): each run of equal blocks is counted once, times its length.
    runs: list[list] = []
    for block in blocks:
        if runs and runs[-1][0] == block:
            runs[-1][1] += 1
        else:
            runs.append([block, 1])
    for block, times in runs:
        found = Counter(zip(map(rename.__getitem__, block) if rename else block, block.values()))
        counts.update({pair: n * times for pair, n in found.items()} if times > 1 else found)
    best: dict[str, tuple[int, str, Any]] = {}
    for (suffix, shape), n in counts.items():
        rank = (n, str(shape), shape)
        if suffix not in best or rank[:2] > best[suffix][:2]:
            best[suffix] = rank
    return {suffix: Spec(shape=rank[2]) for suffix, rank in best.items()}


def _expect_blocks(layout: BlockLayout, container: str, blocks: Mapping[int, Mapping[str, Any]], count: int) -> None:
    spec_of = _majority_specs(blocks.values())
    shared: dict[frozenset[str], dict[str, Spec]] = {}
    for i, suffixes in block_suffixes(blocks, count).items():
        if suffixes not in shared:
            shared[suffixes] = {suffix: spec_of[suffix] for suffix in suffixes}
        layout.expected[i] = shared[suffixes]
    # blocks the config does not have: a checkpoint of a deeper model, or a wrong config
    layout.extra = {f"{container}.{i}.{suffix}" for i, block in blocks.items() if i >= count for suffix in block}


def _expect_moe_blocks(layout: BlockLayout, container: str, blocks: Mapping[int, Mapping[str, Any]], plan: moe.MoePlan) -> None:
    """The structural layout of an MoE config (see structural_layout). Per-expert tensors are
    compared as one placeholder suffix (mlp.experts.*.w1.weight), so a block's signature does
    not depend on which of its experts are there; each placeholder is then expanded to
    experts 0..E-1. Work is per distinct suffix where it can be: an MoE checkpoint has ~100k
    keys but a few thousand suffixes."""
    placeholder = {}
    for suffix in set().union(*blocks.values()):
        found = moe.expert_placeholder(suffix) if "experts." in suffix else None
        placeholder[suffix] = found[0] if found else suffix
    fused = {s for s in set(placeholder.values()) | set(plan.tensors) if moe.is_fused_expert(s)}
    spec_of = _majority_specs(blocks.values(), placeholder)
    for suffix in fused & spec_of.keys():
        # fused experts: one tensor of every expert, the experts along the first dimension
        shape = spec_of[suffix].shape
        if shape and shape[0] != plan.experts:
            spec_of[suffix] = Spec(shape=(plan.experts, *shape[1:]))
    signatures = {i: set(map(placeholder.__getitem__, block)) for i, block in blocks.items()}
    kinds = {i: plan.kind(i) for i in set(blocks) | set(range(len(plan.kinds)))}
    moe_suffixes = {s for i, sig in signatures.items() if kinds[i] == moe.MOE for s in sig}
    expert_suffixes = {s for s in moe_suffixes if "*" in s}
    declared = _declared_moe_tensors(layout, container, plan, moe_suffixes)
    shared: dict[frozenset[str], dict[str, Spec]] = {}  # placeholder suffixes -> every expert's
    for i, suffixes in block_suffixes(signatures, len(plan.kinds), kinds).items():
        kind = kinds[i]
        if kind == moe.DENSE:
            suffixes = frozenset(s for s in suffixes if "*" not in s and s not in fused)
        elif kind == moe.MOE:
            suffixes = suffixes | declared | (expert_suffixes if plan.explicit else set())
        if suffixes not in shared:
            expected = shared[suffixes] = {}
            for suffix in suffixes:
                spec = spec_of.get(suffix) or Spec()
                if "*" not in suffix:
                    expected[suffix] = spec
                else:
                    expected.update((suffix.replace("*", str(e), 1), spec) for e in range(plan.experts))
        layout.expected[i] = shared[suffixes]
    for i, block in blocks.items():
        kind = kinds[i]
        if kind is None:  # beyond the blocks and MTP blocks the config declares
            layout.extra.update(f"{container}.{i}.{suffix}" for suffix in block)
        elif kind == moe.DENSE and plan.explicit:
            layout.extra.update(f"{container}.{i}.{suffix}" for suffix in block
                                if placeholder[suffix] != suffix or suffix in fused)


def _declared_moe_tensors(layout: Layout, container: str, plan: moe.MoePlan, moe_suffixes: set[str]) -> set[str]:
    """What every MoE block must hold that no MoE block shows: the shared experts the config
    declares when no block holds any, and the family's expert tensors (moe.MOE_TENSORS) when
    no block holds an expert. What the blocks do hold, every MoE block is held to already."""
    declared = set()
    holds_experts = any("*" in s or moe.is_fused_expert(s) for s in moe_suffixes)
    if plan.shared and not any("shared_expert" in s for s in moe_suffixes):
        holders = sorted({s[: s.index("experts.")] for s in moe_suffixes if "experts.*" in s or moe.is_fused_expert(s)})
        parent = holders[0] if holders else "mlp."
        declared |= {parent + s for s in plan.shared}
    if not holds_experts:
        declared |= set(plan.tensors)
        if not plan.tensors and moe.MOE in plan.kinds:
            layout.warnings.append(f"{layout.source}: {plan.experts} experts per MoE layer declared, "
                                   f"but no block {container}.N holds an expert tensor")
    return declared


def block_suffixes(blocks: Mapping[int, Iterable[str]], count: int,
                   kinds: Mapping[int, str | None] | None = None) -> dict[int, frozenset[str]]:
    """The suffixes each block 0..count-1 must hold (and, with `kinds`, each present block
    whose kind is not None).

    A block's set of suffixes is its signature. A partly written block's signature is a strict
    subset of a complete one; hybrid models (attention and Mamba blocks, dense and MoE blocks)
    have several signatures none of which contains another: the maximal ones. A present block
    must hold the smallest maximal signature containing its own; an absent block, whose kind
    cannot be known, the suffixes common to every maximal signature. With `kinds` (block ->
    its kind from the config, e.g. MoE or dense) signatures are compared only within a kind,
    and an absent block gets what every maximal signature of its own kind has.

    Block 0 may hold what no other block does (T5's relative_attention_bias): when two or more
    other blocks are present and none holds such a suffix, it is block 0's own, required of
    block 0 alone."""
    kind_of = kinds or {}
    first_only: frozenset[str] = frozenset()
    if 0 in blocks and len(blocks) >= 3:
        first_only = frozenset(blocks[0]).difference(*(block for i, block in blocks.items() if i != 0))
    signatures_by_kind: dict[str | None, set[frozenset[str]]] = {}
    for i, block in blocks.items():
        signatures_by_kind.setdefault(kind_of.get(i), set()).add(frozenset(block) - first_only if i == 0 else frozenset(block))
    everything = set().union(*signatures_by_kind.values())

    def maximal(signatures: set[frozenset[str]]) -> list[frozenset[str]]:
        return [s for s in signatures if not any(s < other for other in signatures)]

    maximal_by_kind = {kind: maximal(sigs) for kind, sigs in signatures_by_kind.items()}
    all_maximal = maximal(everything)
    indices = set(range(count)) | {i for i in blocks if kind_of.get(i) is not None}
    out = {}
    for i in sorted(indices):
        own = frozenset(blocks.get(i, ())) - first_only if i == 0 else frozenset(blocks.get(i, ()))
        candidates = maximal_by_kind.get(kind_of.get(i)) or all_maximal
        if not own:
            out[i] = frozenset.intersection(*candidates) if candidates else frozenset()
            continue
        containing = [s for s in candidates if own <= s]
        out[i] = min(containing, key=lambda s: (len(s), sorted(s))) if containing else own
    if 0 in out:
        out[0] |= first_only
    return out


class RenamedOnLoad(ValueError):
    """transformers keeps this architecture's weights under other names (or fused) in memory
    than in its checkpoints; its meta model cannot serve as the on-disk layout."""


def transformers_layout(config_path: Path) -> Layout:
    """Level (b): the model transformers builds from config.json on the meta device (no
    weights, no download): every state_dict key with its shape, tied weights from
    `all_tied_weights_keys` (or `_tied_weights_keys`), and the model's own
    `_keys_to_ignore_on_load_missing` / `_unexpected` patterns, plus the buffers transformers
    itself tolerates (rotary inv_freq, position_ids). dtypes are not compared: transformers
    casts on load. Raises ImportError without transformers/torch, RenamedOnLoad for an
    architecture whose in-memory names differ from its checkpoints' (fused MoE experts),
    ValueError for a config transformers cannot build."""
    import torch
    import transformers

    path = config_path / "config.json" if config_path.is_dir() else config_path
    raw = read_config(path)
    model_type = raw.get("model_type")
    if not isinstance(model_type, str):
        raise ValueError(f"{path}: no model_type, transformers cannot build the model")
    if _has_conversion_mapping(model_type):
        # e.g. MoE experts fused into one tensor in memory but stored one per expert: the
        # meta model's names are not the checkpoint's, and comparing them would invent findings
        raise RenamedOnLoad(f"transformers renames {model_type} weights on load, so its model does not give on-disk names")
    fields = {k: v for k, v in raw.items() if k not in ("model_type", "transformers_version")}
    config = transformers.AutoConfig.for_model(model_type, **fields)
    model_class = None
    for name in raw.get("architectures") or ():
        model_class = getattr(transformers, name, None)
        if model_class is not None:
            break
    with torch.device("meta"):
        if model_class is not None:
            model = model_class._from_config(config)
        else:
            model = transformers.AutoModel.from_config(config)
    layout = Layout(kind="transformers", source=f"{path.name} (transformers {type(model).__name__})", specs={})
    for key, tensor in model.state_dict().items():
        layout.specs[key] = Spec(shape=tuple(tensor.shape))
    tied = getattr(model, "all_tied_weights_keys", None)
    if tied is None:  # transformers < 5 names only the tied target patterns
        tied = {}
        for pattern in getattr(model, "_tied_weights_keys", None) or ():
            for key in layout.specs:
                if re.search(pattern, key) and "embed" not in key:
                    tied[key] = _input_embedding_key(model) or key
    layout.ties = {str(k): str(v) for k, v in dict(tied).items() if k != v}
    ignore_missing = set(getattr(model, "_keys_to_ignore_on_load_missing", None) or ())
    ignore_unexpected = set(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ())
    buffers = [name for name, _ in model.named_buffers()]
    if any(name.endswith("rotary_emb.inv_freq") for name in buffers):
        ignore_unexpected.add(r"rotary_emb\.inv_freq")
    if any(name.endswith("position_ids") for name in buffers):
        ignore_unexpected.add(r"(^|\.)position_ids$")
    layout.ignore_missing = _any_of(ignore_missing)
    layout.ignore_unexpected = _any_of(ignore_unexpected)
    return layout


def _input_embedding_key(model: Any) -> str | None:
    try:
        embedding = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    for name, module in model.named_modules():
        if module is embedding:
            return f"{name}.weight"
    return None


def _has_conversion_mapping(model_type: str) -> bool:
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    except ImportError:
        return False
    try:
        return bool(get_checkpoint_conversion_mapping(model_type))
    except Exception:  # an internal helper: its absence or failure must not stop the check
        return False


def _any_of(patterns: set[str]) -> re.Pattern[str] | None:
    return re.compile("|".join(f"(?:{p})" for p in sorted(patterns))) if patterns else None


def transformers_available() -> bool:
    """Whether transformers can be imported, without importing it (a module hidden by
    `sys.modules[name] = None` or a meta-path blocker counts as absent)."""
    import importlib.util

    try:
        return importlib.util.find_spec("transformers") is not None and importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


# ----------------------------------------------------------------------------------------
# --model module:factory


def model_layout(spec: str) -> Layout:
    """The state_dict of `module:factory()` built on the meta device: keys and shapes (dtypes
    are not compared: a model casts on load). Keys sharing one parameter are tied: any one of
    them present is enough. Raises ValueError for a malformed spec, ImportError /
    AttributeError when the module or factory does not exist, TypeError when the factory
    does not return a torch.nn.Module."""
    import importlib
    import sys

    try:
        import torch
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise
        raise ImportError("torch is not installed: pip install 'shardscan[torch]' (or drop --model)") from None

    module_name, sep, factory_name = spec.partition(":")
    if not sep or not module_name or not factory_name:
        raise ValueError(f"--model {spec!r}: expected module:factory, e.g. mypkg.models:build")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules in the working directory are found
    factory: Any = importlib.import_module(module_name)
    for part in factory_name.split("."):
        factory = getattr(factory, part)
    with torch.device("meta"):
        model = factory()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"--model {spec}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    state = model.state_dict(keep_vars=True)
    layout = Layout(kind="model", source=f"model {spec}", specs={k: Spec(shape=tuple(t.shape)) for k, t in state.items()})
    first_name: dict[int, str] = {}
    for key, tensor in state.items():
        owner = first_name.setdefault(id(tensor), key)
        if owner != key:
            layout.ties[key] = owner
    return layout


# ----------------------------------------------------------------------------------------
# Prefixes


def strip_prefixes(key: str, prefixes: Sequence[str]) -> str:
    """`key` without each of `prefixes` it starts with, applied in order
    (module._orig_mod.x with ("module.", "_orig_mod.") -> x)."""
    for prefix in prefixes:
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def prefix_candidates() -> list[tuple[str, ...]]:
    """Every known prefix alone, then every ordered pair (DDP around torch.compile gives
    module._orig_mod.)."""
    singles = [(p,) for p in KNOWN_PREFIXES]
    pairs = [(a, b) for a in KNOWN_PREFIXES for b in KNOWN_PREFIXES if a != b]
    return singles + pairs


def _read_json(path: Path) -> Any:
    with open(path, "rb") as handle:
        return _parse_json(handle.read(), path)


def _parse_json(raw: bytes, path: Path) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:  # json nests by recursion: 100,000 '[' end here
        raise ValueError(f"{path}: JSON nested too deeply to read") from None


def classify(path: Path) -> str:
    """What an `--against` SOURCE is: "index", "manifest", "config" or "reference".
    A directory with tensor files is a reference checkpoint; one with only config.json a
    config; a file is a reference checkpoint when its name or first bytes say so. Raises
    FileNotFoundError when it does not exist, ValueError for anything else (a JSON file that
    is neither an index nor a config, a text file)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir():
        from . import formats

        if formats.tensor_files(path) or formats.directory_format(path):
            return "reference"
        if (path / "config.json").is_file():
            return "config"
        if find_manifest(path):
            return "manifest"
        raise ValueError(f"{path}: a directory with no tensor files, config.json or manifest")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".arrow", ".feather", ".csv"):
        return "manifest"
    if suffix == ".json":
        data = _read_json(path)
        if isinstance(data, dict) and isinstance(data.get("weight_map"), dict):
            return "index"
        if isinstance(data, dict) and ("model_type" in data or "architectures" in data or layer_count(data) is not None):
            return "config"
        raise ValueError(f"{path}: a JSON file that is neither a shard index (weight_map) nor a model config")
    from . import formats

    if formats.is_tensor_file_name(path.name) or formats.sniffs_as_checkpoint(path):
        return "reference"
    raise ValueError(f"{path}: not a layout source (an index, manifest, config.json or checkpoint)")
