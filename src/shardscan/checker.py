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
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

from . import formats
from . import layout as layouts
from ._typing import PathLike
from .layout import Layout, Spec
from .report import Diff, FileError, Mismatch, Report, families, natural_sorted

if TYPE_CHECKING:
    from .scanner import ScanResult


@dataclass
class _Actual:
    """The checkpoint as scanned: key -> Spec of each intact tensor, keys whose bytes are gone
    (cut or lost by a truncation), and everything reported per file."""

    specs: dict[str, Spec]
    damaged: set[str]
    errors: list[FileError]
    files: int
    tensors: int
    nbytes: int
    bytes_by_file: dict[str, int]
    duplicates: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _normalize_prefixes(strip_prefix: str | Sequence[str] | None) -> tuple[str, ...]:
    if strip_prefix is None:
        return ()
    if isinstance(strip_prefix, str):
        return (strip_prefix,) if strip_prefix else ()
    return tuple(p for p in strip_prefix if p)


def files_to_scan(path: Path, index_shards: Iterable[str] | None = None) -> list[Path]:
    """The paths `check` reads for the checkpoint at `path`, in reading order: `path` itself
    for a file or a DCP directory (read as a whole); for any other directory its tensor files
    (shardscan.formats.tensor_files). Of a directory holding more than one family of them
    (model.safetensors beside pytorch_model.bin, as many hub repositories do) only one family
    is read, since a loader reads only one: the family its index names, else the preferred
    one (shardscan.formats.family_of). `index_shards`: the shard names the directory's indexes map, if the caller
    has read them; None reads them when the choice needs them (an unreadable index names
    nothing). Raises OSError when the directory cannot be listed."""
    if not path.is_dir() or formats.directory_format(path):
        return [path]
    files = formats.tensor_files(path)
    present = {formats.family_of(file.name) for file in files}
    if len(present) <= 1:
        return files
    if index_shards is None:
        index_shards = [name for index in _own_indexes(path)[0] for name in index.files]
    wanted = {formats.family_of(name) for name in index_shards} & present
    chosen = min(wanted or present)
    return [file for file in files if formats.family_of(file.name) == chosen]


def _own_indexes(directory: Path) -> tuple[list[Layout], list[FileError]]:
    """The layouts of the shard indexes inside `directory`, and one error per index that
    cannot be read (a broken index is part of a broken checkpoint: a finding, not raised)."""
    indexes: list[Layout] = []
    errors: list[FileError] = []
    for index in layouts.find_indexes(directory):
        try:
            indexes.append(layouts.index_layout(index))
        except ValueError as exc:
            errors.append(FileError(index.name, str(exc).removeprefix(f"{index}: ")))
    return indexes, errors


def _scan(path: Path, *, hash: bool, threads: int | None, progress: Callable[[int, int], None] | None,
          index_shards: Iterable[str] = (), label: str | None = None, given: ScanResult | None = None) -> _Actual:
    """Scans the files_to_scan of a file or checkpoint directory into an _Actual, with a note
    when a directory's other family of tensor files was left unread. `label` prefixes file
    names in errors (diff names both sides). `given`: a scan the caller already made of
    exactly those files, used instead of scanning."""
    from .scanner import scan_paths

    notes: list[str] = []
    targets = files_to_scan(path, index_shards)
    # Files given one by one are named by their path; show them relative, as a directory scan does.
    relabel = os.fspath(path) + os.sep if path.is_dir() else ""
    if targets != [path]:
        chosen = set(targets)
        skipped = [file.name for file in formats.tensor_files(path) if file not in chosen]
        if skipped:
            notes.append(f"{path} also holds {', '.join(skipped)}: checked the {formats.family_suffix(targets[0].name)} "
                         "files only")
    result = given if given is not None else scan_paths(targets, hash=hash, threads=threads, progress=progress)
    columns = result.columns
    names = columns.file
    if relabel:
        names = [n[len(relabel):] if n.startswith(relabel) else n for n in names]
    prefix = f"{label}/" if label and path.is_dir() else ""
    specs: dict[str, Spec] = {}
    duplicates: dict[str, list[str]] = {}
    bytes_by_file: dict[str, int] = {}
    for key, dtype, shape, checksum, name, nbytes in zip(
        columns.key, columns.dtype, columns.shape, columns.checksum, names, columns.nbytes
    ):
        bytes_by_file[name] = bytes_by_file.get(name, 0) + nbytes
        if key in specs:
            duplicates.setdefault(key, [specs[key].file or ""]).append(name)
            continue
        specs[key] = Spec(dtype=dtype, shape=tuple(shape), checksum=checksum, file=name)
    damaged: set[str] = set()
    errors = []
    for problem in result.problems:
        damaged.update(problem.cut)
        damaged.update(problem.lost)
        file = problem.file[len(relabel):] if relabel and problem.file.startswith(relabel) else problem.file
        errors.append(FileError(prefix + file, problem.error, tuple(problem.intact), tuple(problem.cut), tuple(problem.lost)))
    return _Actual(
        specs=specs, damaged=damaged - set(specs), errors=errors, files=len(result.files), tensors=len(columns),
        nbytes=sum(columns.nbytes), bytes_by_file=bytes_by_file, duplicates=duplicates, notes=notes,
    )


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


def _keys_against(layout: Layout, present: Mapping[str, Spec]) -> tuple[set[str], set[str]]:
    """(missing, unexpected) keys of `present` measured against `layout`. Tied keys form
    groups (a source and every target tied to it); like transformers' symmetric tying on load,
    one member present is enough for the whole group. The layout's ignore patterns are honoured."""
    groups: dict[str, set[str]] = {}
    for target, source in layout.ties.items():
        groups.setdefault(source, {source}).add(target)
    group_of = {member: group for group in groups.values() for member in group}
    missing = set()
    for key in layout.specs.keys() - present.keys():
        group = group_of.get(key)
        if group is not None and any(member in present for member in group):
            continue  # rebuilt from the member that is there
        if layout.ignore_missing is not None and layout.ignore_missing.search(key):
            continue
        missing.add(key)
    unexpected = {k for k in layout.extra if k in present}
    if layout.complete:
        ignore = layout.ignore_unexpected
        unexpected.update(k for k in present if k not in layout.specs and not (ignore is not None and ignore.search(k)))
    return missing, unexpected


def _mismatches(layout: Layout, actual: dict[str, Spec], out: dict[tuple[str, str], Mismatch]) -> None:
    """Adds shape, dtype and checksum differences. A checksum is compared only when both sides
    have one and shape and dtype agree (a changed dtype changes every byte: one finding is enough)."""
    for key, want in layout.specs.items():
        have = actual.get(key)
        if have is None:
            continue
        changed = False
        if want.shape is not None and have.shape is not None and want.shape != have.shape:
            out.setdefault((key, "shape"), Mismatch(key, "shape", want.shape, have.shape))
            changed = True
        if want.dtype is not None and have.dtype is not None and want.dtype != have.dtype:
            out.setdefault((key, "dtype"), Mismatch(key, "dtype", want.dtype, have.dtype))
            changed = True
        if not changed and want.checksum and have.checksum and want.checksum != have.checksum:
            out.setdefault((key, "checksum"), Mismatch(key, "checksum", want.checksum, have.checksum))


def _index_findings(layout: Layout, actual: _Actual, directory: Path, index_name: str,
                    whole_directory: bool) -> tuple[list[FileError], list[str]]:
    """What only an index can be wrong about: shards it names that are absent, gaps in a
    `-0000i-of-0000N` series, keys found in a shard other than the one it names, and a
    `metadata.total_size` that disagrees with the tensors' bytes (a warning)."""
    errors: list[FileError] = []
    warnings: list[str] = []
    on_disk = {p.name for p in directory.iterdir()}
    absent = [name for name in layout.files if name not in on_disk]
    for name in absent:
        count = sum(1 for spec in layout.specs.values() if spec.file == name)
        errors.append(FileError(name, f"absent: {index_name} maps {count} tensors to it"))
    # a single file checked alone says nothing about its neighbours' series
    named_or_present = set(layout.files) | {n for n in on_disk if formats.is_tensor_file_name(n)}
    for name, series in layouts.series_gaps(named_or_present) if whole_directory else ():
        if name not in absent:
            errors.append(FileError(name, f"absent: the series {series} has a gap here"))
    moved: dict[tuple[str, str], list[str]] = {}
    for key, spec in layout.specs.items():
        have = actual.specs.get(key)
        if have is None or spec.file is None:
            continue
        # a file checked alone is named as given; the index names it relative to its directory
        found = (have.file if whole_directory else os.path.basename(have.file or "")) or "?"
        if found != spec.file:
            moved.setdefault((spec.file, found), []).append(key)
    for (named, found), keys in sorted(moved.items()):
        errors.append(FileError(
            index_name, f"maps {len(keys)} tensors to {named} but they are in {found}: {', '.join(families(keys))}"
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


def _collect_layouts(root: Path, against: Path | None, own_indexes: list[Layout], *, hash: bool, threads: int | None, checksums: bool,
                     model: str | None, hf: bool | None, actual_shapes: Callable[[], dict[str, tuple[int, ...] | None]]
                     ) -> tuple[list[Layout], list[str]]:
    """The layouts to check against and notes on how they were chosen (see the module doc)."""
    found: list[Layout] = list(own_indexes)
    notes: list[str] = []
    directory = root if root.is_dir() else None
    config_path: Path | None = None
    explicit_config = False
    if against is None and directory is not None:
        manifest = layouts.find_manifest(directory)
        if manifest is not None:
            found.append(layouts.manifest_layout(manifest))
        if (directory / "config.json").is_file():
            config_path = directory / "config.json"
    elif against is not None:
        kind = layouts.classify(against)
        if kind == "index":
            index = layouts.index_layout(against)
            if directory is None:
                # one shard checked against a whole index: only what the index puts in it
                index.specs = {k: spec for k, spec in index.specs.items() if spec.file == root.name}
                index.files = (root.name,)
            found.append(index)
        elif kind == "manifest":
            found.append(layouts.manifest_layout(layouts.find_manifest(against) if against.is_dir() else against))  # type: ignore[arg-type]
        elif kind == "config":
            config_path = against / "config.json" if against.is_dir() else against
            explicit_config = True
        else:
            found.append(_reference_layout(against, hash=hash and checksums, threads=threads))
    if config_path is not None:
        config = layouts.read_config(config_path)
        use_hf = hf if hf is not None else explicit_config
        built = None
        if use_hf and layouts.transformers_available():
            try:
                built = layouts.transformers_layout(config_path)
            except Exception as exc:  # e.g. a model_type this transformers lacks, or custom code
                if hf and not isinstance(exc, layouts.RenamedOnLoad):
                    raise
                notes.append(f"transformers could not build the model of {config_path.name} ({exc}): structural check only")
        if built is not None:
            found.append(built)
        else:
            if use_hf and not layouts.transformers_available():
                if hf:
                    raise ImportError("transformers is not installed: pip install 'shardscan[hf]' (or drop --hf)")
                notes.append("transformers is not installed: structural check of config.json only")
            found.append(layouts.structural_layout(config, actual_shapes(), config_path.name))
    if model is not None:
        found.append(layouts.model_layout(model))
    return found, notes


def _reference_layout(path: Path, *, hash: bool, threads: int | None) -> Layout:
    """A reference checkpoint: its keys, dtypes, shapes (and checksums when hashed); its own
    unreadable files become errors of this layout, named under the reference's path."""
    ref = _scan(path, hash=hash, threads=threads, progress=None, label=os.fspath(path))
    layout = Layout(kind="reference", source=f"reference {path}", specs=ref.specs)
    layout.errors = [(e.file, e.error) for e in ref.errors]
    return layout


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
) -> Report:
    """Checks the checkpoint at `path` (a tensor file or directory) against its expected
    layouts and returns a Report; problems in the checkpoint are findings, never raised.

    `against`: an index, manifest, reference checkpoint or config.json (see the module doc).
    `hash`: hash tensor bytes (needed to compare manifest checksums and verify torch CRCs).
    `strip_prefix`: prefix(es) removed, in order, from every key on both sides.
    `checksums`: also compare checksums with a reference checkpoint.
    `model`: "module:factory" of a torch.nn.Module to build on the meta device.
    `hf`: build config layouts with transformers (None: only for a config named by `against`).
    `scan`: a scan the caller made of exactly `files_to_scan(path)` (with `hash` saying
    whether it hashed; ScanResult.select cuts one out of a larger scan), used instead of
    scanning again; its file names may be relative to `path` or carry `path` as their prefix.

    Raises FileNotFoundError when `path` or `against` does not exist, ValueError for an
    `against` that is no known layout source, ImportError when `hf=True` or `model` needs a
    package that is not installed."""
    started = time.perf_counter()
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    against_path = Path(against) if against is not None else None
    if against_path is not None and not against_path.exists():
        raise FileNotFoundError(f"{against}: no such file or directory")
    prefixes = _normalize_prefixes(strip_prefix)

    # The checkpoint's own indexes: read first, since they say which format family to scan.
    own_indexes, index_errors = _own_indexes(root) if root.is_dir() else ([], [])
    actual = _scan(root, hash=hash, threads=threads, progress=progress,
                   index_shards=[name for index in own_indexes for name in index.files], given=scan)
    actual.errors += index_errors
    present = _strip_specs(actual.specs, prefixes)
    found, notes = _collect_layouts(
        root, against_path, own_indexes, hash=hash, threads=threads, checksums=checksums, model=model, hf=hf,
        actual_shapes=lambda: {k: s.shape for k, s in present.items()},
    )
    notes += actual.notes

    missing: set[str] = {layouts.strip_prefixes(k, prefixes) for k in actual.damaged}
    unexpected: set[str] = set()
    mismatched: dict[tuple[str, str], Mismatch] = {}
    errors = list(actual.errors)
    warnings: list[str] = []
    compared_checksums = False
    for raw in found:
        layout = _strip_layout(raw, prefixes)
        lost, extra = _keys_against(layout, present)
        missing |= lost
        unexpected |= extra
        _mismatches(layout, present, mismatched)
        compared_checksums |= any(spec.checksum for spec in layout.specs.values())
        errors += [FileError(file, error) for file, error in layout.errors]
        warnings += layout.warnings
        if layout.kind == "index":
            index_errors, index_warnings = _index_findings(raw, actual, root if root.is_dir() else root.parent,
                                                           raw.source.removeprefix("index "), root.is_dir())
            errors += index_errors
            warnings += index_warnings
        if layout.complete:
            note = _prefix_note(layout, present, (lost, extra), os.fspath(path), prefixes)
            if note:
                notes.append(note)
    if (compared_checksums or checksums) and not hash:
        warnings.append("checksums not compared (--no-hash)")
    for key, files in sorted(actual.duplicates.items()):
        errors.append(FileError(files[-1], f"holds {key!r}, which {files[0]} holds too"))
    if actual.files == 0 and not actual.errors and not any(layout.kind == "index" for layout in found):
        # an interrupted save can leave config.json and nothing else: that is not "OK"
        errors.append(FileError(os.fspath(path), "no tensor files found"))
    return Report(
        path=os.fspath(path),
        against=os.fspath(against) if against is not None else None,
        files=actual.files,
        tensors=actual.tensors,
        bytes=actual.nbytes,
        missing=tuple(natural_sorted(missing)),
        unexpected=tuple(natural_sorted(unexpected - missing)),
        mismatched=tuple(mismatched.values()),
        errors=tuple(_merge_errors(errors)),
        warnings=tuple(dict.fromkeys(warnings)),
        notes=tuple(dict.fromkeys(notes)),
        layouts=tuple(layout.source for layout in found),
        strip_prefix=prefixes,
        elapsed=time.perf_counter() - started,
    )


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
) -> Diff:
    """Compares two checkpoints (files or directories, any formats): keys only in A, only in
    B, and tensors whose shape, dtype or checksum changed. Checksums are format-independent,
    so a .bin and its safetensors conversion compare equal when no tensor changed.
    `hash=False` compares keys, shapes and dtypes only. Raises FileNotFoundError when either
    path does not exist."""
    started = time.perf_counter()
    for given in (a, b):
        if not Path(given).exists():
            raise FileNotFoundError(f"{given}: no such file or directory")
    prefixes = _normalize_prefixes(strip_prefix)
    left = _scan(Path(a), hash=hash, threads=threads, progress=None, label=os.fspath(a))
    right = _scan(Path(b), hash=hash, threads=threads, progress=None, label=os.fspath(b))
    a_specs, b_specs = _strip_specs(left.specs, prefixes), _strip_specs(right.specs, prefixes)
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
            errors.append(FileError(files[-1], f"holds {key!r}, which {files[0]} holds too"))
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
