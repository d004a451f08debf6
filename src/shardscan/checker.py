"""`check`: compare a checkpoint with every layout it should satisfy; `diff`: compare two.

(The module is `checker`, not `check`: importing a submodule named `check` would replace the
`shardscan.check` function with the module.)

A check scans the checkpoint once (headers, plus hashes unless `hash=False`), then measures the
scan against each expected layout independently (shardscan.layout) and unions the findings:
every declaration must hold. What always counts, layout or not:

* a file that cannot be read completely is an error; a truncated safetensors shard names its
  intact, cut and lost tensors, and the cut and lost ones are missing;
* a key held by two tensor files of the checkpoint is an error.

Without `against`, a checkpoint directory is checked against what it declares itself: its shard
index(es), the manifest MANIFEST_NAME and the structural check of its config.json. With
`against`, that source replaces the manifest and config (the directory's own index is still
checked: it says which files must exist).

The header-only path (`hash=False`, no reference) touches neither pyarrow nor torch.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from itertools import chain, compress, repeat
from operator import attrgetter, is_, is_not, ne
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Collection, Iterable, Mapping, NamedTuple, Sequence

from . import _gc
from . import formats
from . import layout as layouts
from ._core import Names, first_repeat
from ._typing import PathLike
from .discover import markers
from .layout import Layout, Spec
from .resume import MODEL, OBJECTS, STATE, resume_set, role_of
from .report import Diff, FileError, Mismatch, NonFinite, Report, families, natural_sorted

if TYPE_CHECKING:
    from .scanner import Columns, ScanResult


class _FileRows(NamedTuple):
    """The rows [start, end) of the scan's `columns` that one weight file holds."""

    columns: Columns
    start: int
    end: int
    file: str

    def column(self, name: str) -> list:
        """The file's entries of one column (the column itself when it holds them alone)."""
        values = getattr(self.columns, name)
        return values if (self.start, self.end) == (0, len(values)) else values[self.start : self.end]


@dataclass
class _Actual:
    """The checkpoint as scanned: the weights' rows a file at a time (`weights`, their keys
    distinct), keys whose bytes are gone (cut or lost by a truncation), and everything reported
    per file. `specs`, key -> Spec of each intact weight, is made when first asked for: the
    index and the structural check measure the weights' columns without it."""

    damaged: set[str]
    errors: list[FileError]
    files: int
    tensors: int
    nbytes: int
    bytes_by_file: dict[str, int]
    duplicates: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    state_specs: dict[str, Spec] = field(default_factory=dict)  # other files' tensors, by qualified key
    nonfinite: list[NonFinite] = field(default_factory=list)
    zeros: list[str] = field(default_factory=list)  # all-zero tensors of rank >= 2, by qualified key
    weights: list[_FileRows] = field(default_factory=list)
    _specs: dict[str, Spec] | None = None
    _names: Names | None = None

    @property
    def specs(self) -> dict[str, Spec]:
        if self._specs is None:
            self._specs = {}
            for rows in self.weights:
                _add_specs(self._specs, rows)
        return self._specs

    def names(self) -> Names:
        """The weights' keys, in order, as the core measures them."""
        if self._names is None:
            self._names = Names(self._column("key") if self._specs is None else list(self._specs))
        return self._names

    def shapes(self) -> list[tuple[int, ...] | None]:
        """The weights' shapes, in the order of names()."""
        # A reader may list a shape as a list; a Spec's is a tuple (tuple() returns a tuple as it is).
        return list(map(tuple, self._column("shape"))) if self._specs is None else list(map(_SHAPE, self._specs.values()))

    def _column(self, name: str) -> list:
        """The weights' entries of one scan column, in key order."""
        rows = self.weights
        if rows and all(r.columns is rows[0].columns for r in rows) and rows[0].start == 0 \
                and rows[-1].end == len(rows[0].columns.key) == sum(r.end - r.start for r in rows):
            return getattr(rows[0].columns, name)  # the weights are every row, in order
        return list(chain.from_iterable(r.column(name) for r in rows))


@dataclass(frozen=True)
class CheckOptions:
    """How check and diff read and compare checkpoints (the keyword arguments of `check`).

    `hf`: build a config's layout with transformers: True always (an error without it), False
    never, None only for a config named by `against` (a config found inside the checkpoint
    gets the structural check, which needs no transformers)."""

    hash: bool = True
    threads: int | None = None
    strip_prefix: tuple[str, ...] = ()
    checksums: bool = False
    model: str | None = None
    hf: bool | None = None
    progress: Callable[[int, int], None] | None = None
    strict: bool = False
    sha256: bool | None = None  # shardscan.digests.check_published

    @staticmethod
    def prefixes(strip_prefix: str | Sequence[str] | None) -> tuple[str, ...]:
        """The strip_prefix argument as a tuple of non-empty prefixes."""
        if strip_prefix is None:
            return ()
        if isinstance(strip_prefix, str):
            return (strip_prefix,) if strip_prefix else ()
        return tuple(p for p in strip_prefix if p)


def files_to_scan(path: Path, index_shards: Iterable[str] | None = None) -> list[Path]:
    """The paths `check` reads for the checkpoint at `path`, in reading order: its resume set
    (shardscan.resume: `path` itself for a file or a DCP directory; for any other directory its
    weights, in the one family a loader reads, and the other files its framework reads at
    resume). `index_shards`: the shard names the directory's indexes map, if the caller has
    read them; None reads them when the choice of family needs them. Raises OSError when the
    directory cannot be listed."""
    if index_shards is None and path.is_dir():
        index_shards = [name for index in _own_indexes(path)[0] for name in index.files]
    return resume_set(path, list(index_shards or ())).paths()


def _own_indexes(directory: Path) -> tuple[list[Layout], list[FileError]]:
    """The layouts of the shard indexes inside `directory`, and one error per index that
    cannot be read (a broken index is part of a broken checkpoint: a finding, not raised)."""
    indexes: list[Layout] = []
    errors: list[FileError] = []
    for index in layouts.find_indexes(directory):
        try:
            indexes.append(layouts.index_layout(index))
        except ValueError as exc:
            errors.append(FileError(index.name, str(exc).removeprefix(f"{index}: "), kind="layout"))
    return indexes, errors


def _scan(path: Path, options: CheckOptions, *, index_shards: Iterable[str] = (), label: str | None = None,
          given: ScanResult | None = None, roles: Collection[str] = (MODEL, STATE, OBJECTS)) -> _Actual:
    """Scans the resume set of a file or checkpoint directory (its members of `roles`) into an
    _Actual, with a note when a directory's other family of weights was left unread. `label`
    prefixes file names in errors (diff names both sides). `given`: a scan the caller already
    made of exactly files_to_scan(path), used instead of scanning."""
    from .scanner import scan_paths

    members = resume_set(path, list(index_shards))
    notes: list[str] = []
    if members.skipped:
        family = formats.family_suffix(members.paths(MODEL)[0].name) if members.paths(MODEL) else "?"
        notes.append(f"{path} also holds {', '.join(members.skipped)}: checked the {family} files only")
    if given is None:
        wanted = [m.path for m in members.members if m.role in roles]
        given = scan_paths(wanted, hash=options.hash, threads=options.threads, progress=options.progress)
    # Files given one by one are named by their path; show them relative, as a directory scan does.
    relabel = os.fspath(path) + os.sep if path.is_dir() else ""
    name_of = lambda n: n[len(relabel):] if relabel and n.startswith(relabel) else n  # noqa: E731
    # A file or a DCP directory is its own resume set: all of it is the model.
    whole = len(members.members) == 1 and members.members[0].path == path
    # A Megatron iteration's own DCP files (the member that is the directory) are its model.
    own = os.fspath(path)
    role = (lambda name: MODEL) if whole else (lambda name: MODEL if name == own else role_of(name))
    prefix = f"{label}/" if label and path.is_dir() else ""
    actual = _Actual(damaged=set(), errors=[], files=len(given.files), tensors=len(given.columns),
                     nbytes=sum(given.columns.nbytes), bytes_by_file={}, notes=notes)
    _collect_rows(actual, given, name_of, role)
    for problem in given.problems:
        file = name_of(problem.file)
        qualify = _qualifier(file, role(file))
        actual.damaged.update(qualify(k) for k in problem.cut + problem.lost)
        actual.errors.append(FileError(prefix + file, problem.error, tuple(problem.intact), tuple(problem.cut),
                                       tuple(problem.lost), kind=problem.kind))
    actual.errors += [FileError(prefix + file, error, kind=kind) for file, error, kind in members.problems]
    if actual.damaged:
        actual.damaged = {k for k in actual.damaged if k not in actual.specs and k not in actual.state_specs}
    return actual


#: Keys of a Lightning checkpoint that hold the trainer's bookkeeping, not the model or its
#: optimizer: ModelCheckpoint keeps `kth_value = inf` until a score exists.
_BOOKKEEPING = ("callbacks.", "loops.")


_FILE = attrgetter("file")
_SHAPE = attrgetter("shape")
_ABSENT = Spec()  # stands in for a key a side lacks: every field None


def _qualifier(file: str, role: str) -> Callable[[str], str]:
    """How keys of a file of this role are named in findings: weights by their own key, other
    files' tensors under the file ("optimizer.pt:state.0.exp_avg"), since their keys repeat."""
    return (lambda key: key) if role == MODEL else (lambda key: f"{file}:{key}")


def _collect_rows(actual: _Actual, result: ScanResult, name_of: Callable[[str], str],
                  role: Callable[[str], str]) -> None:
    """The scanned rows: the weights a file at a time (a key in two weight files is a
    duplicate), the other files' Specs by qualified key. A file's rows are contiguous (one
    listing each), so the weights are taken a file at a time; they are looked at row by row
    only when a key repeats (or a file's rows are not contiguous)."""
    columns = result.columns
    blocks = _file_blocks(columns.file, name_of)
    for start, end, name in blocks or ():
        if role(name) == MODEL:
            _collect_file(actual, _FileRows(columns, start, end, name))
    if blocks is not None and _distinct(actual.names()):
        rest = [range(start, end) for start, end, name in blocks if role(name) != MODEL]
    else:
        for found in (actual.weights, actual.bytes_by_file, actual.nonfinite, actual.zeros):
            found.clear()
        actual._specs, actual._names = {}, None
        rest = [range(len(columns.file))]
    for rows in rest:
        _collect_row_by_row(actual, columns, rows, name_of, role)


def _distinct(names: Names) -> bool:
    """Whether no name repeats: asked of the core, of a set when the core cannot carry them."""
    repeat = first_repeat(names)
    return repeat == len(names) if repeat is not None else len(set(names.items)) == len(names)


def _file_blocks(files: list[str], name_of: Callable[[str], str]) -> list[tuple[int, int, str]] | None:
    """(first row, end row, name) of each file's rows, or None when a file's rows are not
    contiguous."""
    order = list(dict.fromkeys(files))
    blocks = []
    start = 0
    for i, raw in enumerate(order):
        end = files.index(order[i + 1], start) if i + 1 < len(order) else len(files)
        if files[start:end].count(raw) != end - start:
            return None
        blocks.append((start, end, name_of(raw)))
        start = end
    return blocks


def _collect_file(actual: _Actual, rows: _FileRows) -> None:
    """The rows of one weight file, in bulk."""
    actual.weights.append(rows)
    keys, nbytes, name = rows.column("key"), rows.column("nbytes"), rows.file
    actual.bytes_by_file[name] = actual.bytes_by_file.get(name, 0) + sum(nbytes)
    # An unhashed scan leaves the value columns all None: list.count sees that at C speed.
    nan, inf, zero = rows.column("nan_count"), rows.column("inf_count"), rows.column("all_zero")
    if _any(nan) or _any(inf):
        actual.nonfinite += [NonFinite(key, name, n or 0, i or 0) for key, n, i in zip(keys, nan, inf)
                             if (n or i) and not key.startswith(_BOOKKEEPING)]
    if _any(zero):
        actual.zeros += [key for key, z, shape, size in zip(keys, zero, rows.column("shape"), nbytes)
                         if z and len(shape) >= 2 and size]


def _add_specs(specs: dict[str, Spec], rows: _FileRows) -> None:
    """The Specs of one weight file's rows, by key."""
    keys, dtypes, checksums = rows.column("key"), rows.column("dtype"), rows.column("checksum")
    shapes = list(map(tuple, rows.column("shape")))
    if _any(checksums):
        specs.update(zip(keys, map(Spec, dtypes, shapes, checksums, repeat(rows.file))))
    else:  # unhashed: one Spec per distinct (dtype, shape) of the file (Specs are frozen)
        specs.update(zip(keys, map(_SpecsOfFile(rows.file).__getitem__, zip(dtypes, shapes))))


class _SpecsOfFile(dict):
    """(dtype, shape) -> the Spec of the file's tensors of that dtype and shape, made when first
    asked for: one lookup per row, in C but for the first of each."""

    def __init__(self, file: str) -> None:
        super().__init__()
        self.file = file

    def __missing__(self, row: tuple[str, tuple[int, ...]]) -> Spec:
        spec = self[row] = Spec(*row, None, self.file)
        return spec


def _any(values: list) -> bool:
    """Whether a value column holds anything but None and False (the values of no finding)."""
    nones = values.count(None)  # by identity, so fast: an unhashed column is all None
    return nones != len(values) and nones + values.count(0) != len(values)  # 0 == False: counted once


def _collect_row_by_row(actual: _Actual, columns, rows: Iterable[int], name_of: Callable[[str], str],
                        role: Callable[[str], str]) -> None:
    for row in rows:
        key, dtype, shape, nbytes = columns.key[row], columns.dtype[row], columns.shape[row], columns.nbytes[row]
        nan, inf, zero = columns.nan_count[row], columns.inf_count[row], columns.all_zero[row]
        name = name_of(columns.file[row])
        actual.bytes_by_file[name] = actual.bytes_by_file.get(name, 0) + nbytes
        spec = Spec(dtype=dtype, shape=tuple(shape), checksum=columns.checksum[row], file=name)
        file_role = role(name)
        shown = _qualifier(name, file_role)(key)
        if (nan or inf) and not key.startswith(_BOOKKEEPING):
            actual.nonfinite.append(NonFinite(shown, name, nan or 0, inf or 0))
        if zero and len(shape) >= 2 and nbytes:
            actual.zeros.append(shown)
        if file_role != MODEL:
            actual.state_specs.setdefault(shown, spec)
        elif key in actual.specs:
            actual.duplicates.setdefault(key, [actual.specs[key].file or ""]).append(name)
        else:
            actual.specs[key] = spec


def _strip_specs(specs: dict[str, Spec], prefixes: Sequence[str]) -> dict[str, Spec]:
    if not prefixes:
        return specs
    out: dict[str, Spec] = {}
    for key, spec in specs.items():
        out.setdefault(layouts.strip_prefixes(key, prefixes), spec)
    return out


def _strip_layout(layout: Layout, prefixes: Sequence[str]) -> Layout:
    if not prefixes:
        return layout
    strip = lambda key: layouts.strip_prefixes(key, prefixes)  # noqa: E731 - local shorthand
    return Layout(
        kind=layout.kind, source=layout.source, specs=_strip_specs(layout.specs, prefixes),
        ties={strip(k): strip(v) for k, v in layout.ties.items()}, ignore_missing=layout.ignore_missing,
        ignore_unexpected=layout.ignore_unexpected, complete=layout.complete, files=layout.files,
        extra={strip(k) for k in layout.extra}, errors=layout.errors, warnings=layout.warnings,
        total_size=layout.total_size,
    )


def _lookup(layout: Layout, present: Mapping[str, Spec]) -> list[Spec]:
    """What `present` holds at each key of `layout`, in the layout's order (_ABSENT where it
    holds nothing): one pass of lookups that the key, field and index comparisons share."""
    return list(map(present.get, layout.specs, repeat(_ABSENT)))


def _known_fields(layout: Layout) -> list[str]:
    """The Spec fields the layout sets anywhere: only those can differ. Looked for among its
    distinct Specs (an index or a config shares a few among all its keys)."""
    distinct = dict(zip(map(id, layout.specs.values()), layout.specs.values())).values()
    return [f for f in ("shape", "dtype", "checksum") if any(map(is_not, map(attrgetter(f), distinct), repeat(None)))]


def _keys_against(layout: Layout, present: Mapping[str, Spec],
                  haves: list[Spec] | None = None) -> tuple[set[str], set[str]]:
    """(missing, unexpected) keys of `present` measured against `layout` (`haves`: its
    _lookup, when the caller has it). Tied keys form groups (a source and every target tied
    to it); like transformers' symmetric tying on load, one member present is enough for the
    whole group. The layout's ignore patterns are honoured."""
    absent = list(map(is_, _lookup(layout, present) if haves is None else haves, repeat(_ABSENT)))
    groups: dict[str, set[str]] = {}
    for target, source in layout.ties.items():
        groups.setdefault(source, {source}).add(target)
    group_of = {member: group for group in groups.values() for member in group}
    missing = set()
    for key in compress(layout.specs, absent):
        group = group_of.get(key)
        if group is not None and any(member in present for member in group):
            continue  # rebuilt from the member that is there
        if layout.ignore_missing is not None and layout.ignore_missing.search(key):
            continue
        missing.add(key)
    unexpected = {k for k in layout.extra if k in present}
    # Every present key the layout holds was found above: any others are outside it.
    if layout.complete and len(present) > len(absent) - absent.count(True):
        ignore = layout.ignore_unexpected
        unexpected.update(k for k in present.keys() - layout.specs.keys() if not (ignore is not None and ignore.search(k)))
    return missing, unexpected


def _mismatches(layout: Layout, actual: dict[str, Spec], out: dict[tuple[str, str], Mismatch],
                haves: list[Spec] | None = None, known: list[str] | None = None) -> None:
    """Adds shape, dtype and checksum differences (`haves`, `known`: the _lookup of `actual`
    and the _known_fields of `layout`, when the caller has them). A checksum is compared only
    when both sides have one and shape and dtype agree (a changed dtype changes every byte:
    one finding is enough)."""
    # Only the fields the layout knows can differ (an index's: none), and only at keys where
    # they differ at all: both found in bulk, then each candidate judged as before.
    known = _known_fields(layout) if known is None else known
    if not known:
        return
    fields = attrgetter(*known)
    wants = list(layout.specs.values())
    haves = _lookup(layout, actual) if haves is None else haves  # _ABSENT differs in nothing below
    for key, want, have in compress(zip(layout.specs, wants, haves), map(ne, map(fields, wants), map(fields, haves))):
        changed = False
        if want.shape is not None and have.shape is not None and want.shape != have.shape:
            out.setdefault((key, "shape"), Mismatch(key, "shape", want.shape, have.shape))
            changed = True
        if want.dtype is not None and have.dtype is not None and want.dtype != have.dtype:
            out.setdefault((key, "dtype"), Mismatch(key, "dtype", want.dtype, have.dtype))
            changed = True
        if not changed and want.checksum and have.checksum and want.checksum != have.checksum:
            out.setdefault((key, "checksum"), Mismatch(key, "checksum", want.checksum, have.checksum))


def _moved(layout: Layout, actual: _Actual, haves: list[Spec], whole_directory: bool) -> dict[tuple[str, str], list[str]]:
    """(shard the index names, file the key is in) -> keys, in the index's order, of every
    key found in another file than its index says (`haves`: the _lookup of actual.specs)."""
    # a file checked alone is named as given; the index names it relative to its directory
    found_in = list(map(_FILE, haves))
    if not whole_directory:
        shown = {f: os.path.basename(f or "") or "?" for f in set(found_in)}
        found_in = list(map(shown.__getitem__, found_in))
    named_in = list(map(_FILE, layout.specs.values()))
    moved: dict[tuple[str, str], list[str]] = {}
    for key, named, found in compress(zip(layout.specs, named_in, found_in), map(ne, named_in, found_in)):
        if named is not None and key in actual.specs:
            moved.setdefault((named, found or "?"), []).append(key)
    return moved


def _index_in_c(layout: Layout, actual: _Actual) -> tuple[set[str], set[str], dict[tuple[str, str], list[str]]] | None:
    """(missing, unexpected, moved) of the checkpoint's weights against an index the core
    holds, measured in C without a Python object per index key: what _keys_against and _moved
    find for an index (no ties, no ignore patterns, complete), for a whole directory. None
    when the core cannot (no index held, or a key holding a NUL)."""
    index = layout.index if isinstance(layout, layouts.IndexLayout) else None
    if index is None:
        return None
    number = {shard: i for i, shard in enumerate(index.shards)}
    for file in actual.bytes_by_file:  # every file a Spec names
        number.setdefault(file, len(number))
    names = list(number)
    keys = actual.names()
    if actual._specs is None:
        file_of = list(chain.from_iterable(repeat(number[r.file], r.end - r.start) for r in actual.weights))
    else:
        file_of = list(map(number.__getitem__, map(_FILE, actual.specs.values())))
    compared = index.compare(keys, file_of)
    if compared is None:
        return None
    state, found_in, listed = compared
    missing = {index.key(k) for k in _positions(state, 0)}
    unexpected = {keys.items[i] for i in _positions(listed, 0)}
    moved: dict[tuple[str, str], list[str]] = {}
    for k in _positions(state, 2):  # in the index's order
        moved.setdefault((index.shards[index.shard_of[k]], names[found_in[k]] or "?"), []).append(index.key(k))
    return missing, unexpected, moved


def _positions(values: bytes, value: int) -> list[int]:
    """Where `value` occurs in `values`, found by bytes.find (C) rather than a Python loop."""
    out, at = [], values.find(value)
    while at >= 0:
        out.append(at)
        at = values.find(value, at + 1)
    return out


def _index_findings(layout: Layout, actual: _Actual, moved: dict[tuple[str, str], list[str]], directory: Path,
                    index_name: str, whole_directory: bool) -> tuple[list[FileError], list[str]]:
    """What only an index can be wrong about: shards it names that are absent, gaps in a
    `-0000i-of-0000N` series, keys found in a shard other than the one it names (`moved`:
    (named, found in) -> keys), and a `metadata.total_size` that disagrees with the tensors'
    bytes (a warning)."""
    errors: list[FileError] = []
    warnings: list[str] = []
    on_disk = {p.name for p in directory.iterdir()}
    absent = [name for name in layout.files if name not in on_disk]
    index = layout.index if isinstance(layout, layouts.IndexLayout) else None
    for name in absent:
        if index is not None:
            count = index.shard_of.count(index.shards.index(name))
        else:
            count = sum(1 for spec in layout.specs.values() if spec.file == name)
        errors.append(FileError(name, f"absent: {index_name} maps {count} tensors to it", kind="absent"))
    # a single file checked alone says nothing about its neighbours' series
    named_or_present = set(layout.files) | {n for n in on_disk if formats.is_tensor_file_name(n)}
    for name, series in layouts.series_gaps(named_or_present) if whole_directory else ():
        if name not in absent:
            errors.append(FileError(name, f"absent: the series {series} has a gap here", kind="absent"))
    for (named, found), keys in sorted(moved.items()):
        errors.append(FileError(
            index_name, f"maps {len(keys)} tensors to {named} but they are in {found}: {', '.join(families(keys))}",
            kind="misplaced",
        ))
    if layout.total_size is not None and whole_directory and not absent and not actual.damaged:
        held = sum(actual.bytes_by_file.get(name, 0) for name in layout.files)
        if held != layout.total_size:
            warnings.append(f"{index_name}: metadata.total_size is {layout.total_size} but its shards hold {held} tensor bytes")
    return errors, warnings


def _prefix_note(layout: Layout, present: dict[str, Spec], base: tuple[set[str], set[str]], path: str,
                 user: tuple[str, ...]) -> str | None:
    """One line when stripping a known prefix (or pair) from both sides makes the keys match
    `layout` markedly better than they do now: at most a quarter of the findings remain."""
    before = len(base[0]) + len(base[1])
    if not base[0] or not base[1]:
        return None
    best: tuple[int, tuple[str, ...]] | None = None
    for candidate in layouts.prefix_candidates():
        prefixes = user + candidate
        stripped = _strip_layout(layout, candidate)
        missing, unexpected = _keys_against(stripped, _strip_specs(present, candidate))
        after = len(missing) + len(unexpected)
        if after * 4 <= before and (best is None or after < best[0]):
            best = (after, prefixes)
    if best is None:
        return None
    flags = " ".join(f"--strip-prefix {p}" for p in best[1])
    outcome = "the keys match" if best[0] == 0 else f"{best[0]} differences remain (of {before})"
    return f"keys of {path} and {layout.source} differ by the prefix {''.join(best[1][len(user):])!r}: with {flags} {outcome}"


def _plan(root: Path, against: Path | None, own_indexes: list[Layout], options: CheckOptions,
          weight_columns: Callable[[], tuple[Sequence[str], list]],
          errors: list[FileError]) -> tuple[list[Layout], list[str]]:
    """The layouts to check against and notes on how they were chosen (see the module doc):
    without `against`, what the checkpoint declares (its indexes, manifest and config.json);
    with it, what it names; and the `model` option's module."""
    found: list[Layout] = list(own_indexes)
    notes: list[str] = []
    config: tuple[Path, bool] | None = None  # (config.json, named by `against`)
    if against is None:
        manifest = layouts.find_manifest(root)
        if manifest is not None:
            try:
                layout = layouts.manifest_layout(manifest, root)
            except (ValueError, OSError, NotImplementedError) as exc:  # pyarrow's errors derive from these
                # The checkpoint's own manifest is part of it: a broken one is a finding.
                errors.append(FileError(manifest.name, f"unreadable manifest: {str(exc).removeprefix(f'{manifest}: ')}",
                                        kind="layout"))
            else:
                found.append(_resume_manifest(layout) if root.is_dir() else layout)
    if against is None and root.is_dir():
        if (root / "config.json").is_file():
            config = (root / "config.json", False)
    elif against is not None:
        kind = layouts.classify(against)
        if kind == "config":
            config = (against / "config.json" if against.is_dir() else against, True)
        else:
            found.append(_named_layout(kind, against, root, options))
    if config is not None:
        try:
            layout, note = _config_layout(*config, options, weight_columns)
        except ValueError as exc:
            if config[1]:
                raise  # named by --against: a usage error
            # The checkpoint's own config.json is part of it: a broken one is a finding.
            errors.append(FileError(config[0].name, str(exc).removeprefix(f"{config[0]}: "), kind="layout"))
        else:
            found.append(layout)
            notes += [note] if note else []
    if options.model is not None:
        found.append(layouts.model_layout(options.model))
    return found, notes


def _resume_manifest(layout: Layout) -> Layout:
    """A manifest of a checkpoint directory, its rows named as _scan names them: tensors of
    files other than the weights under their file."""
    specs: dict[str, Spec] = {}
    for key, spec in layout.specs.items():
        file = spec.file or ""
        specs.setdefault(_qualifier(file, role_of(file) if file else MODEL)(key), spec)
    layout.specs = specs
    return layout


def _named_layout(kind: str, against: Path, root: Path, options: CheckOptions) -> Layout:
    """The layout of an `against` source that is no config: an index, a manifest or a
    reference checkpoint."""
    if kind == "index":
        index = layouts.index_layout(against)
        if not root.is_dir():
            # one shard checked against a whole index: only what the index puts in it
            index.specs = {k: spec for k, spec in index.specs.items() if spec.file == root.name}
            index.files = (root.name,)
        return index
    if kind == "manifest":
        manifest = layouts.find_manifest(against) if against.is_dir() else against
        assert manifest is not None, "classify() says the directory holds a manifest"
        layout = layouts.manifest_layout(manifest, root)
        return _resume_manifest(layout) if root.is_dir() else layout
    return _reference_layout(against, options)


def _config_layout(config_path: Path, named: bool, options: CheckOptions,
                   weight_columns: Callable[[], tuple[Sequence[str], list]]) -> tuple[Layout, str | None]:
    """The layout a config.json declares: built by transformers when options.hf asks for it
    (None: when the config was named by `against`) and it can, else the structural check.
    Returns the layout and a note when transformers was wanted but not used."""
    config = layouts.read_config(config_path)
    use_hf = options.hf if options.hf is not None else named
    if not use_hf:
        return layouts.structural_layout(config, *weight_columns(), config_path.name), None
    note = None
    if not layouts.transformers_available():
        if options.hf:
            raise ImportError("transformers is not installed: pip install 'shardscan[hf]' (or drop --hf)")
        note = "transformers is not installed: structural check of config.json only"
    else:
        try:
            return layouts.transformers_layout(config_path), None
        except Exception as exc:  # e.g. a model_type this transformers lacks, or custom code
            if options.hf and not isinstance(exc, layouts.RenamedOnLoad):
                raise
            note = f"transformers could not build the model of {config_path.name} ({exc}): structural check only"
    return layouts.structural_layout(config, *weight_columns(), config_path.name), note


def _reference_layout(path: Path, options: CheckOptions) -> Layout:
    """A reference checkpoint: its keys, dtypes, shapes (and checksums when hashed); its own
    unreadable files become errors of this layout, named under the reference's path."""
    reading = CheckOptions(hash=options.hash and options.checksums, threads=options.threads)
    ref = _scan(path, reading, label=os.fspath(path), roles=(MODEL,))
    layout = Layout(kind="reference", source=f"reference {path}", specs=ref.specs)
    layout.errors = [(e.file, e.error, e.kind) for e in ref.errors]
    return layout


@dataclass
class _Findings:
    """What comparing a checkpoint with its layouts found."""

    missing: set[str]
    unexpected: set[str] = field(default_factory=set)
    mismatched: dict[tuple[str, str], Mismatch] = field(default_factory=dict)
    errors: list[FileError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _present(actual: _Actual, prefixes: tuple[str, ...], whole: bool) -> dict[str, Spec]:
    """key -> Spec of what a layout is measured against: the weights (their keys stripped of
    `prefixes`), with every other file's tensors too when `whole` (a manifest's)."""
    weights = _strip_specs(actual.specs, prefixes)
    return {**weights, **actual.state_specs} if whole else weights


def _compare(found: list[Layout], actual: _Actual, root: Path, path: str, options: CheckOptions) -> _Findings:
    """Measures the checkpoint against every layout."""
    prefixes = options.strip_prefix
    out = _Findings(missing={layouts.strip_prefixes(k, prefixes) for k in actual.damaged}, errors=list(actual.errors))
    compared_checksums = False
    for raw in found:
        layout = _strip_layout(raw, prefixes)
        # A manifest covers the whole resume set; every other layout describes the weights.
        whole = layout.kind == "manifest" and bool(actual.state_specs)
        # Unprefixed, the checkpoint's own index is measured in C and a config's blocks block by
        # block (neither has fields but shapes to compare); any other layout key by key, and
        # only those need a Spec per key.
        own = not prefixes and not whole
        in_c = _index_in_c(raw, actual) if own and root.is_dir() else None
        by_block = raw.block_findings() if own and isinstance(raw, layouts.BlockLayout) else None
        present = _present(actual, prefixes, whole) if in_c is None and by_block is None else None
        if in_c is not None:
            lost, extra, moved = in_c
        elif by_block is not None:
            lost, changed = by_block
            extra = {k for k in layout.extra if k in actual.specs} if layout.extra else set()
            for key, want, have in changed:
                out.mismatched.setdefault((key, "shape"), Mismatch(key, "shape", want, have))
        else:
            haves = _lookup(layout, present)
            lost, extra = _keys_against(layout, present, haves)
            known = _known_fields(layout)
            _mismatches(layout, present, out.mismatched, haves, known)
            compared_checksums |= "checksum" in known
        out.missing |= lost
        out.unexpected |= extra
        out.errors += [FileError(file, error, kind=kind) for file, error, kind in layout.errors]
        out.warnings += layout.warnings
        if layout.kind == "index":
            if in_c is None:
                own_haves = haves if layout is raw and present is actual.specs else _lookup(raw, actual.specs)
                moved = _moved(raw, actual, own_haves, root.is_dir())
            index_errors, index_warnings = _index_findings(raw, actual, moved, root if root.is_dir() else root.parent,
                                                           raw.source.removeprefix("index "), root.is_dir())
            out.errors += index_errors
            out.warnings += index_warnings
        if layout.complete and lost and extra:
            note = _prefix_note(layout, present or _present(actual, prefixes, whole), (lost, extra), path, prefixes)
            if note:
                out.notes.append(note)
    if (compared_checksums or options.checksums) and not options.hash:
        out.warnings.append("checksums not compared (--no-hash)")
    if actual.zeros:
        # LoRA's B matrices start at zero, so alone this is no proof of damage; --strict makes it one.
        zeros = f"all-zero tensors (rank >= 2, as preallocated or sparse files leave them): {', '.join(families(actual.zeros))}"
        if options.strict:
            out.errors.append(FileError(path, zeros, kind="zero-tensors"))
        else:
            out.warnings.append(zeros)
    for key, files in sorted(actual.duplicates.items()):
        out.errors.append(FileError(files[-1], f"holds {key!r}, which {files[0]} holds too", kind="duplicate"))
    # The markers discovery reads (trainer_state.json written last, DCP's .metadata): check and
    # audit give one directory one verdict.
    out.errors += [FileError(path, marker, kind="unfinished") for marker in markers(root)]
    if actual.files == 0 and not actual.errors and not any(layout.kind == "index" for layout in found):
        # an interrupted save can leave config.json and nothing else: that is not "OK"
        out.errors.append(FileError(path, "no tensor files found", kind="absent"))
    return out


@_gc.paused()
def check(
    path: PathLike,
    against: PathLike | None = None,
    *,
    hash: bool = True,
    threads: int | None = None,
    strip_prefix: str | Sequence[str] | None = None,
    checksums: bool = False,
    model: str | None = None,
    hf: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
    scan: ScanResult | None = None,
    strict: bool = False,
    sha256: bool | None = None,
) -> Report:
    """Checks the checkpoint at `path` (a tensor file or directory) against its expected
    layouts and returns a Report; problems in the checkpoint are findings, never raised.

    `against`: an index, manifest, reference checkpoint or config.json (see the module doc).
    `hash`: hash tensor bytes (needed to compare manifest checksums and verify torch CRCs).
    `strip_prefix`: prefix(es) removed, in order, from every key on both sides.
    `checksums`: also compare checksums with a reference checkpoint.
    `model`: "module:factory" of a torch.nn.Module to build on the meta device.
    `hf`: build config layouts with transformers (None: only for a config named by `against`).
    `strict`: all-zero tensors of rank >= 2 are problems, not warnings (NaN and Inf always are).
    `sha256`: verify whole files against the digests their download published (a hub cache,
    local_dir metadata, SHA256SUMS, model.sig): None when one exists, False never, True
    always (with no source, every file is still digested).
    `scan`: a scan the caller made of exactly `files_to_scan(path)` (with `hash` saying
    whether it hashed; ScanResult.select cuts one out of a larger scan), used instead of
    scanning again; its file names may be relative to `path` or carry `path` as their prefix.

    Raises FileNotFoundError when `path` or `against` does not exist, ValueError for an
    `against` that is no known layout source, ImportError when `hf=True` or `model` needs a
    package that is not installed."""
    started = time.perf_counter()
    options = CheckOptions(hash=hash, threads=threads, strip_prefix=CheckOptions.prefixes(strip_prefix),
                           checksums=checksums, model=model, hf=hf, progress=progress, strict=strict,
                           sha256=sha256)
    for given in (path, against):
        if given is not None and not Path(given).exists():
            raise FileNotFoundError(f"{given}: no such file or directory")
    root = Path(path)
    against_path = Path(against) if against is not None else None

    # The checkpoint's own indexes: read first, since they say which format family to scan.
    own_indexes, index_errors = _own_indexes(root) if root.is_dir() else ([], [])
    actual = _scan(root, options, index_shards=[name for index in own_indexes for name in index.files], given=scan)
    actual.errors += index_errors
    found, notes = _plan(root, against_path, own_indexes, options, lambda: _weight_columns(actual, options.strip_prefix),
                         actual.errors)
    findings = _compare(found, actual, root, os.fspath(path), options)
    _published_digests(root, actual, findings, options)
    return Report(
        path=os.fspath(path),
        against=os.fspath(against) if against is not None else None,
        files=actual.files,
        tensors=actual.tensors,
        bytes=actual.nbytes,
        missing=tuple(natural_sorted(findings.missing)),
        unexpected=tuple(natural_sorted(findings.unexpected - findings.missing)),
        mismatched=tuple(findings.mismatched.values()),
        errors=tuple(_merge_errors(findings.errors)),
        warnings=tuple(dict.fromkeys(findings.warnings)),
        notes=tuple(dict.fromkeys(notes + actual.notes + findings.notes)),
        layouts=tuple(layout.source for layout in found),
        strip_prefix=options.strip_prefix,
        elapsed=time.perf_counter() - started,
        nonfinite=tuple(actual.nonfinite),
    )


def _weight_columns(actual: _Actual, prefixes: tuple[str, ...]) -> tuple[Names | list[str], list[tuple[int, ...] | None]]:
    """The weights' keys (stripped of `prefixes`) and their shapes, for the structural check."""
    if not prefixes:
        return actual.names(), actual.shapes()
    specs = _strip_specs(actual.specs, prefixes)
    return list(specs), list(map(_SHAPE, specs.values()))


def _published_digests(root: Path, actual: _Actual, findings: _Findings, options: CheckOptions) -> None:
    """Whole files against the digests their download published (shardscan.digests); a file
    that fails also names the tensors a manifest found changed in it."""
    from .digests import check_published

    outcome = check_published(root, options.sha256, hash=options.hash, threads=options.threads,
                              progress=options.progress)
    changed: dict[str, list[str]] = {}
    checksums = [key for key, kind in findings.mismatched if kind == "checksum"]
    if outcome.errors and checksums:  # only then: the lookup copies every Spec
        present = {**_strip_specs(actual.specs, options.strip_prefix), **actual.state_specs}
        for key in checksums:
            spec = present.get(key)
            if spec is not None and spec.file:
                changed.setdefault(spec.file, []).append(key)
    for file, error, kind in outcome.errors:
        keys = changed.get(file)
        tensors = f"; tensors whose checksum differs from the manifest: {', '.join(families(keys))}" if keys else ""
        findings.errors.append(FileError(file, error + tensors, kind=kind))
    findings.warnings += outcome.warnings
    findings.notes += outcome.notes


def _merge_errors(errors: list[FileError]) -> list[FileError]:
    """One entry per (file, error): a shard both absent from disk and in a series gap, or
    named by two layouts, is reported once."""
    seen: dict[tuple[str, str], FileError] = {}
    for error in errors:
        seen.setdefault((error.file, error.error), error)
    return list(seen.values())


def diff(
    a: PathLike,
    b: PathLike,
    *,
    hash: bool = True,
    threads: int | None = None,
    strip_prefix: str | Sequence[str] | None = None,
    strip_prefix_a: str | Sequence[str] | None = None,
    strip_prefix_b: str | Sequence[str] | None = None,
) -> Diff:
    """Compares two checkpoints (files or directories, any formats): keys only in A, only in
    B, and tensors whose shape, dtype or checksum changed. Checksums are format-independent,
    so a .bin and its safetensors conversion compare equal when no tensor changed.
    `hash=False` compares keys, shapes and dtypes only. `strip_prefix` is removed from the keys
    of both sides, `strip_prefix_a` / `_b` from one side only (a `{"model": state_dict}` save
    against a bare state dict). Raises FileNotFoundError when either path does not exist."""
    started = time.perf_counter()
    for given in (a, b):
        if not Path(given).exists():
            raise FileNotFoundError(f"{given}: no such file or directory")
    prefixes = CheckOptions.prefixes(strip_prefix)
    options = CheckOptions(hash=hash, threads=threads, strip_prefix=prefixes)
    left = _scan(Path(a), options, label=os.fspath(a), roles=(MODEL,))
    right = _scan(Path(b), options, label=os.fspath(b), roles=(MODEL,))
    a_specs = _strip_specs(left.specs, prefixes + CheckOptions.prefixes(strip_prefix_a))
    b_specs = _strip_specs(right.specs, prefixes + CheckOptions.prefixes(strip_prefix_b))
    as_layout = Layout(kind="reference", source=os.fspath(a), specs=a_specs)
    changed: dict[tuple[str, str], Mismatch] = {}
    _mismatches(as_layout, b_specs, changed)
    # A tensor a truncation destroyed in B is simply not in B: it lands in only_a when A holds
    # it, and the file error says why.
    only_a = a_specs.keys() - b_specs.keys()
    only_b = b_specs.keys() - a_specs.keys()
    notes = left.notes + right.notes
    note = _prefix_note(as_layout, b_specs, (set(only_a), set(only_b)), os.fspath(b), prefixes)
    if note:
        notes.append(note)
    errors = left.errors + right.errors
    for side, actual in ((a, left), (b, right)):
        for key, files in sorted(actual.duplicates.items()):
            errors.append(FileError(files[-1], f"holds {key!r}, which {files[0]} holds too", kind="duplicate"))
    common = a_specs.keys() & b_specs.keys()
    changed_keys = {key for key, _ in changed}
    return Diff(
        a=os.fspath(a),
        b=os.fspath(b),
        files=(left.files, right.files),
        tensors=(left.tensors, right.tensors),
        only_a=tuple(natural_sorted(only_a)),
        only_b=tuple(natural_sorted(only_b)),
        changed=tuple(changed.values()),
        unchanged=len(common - changed_keys),
        errors=tuple(_merge_errors(errors)),
        notes=tuple(dict.fromkeys(notes)),
        checksums=hash,
        strip_prefix=prefixes,
        elapsed=time.perf_counter() - started,
    )
