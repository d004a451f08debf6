"""Whole-file digests: the per-file table (file, size, SHA-256, XXH3-128), and the digests a
download published, found on disk and verified.

Sources of expected digests, found without being asked (`find_expected`):

* a huggingface_hub cache snapshot, `models--org--name/snapshots/<commit>/<file>`: every file is
  a symlink to `blobs/<etag>`. An LFS file's etag is its SHA-256 (64 hex digits); a small
  non-LFS file's is its git blob SHA-1 (40 hex digits: SHA-1 of b"blob <size>\\0" + content).
* a huggingface_hub `local_dir` download: `<local_dir>/.cache/huggingface/download/<file>.metadata`,
  three lines: the commit hash, the etag (as above), the time.time() it was written at. The
  local_dir may be the checkpoint or one of its ancestors.
* sha256sum files in the checkpoint directory (`SHA256SUMS`, `SHA256SUMS.txt`, `sha256sums.txt`,
  `*.sha256`): `<hex>  name` (text mode), `<hex> *name` (binary mode), a leading backslash for
  escaped names, the `--tag` form `SHA256 (name) = <hex>`, and a bare digest in `<file>.sha256`.
* an OpenSSF model-signing signature `model.sig` (a Sigstore bundle): the per-file SHA-256 of its
  in-toto statement (serialization method "files"). The signature itself is NOT verified: this
  proves the bytes match what was signed, not who signed it.

SHA-256 (and XXH3-128) of whole files is computed in C, in parallel across files
(csrc/digest.c through _core.file_digests); git blob SHA-1 with hashlib, since only small
non-LFS files carry one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from ._typing import PathLike
from .errors import kind_of

if TYPE_CHECKING:
    import pyarrow as pa

SHA256, GIT_SHA1 = "sha256", "git-sha1"
_WORDS = {SHA256: "SHA-256", GIT_SHA1: "git blob SHA-1"}
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX40 = re.compile(r"[0-9a-f]{40}")
_REPO_DIR = re.compile(r"^(?:models|datasets|spaces)--")
SUM_FILE_NAMES = ("SHA256SUMS", "SHA256SUMS.txt", "sha256sums.txt")
SIGNATURE_NAME = "model.sig"
_SUM_LINE = re.compile(r"^([0-9a-fA-F]{64}) ([ *])(.+)$")
_TAG_LINE = re.compile(r"^SHA256 \((.+)\) = ([0-9a-fA-F]{64})$")
_PREDICATE_V1 = "https://model_signing/signature/v1.0"
_PREDICATE_V01 = "https://model_signing/Digests/v0.1"
#: The largest file a git SHA-1 is computed for: non-LFS files on the hub stay under 10 MB.
MAX_GIT_BLOB = 64 << 20
#: huggingface_hub's suffix for a local_dir download's record (no relation to DCP's file).
_DOWNLOAD_RECORD = ".metadata"
#: The largest sum file or signature read: a million lines of sha256sum is 100 MB; these are text.
MAX_SOURCE_BYTES = 64 << 20


@dataclass(frozen=True)
class Expected:
    """One published digest. `name` is the file as `check` names it (relative to a checkpoint
    directory, or the path as given for a file); `path` the file whose bytes are digested;
    `required`: the source claims the file exists (False for local_dir metadata, which
    outlives a file deleted on purpose); `recorded`: when huggingface_hub wrote the metadata."""

    name: str
    path: Path
    algorithm: str
    digest: str
    source: str
    required: bool = True
    recorded: float | None = None


@dataclass
class Sources:
    """Every expected digest found for a checkpoint, and warnings about sources that could
    not be read (or lines of them)."""

    expected: list[Expected] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def names(self) -> list[str]:
        """The kinds of source found, once each, in the order found."""
        return list(dict.fromkeys(re.split(r" \(|: ", e.source)[0] for e in self.expected))


@dataclass
class Outcome:
    """What verifying a checkpoint's files against its published digests found: errors as
    (file, problem, kind of errors.KINDS), warnings and notes, in words."""

    errors: list[tuple[str, str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---- finding the sources -----------------------------------------------------------------


class _Scope:
    """Which files of which directory a check covers: a directory's every file, or one file,
    and the names check gives them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.directory = root if root.is_dir() else root.parent
        self.only = None if root.is_dir() else root.name

    def name(self, relative: str) -> str | None:
        """The name check shows for a file `relative` to the directory; None when outside."""
        if relative.startswith("../") or relative == ".." or os.path.isabs(relative):
            return None
        if self.only is None:
            return relative
        return os.fspath(self.root) if relative == self.only else None


def find_expected(root: PathLike) -> Sources:
    """Every digest published for the files of the checkpoint at `root` (a directory, or one
    file: then only its own digests), from every source the module doc lists."""
    scope = _Scope(Path(root))
    sources = Sources()
    _from_hub_cache(scope, sources)
    _from_local_dir(scope, sources)
    _from_sum_files(scope, sources)
    _from_signature(scope, sources)
    return sources


def _from_hub_cache(scope: _Scope, sources: Sources) -> None:
    snapshot = next((a for a in _ancestors(scope.directory)
                     if a.parent.name == "snapshots" and _REPO_DIR.match(a.parent.parent.name)), None)
    if snapshot is None:
        return
    blobs = os.path.normpath(snapshot.parent.parent / "blobs")
    for directory, subdirs, files in os.walk(scope.directory):
        subdirs.sort()
        for entry in sorted(files):
            link = os.path.join(directory, entry)
            if not os.path.islink(link):
                continue  # a copy (no symlinks on this platform): the name of its blob is lost
            target = os.path.normpath(os.path.join(os.path.abspath(directory), os.readlink(link)))
            blob = os.path.basename(target)
            algorithm = _algorithm_of(blob)
            name = scope.name(os.path.relpath(link, scope.directory))
            if algorithm is None or os.path.dirname(target) != blobs or name is None:
                continue
            # The blob may itself link into huggingface_hub's shared store: the bytes are what count.
            sources.expected.append(Expected(name, Path(link), algorithm, blob, "huggingface_hub cache: the blob's name"))


def _from_local_dir(scope: _Scope, sources: Sources) -> None:
    local_dir = next((a for a in _ancestors(scope.directory) if (a / ".cache" / "huggingface" / "download").is_dir()), None)
    if local_dir is None:
        return
    download = local_dir / ".cache" / "huggingface" / "download"
    for directory, subdirs, files in os.walk(download):
        subdirs.sort()
        for entry in sorted(files):
            if not entry.endswith(_DOWNLOAD_RECORD):
                continue
            metadata = Path(directory, entry)
            relative = os.fspath(metadata.relative_to(download))[: -len(_DOWNLOAD_RECORD)]
            file = local_dir / relative
            name = scope.name(os.path.relpath(file, scope.directory))
            if name is None:
                continue
            shown = os.path.relpath(metadata, scope.directory)
            try:
                _commit, etag, recorded = metadata.read_text(encoding="utf-8").splitlines()[:3]
                when = float(recorded)
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                sources.warnings.append(f"{shown}: unreadable huggingface_hub download metadata ({exc})")
                continue
            algorithm = _algorithm_of(etag.strip())
            if algorithm is not None:
                sources.expected.append(Expected(name, file, algorithm, etag.strip(), f"huggingface_hub download metadata ({shown})",
                                                 required=False, recorded=when))


def _from_sum_files(scope: _Scope, sources: Sources) -> None:
    try:
        entries = sorted(os.listdir(scope.directory))
    except OSError:
        return
    for entry in entries:
        if entry not in SUM_FILE_NAMES and not entry.endswith(".sha256"):
            continue
        path = scope.directory / entry
        if not _exists(path):
            continue
        try:
            text = _read_source(path).decode("utf-8", errors="surrogateescape")
        except (OSError, ValueError) as exc:
            sources.warnings.append(f"{entry}: unreadable ({getattr(exc, 'strerror', None) or exc})")
            continue
        bare = entry[: -len(".sha256")] if entry.endswith(".sha256") else None
        for number, line in enumerate(text.splitlines(), 1):
            parsed = parse_sum_line(line, bare)
            if parsed is None:
                if line.strip() and not line.startswith("#"):
                    sources.warnings.append(f"{entry}: line {number} is not in sha256sum format")
                continue
            digest, relative = parsed
            name = scope.name(os.path.normpath(relative))
            if name is not None:
                sources.expected.append(Expected(name, scope.directory / relative, SHA256, digest, f"{entry} line {number}"))


def parse_sum_line(line: str, bare_name: str | None = None) -> tuple[str, str] | None:
    """(lowercase digest, file name) of one line of a sha256sum file, in any form coreutils
    writes; a bare digest counts for `bare_name` (the file a `NAME.sha256` is named for).
    None for a comment, a blank or a malformed line."""
    line = line.rstrip("\r")
    escaped = line.startswith("\\")
    body = line[1:] if escaped else line
    match = _SUM_LINE.match(body)
    if match:
        digest, name = match.group(1), match.group(3)
    elif (match := _TAG_LINE.match(body)) is not None:
        name, digest = match.group(1), match.group(2)
    elif bare_name is not None and re.fullmatch(r"[0-9a-fA-F]{64}", body.strip()):
        return body.strip().lower(), bare_name
    else:
        return None
    if escaped:  # coreutils escapes these three in names, and says so with the leading backslash
        name = re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r", "\\": "\\"}.get(m.group(1), m.group(0)), name)
    return digest.lower(), name.removeprefix("./")


def _from_signature(scope: _Scope, sources: Sources) -> None:
    path = scope.directory / SIGNATURE_NAME
    if not _exists(path):
        return
    try:
        bundle = json.loads(_read_source(path))
        envelope = bundle["dsseEnvelope"]
        statement = json.loads(base64.b64decode(envelope["payload"], validate=True))
        resources = _signed_resources(statement)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sources.warnings.append(f"{SIGNATURE_NAME}: not a model-signing signature whose digests can be read ({exc})")
        return
    for relative, digest in resources:
        name = scope.name(os.path.normpath(relative))
        if name is not None:
            sources.expected.append(Expected(name, scope.directory / relative, SHA256, digest,
                                             f"{SIGNATURE_NAME} (model-signing, signature not verified)"))


def _signed_resources(statement: dict) -> list[tuple[str, str]]:
    """(file, SHA-256) of every file an in-toto statement of model-signing lists. Raises
    ValueError for another predicate, a serialization other than whole files, or resources
    that do not hash to the statement's subject digest."""
    kind = statement.get("predicateType")
    if kind == _PREDICATE_V01:  # before v1.0: the files are the subjects themselves
        return [(s["name"], s["digest"]["sha256"].lower()) for s in statement["subject"]]
    if kind != _PREDICATE_V1:
        raise ValueError(f"predicate type {kind!r}")
    predicate = statement["predicate"]
    method = predicate.get("serialization", {}).get("method")
    if method != "files":
        raise ValueError(f"serialization {method!r} (only 'files' lists whole-file digests)")
    resources = predicate["resources"]
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
    if root != statement["subject"][0]["digest"]["sha256"].lower():
        raise ValueError("its resources do not hash to the subject digest")
    return [(r["name"], r["digest"].lower()) for r in resources if r.get("algorithm") == SHA256]


def _read_source(path: Path) -> bytes:
    """A sum file's or signature's bytes; ValueError past MAX_SOURCE_BYTES (never read whole)."""
    with open(path, "rb") as f:
        data = f.read(MAX_SOURCE_BYTES + 1)
    if len(data) > MAX_SOURCE_BYTES:
        raise ValueError(f"larger than {MAX_SOURCE_BYTES} bytes")
    return data


def _ancestors(directory: Path) -> Iterable[Path]:
    """`directory` and its parents, by name (symlinks not resolved: a snapshot is found by
    the path it was reached through)."""
    start = Path(os.path.abspath(directory))
    return [start, *start.parents]


def _algorithm_of(etag: str) -> str | None:
    if _HEX64.fullmatch(etag):
        return SHA256
    if _HEX40.fullmatch(etag):
        return GIT_SHA1
    return None


# ---- verifying ---------------------------------------------------------------------------


def git_blob_sha1(path: PathLike) -> str:
    """The git blob SHA-1 of a file: the name git (and the hub) give its content."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        digest = hashlib.sha1(b"blob %d\0" % size)
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify(expected: Sequence[Expected], threads: int | None = None,
           progress: Callable[[int], None] | None = None) -> Outcome:
    """Digests every file of `expected` (SHA-256 in one parallel batch) and returns an error
    for each file absent or unlike its published digest, naming both digests."""
    from ._core import file_digests

    outcome = Outcome()
    sha_paths = list(dict.fromkeys(os.fspath(e.path) for e in expected if e.algorithm == SHA256 and _exists(e.path)))
    actual = {d.path: d for d in file_digests(sha_paths, threads=threads, progress=progress, xxh3=False)}
    for entry in expected:
        if not _exists(entry.path):
            if entry.required:
                outcome.errors.append((entry.name, f"absent: {entry.source} lists it", "absent"))
            else:
                outcome.warnings.append(f"{entry.name}: absent, although {entry.source} records its download")
            continue
        got, error = _digest_of(entry, actual)
        if error is not None:
            outcome.errors.append((entry.name, f"{_WORDS[entry.algorithm]} not computed: {error}", "io"))
        elif got != entry.digest:
            outcome.errors.append((entry.name, _mismatch(entry, got), "sha256"))
    return outcome


def _digest_of(entry: Expected, actual: dict) -> tuple[str | None, str | None]:
    """(digest, None) of one entry's file, or (None, why it could not be computed)."""
    if entry.algorithm == SHA256:
        result = actual[os.fspath(entry.path)]
        return (result.sha256, None) if result.error is None else (None, str(result.error))
    try:
        size = entry.path.stat().st_size
        if size > MAX_GIT_BLOB:
            return None, f"{size} bytes, more than a non-LFS file holds: the blob name is no git SHA-1 of it"
        return git_blob_sha1(entry.path), None
    except OSError as exc:
        return None, exc.strerror or str(exc)


def _mismatch(entry: Expected, got: str | None) -> str:
    words = f"{_WORDS[entry.algorithm]} mismatch: expected {entry.digest} ({entry.source}), actual {got}"
    if entry.recorded is not None:
        try:
            if entry.path.stat().st_mtime - 1 > entry.recorded:
                words += "; the file was modified after huggingface_hub recorded its download"
        except OSError:
            pass
    return words


def _exists(path: Path) -> bool:
    """A regular file (through symlinks): never a FIFO or device, which could block or never end."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except (OSError, ValueError):  # ValueError: a NUL in a name read from a source
        return False


def check_published(root: PathLike, sha256: bool | None, *, hash: bool = True, threads: int | None = None,
                    progress: Callable[[int, int], None] | None = None) -> Outcome:
    """The digest step of `check`. `sha256`: None verifies when a source exists (and `hash`
    is on), False never, True always: with no source it still digests every file (a read
    error is an error) and says that nothing was compared."""
    if sha256 is False:
        return Outcome()
    sources = find_expected(root)
    if not sources.expected and not sha256:
        return Outcome(warnings=sources.warnings)
    if not sources.expected:
        files = [path for _, path in list_files([root])]
        outcome = Outcome(warnings=sources.warnings)
        for result in _digests(files, threads, progress):
            if result.error is not None:
                outcome.errors.append((_shown(root, result.path), f"SHA-256 not computed: {result.error}",
                                       kind_of(result.error)))
        outcome.notes.append(f"no published SHA-256 to compare with: digested {len(files)} files "
                             f"(`shardscan scan {os.fspath(root)} --files-out SHA256SUMS` writes one)")
        return outcome
    if sha256 is None and not hash:
        return Outcome(warnings=sources.warnings + ["published SHA-256 not verified (--no-hash)"])
    sizes = sum(_size(e.path) for e in sources.expected if e.algorithm == SHA256)
    outcome = verify(sources.expected, threads, (lambda done: progress(done, sizes)) if progress else None)
    outcome.warnings[:0] = sources.warnings
    if not outcome.errors:
        files = len({e.name for e in sources.expected})
        outcome.notes.append(f"{files} files match their published digests ({', '.join(sources.names())})")
    return outcome


def _shown(root: PathLike, path: str) -> str:
    root_text = os.fspath(root)
    return os.path.relpath(path, root_text) if Path(root_text).is_dir() else root_text


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _digests(paths: Sequence[Path], threads: int | None, progress: Callable[[int, int], None] | None,
             xxh3: bool = False) -> list:
    from ._core import file_digests

    total = sum(_size(p) for p in paths)
    return file_digests(paths, threads=threads, progress=(lambda done: progress(done, total)) if progress else None,
                        xxh3=xxh3)


# ---- the per-file table ------------------------------------------------------------------


def list_files(paths: Sequence[PathLike]) -> list[tuple[str, Path]]:
    """(name, path) of every regular file under `paths` (symlinks to files followed, as in a
    hub snapshot), in name order per path; huggingface_hub's `.cache/huggingface`, `.git` and
    the sha256sum files themselves are left out. Names are relative to a directory given
    alone, else under the path as given. Raises FileNotFoundError for a path that does not exist."""
    out: list[tuple[str, Path]] = []
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise FileNotFoundError(f"{given}: no such file or directory")
        if not path.is_dir():
            out.append((os.fspath(given), path))
            continue
        under = os.fspath(given).rstrip(os.sep) + os.sep if len(paths) > 1 else ""
        found = []
        for directory, subdirs, files in os.walk(path):
            rel_dir = os.path.relpath(directory, path)
            subdirs[:] = sorted(d for d in subdirs if d != ".git" and not (rel_dir == "." and d == ".cache"
                                                                          and (path / ".cache" / "huggingface").is_dir()))
            for entry in files:
                full = Path(directory, entry)
                if entry in SUM_FILE_NAMES or entry.endswith(".sha256") or not _exists(full):
                    continue
                found.append((under + os.path.relpath(full, path), full))
        out += sorted(found)
    return out


def file_schema() -> "pa.Schema":
    """The per-file table: `file` (as scan names it), `size` (bytes at open time), `sha256` and
    `xxh3_128` (lowercase hex of every byte; XXH3-128 as xxhash.xxh3_128_hexdigest gives it),
    `error` (why a file could not be digested; the three before it are then null)."""
    import pyarrow as pa

    return pa.schema([
        pa.field("file", pa.string(), nullable=False),
        pa.field("size", pa.int64()),
        pa.field("sha256", pa.string()),
        pa.field("xxh3_128", pa.string()),
        pa.field("error", pa.string()),
    ])


def file_digests(paths: Sequence[PathLike] | PathLike, *, threads: int | None = None,
                 progress: Callable[[int, int], None] | None = None) -> "pa.Table":
    """The per-file table (file_schema) of every file under `paths` (list_files says which),
    all digested in one parallel batch. A file that cannot be read gets its error in its row;
    a path that does not exist raises FileNotFoundError."""
    import pyarrow as pa

    from .scanner import arrow_text

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    listed = list_files(paths)
    results = _digests([p for _, p in listed], threads, progress, xxh3=True)
    columns = {
        "file": [arrow_text(name) for name, _ in listed],
        "size": [r.size if r.error is None else None for r in results],
        "sha256": [r.sha256 for r in results],
        "xxh3_128": [r.xxh3 for r in results],
        "error": [None if r.error is None else str(r.error) for r in results],
    }
    return pa.table(columns, schema=file_schema())


def write_sums(table: "pa.Table", path: PathLike) -> None:
    """Writes the per-file table as a sha256sum file (`<hex>  name`, names escaped as coreutils
    escapes them), atomically; rows without a digest are left out."""
    from .output import replace_atomically

    lines = []
    for name, digest in zip(table.column("file").to_pylist(), table.column("sha256").to_pylist()):
        if digest is None:
            continue
        if any(c in name for c in "\\\n\r"):
            escaped = name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
            lines.append(f"\\{digest}  {escaped}\n")
        else:
            lines.append(f"{digest}  {name}\n")
    def write(temp: str) -> None:
        with open(temp, "w", encoding="utf-8", errors="surrogateescape") as out:
            out.write("".join(lines))

    replace_atomically(path, write)


def is_sum_file_name(path: PathLike) -> bool:
    """Whether `scan --files-out PATH` writes sha256sum text rather than a table."""
    name = Path(path).name
    return name in SUM_FILE_NAMES or name.endswith(".sha256")
