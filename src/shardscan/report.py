"""What `check` and `diff` hand back: frozen dataclasses whose `to_dict()` is the public JSON
contract (docs/report-json.md), and the renderer that folds families of keys into brace
expressions so that 48 missing keys read as one line:

    model.layers.{24..27}.{mlp.{down,gate,up}_proj.weight, self_attn.{k,q,v}_proj.{bias,weight}, ...}

Nothing here reads files; the module imports only the standard library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

#: Mismatch fields, in the order the human output lists them.
FIELDS = ("shape", "dtype", "checksum")


@dataclass(frozen=True)
class Mismatch:
    """One tensor whose `field` ("shape", "dtype" or "checksum") differs: `expected` is the
    layout's value, `actual` the checkpoint's. Shapes are tuples here, lists in JSON."""

    key: str
    field: str
    expected: Any
    actual: Any

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: {"key", "field", "expected", "actual"}, shapes as lists."""
        return {"key": self.key, "field": self.field, "expected": _plain(self.expected), "actual": _plain(self.actual)}


@dataclass(frozen=True)
class FileError:
    """A file that could not be read completely, or is wrong in a way only a layout shows.
    `kind` is the problem's word from shardscan.errors.KINDS (docs/report-json.md), set by
    the code that found it. For a truncated file, `intact`, `cut` and `lost` name its
    tensors that survived whole, in part, and not at all."""

    file: str
    error: str
    intact: tuple[str, ...] = ()
    cut: tuple[str, ...] = ()
    lost: tuple[str, ...] = ()
    kind: str = "format"

    def to_dict(self) -> dict[str, Any]:
        """{"file", "kind", "error"}, plus sorted "intact"/"cut"/"lost" lists when the file was
        cut short."""
        out: dict[str, Any] = {"file": self.file, "kind": self.kind, "error": self.error}
        if self.intact or self.cut or self.lost:
            out.update(intact=natural_sorted(self.intact), cut=natural_sorted(self.cut), lost=natural_sorted(self.lost))
        return out


@dataclass(frozen=True)
class NonFinite:
    """A tensor holding NaN or +-Inf values: `key` as findings name it (qualified by its file
    outside the weights), `file` the file it is in, and how many of each."""

    key: str
    file: str
    nan: int
    inf: int

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "file": self.file, "nan": self.nan, "inf": self.inf}


@dataclass(frozen=True)
class Report:
    """The result of `shardscan.check`. `ok` is true when nothing is missing, unexpected,
    mismatched, unreadable or non-finite (NaN/Inf, found while hashing); `warnings` (advisory, e.g. an index's total_size) and `notes`
    (e.g. a detected key prefix) never make it false. Lists are kept sorted."""

    path: str
    against: str | None
    files: int
    tensors: int
    bytes: int
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[Mismatch, ...] = ()
    errors: tuple[FileError, ...] = ()
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    layouts: tuple[str, ...] = ()
    strip_prefix: tuple[str, ...] = ()
    elapsed: float = 0.0
    nonfinite: tuple[NonFinite, ...] = ()

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.errors or self.nonfinite)

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract documented in docs/report-json.md. Keys may be added, never removed."""
        return {
            "ok": self.ok,
            "path": self.path,
            "against": self.against,
            "files": self.files,
            "tensors": self.tensors,
            "bytes": self.bytes,
            "missing": natural_sorted(self.missing),
            "unexpected": natural_sorted(self.unexpected),
            "mismatched": [m.to_dict() for m in _sorted_mismatches(self.mismatched)],
            "errors": [e.to_dict() for e in sorted(self.errors, key=lambda e: (natural_key(e.file), e.error))],
            "warnings": sorted(self.warnings),
            "notes": sorted(self.notes),
            "layouts": sorted(self.layouts),
            "strip_prefix": list(self.strip_prefix),
            "elapsed": round(self.elapsed, 6),
            "nonfinite": [n.to_dict() for n in sorted(self.nonfinite, key=lambda n: natural_key(n.key))],
        }


@dataclass(frozen=True)
class Diff:
    """The result of `shardscan.diff(a, b)`: keys only in A, only in B, and tensors whose shape,
    dtype or (when hashed) checksum changed (`expected` = A's value, `actual` = B's).
    `ok` means no difference and no unreadable file."""

    a: str
    b: str
    files: tuple[int, int]
    tensors: tuple[int, int]
    only_a: tuple[str, ...] = ()
    only_b: tuple[str, ...] = ()
    changed: tuple[Mismatch, ...] = ()
    unchanged: int = 0
    errors: tuple[FileError, ...] = ()
    notes: tuple[str, ...] = ()
    checksums: bool = True
    strip_prefix: tuple[str, ...] = field(default=())
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.only_a or self.only_b or self.changed or self.errors)

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract documented in docs/report-json.md; `changed` entries carry
        "a" and "b" values instead of "expected" and "actual"."""
        return {
            "ok": self.ok,
            "a": self.a,
            "b": self.b,
            "files": list(self.files),
            "tensors": list(self.tensors),
            "only_a": natural_sorted(self.only_a),
            "only_b": natural_sorted(self.only_b),
            "changed": [
                {"key": m.key, "field": m.field, "a": _plain(m.expected), "b": _plain(m.actual)}
                for m in _sorted_mismatches(self.changed)
            ],
            "unchanged": self.unchanged,
            "checksums": self.checksums,
            "errors": [e.to_dict() for e in sorted(self.errors, key=lambda e: (natural_key(e.file), e.error))],
            "notes": sorted(self.notes),
            "strip_prefix": list(self.strip_prefix),
            "elapsed": round(self.elapsed, 6),
        }


def _plain(value: Any) -> Any:
    # JSON has no tuples; shapes travel as lists.
    return list(value) if isinstance(value, tuple) else value


def _sorted_mismatches(items: Iterable[Mismatch]) -> list[Mismatch]:
    return sorted(items, key=lambda m: (natural_key(m.key), FIELDS.index(m.field) if m.field in FIELDS else 9))


_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple:
    """Sort key that orders layers 2 < 10: digit runs compare as numbers. Digit runs sit at odd
    positions of the split, so numbers only ever compare with numbers."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(_DIGITS.split(text)))


def natural_sorted(keys: Iterable[str]) -> list[str]:
    """The keys sorted with natural_key: the order every list in the JSON contract uses."""
    return sorted(keys, key=natural_key)


# ----------------------------------------------------------------------------------------
# Families: keys -> brace expressions.
#
# Keys are split on "." into a tree. At each node the children whose subtrees render to the
# same text are one family: numeric names become ranges ({24..27}), other names are factored
# around their common prefix and suffix ({k,q,v}_proj). Rendering bottom-up makes identical
# layers collapse before their indices are compared, which is what turns 48 keys into a line.


def families(keys: Iterable[str]) -> list[str]:
    """Brace expressions covering exactly `keys`, one per top-level family, in natural order.
    `a.{1..3}.b` stands for a.1.b, a.2.b, a.3.b; `{x,y}` for either; nested freely."""
    tree: dict = {}
    for key in natural_sorted(set(keys)):
        node = tree
        for part in key.split("."):
            node = node.setdefault(part, {})
        node[_LEAF] = {}
    return _render_children(tree)


# A child marker that cannot be a key component ("." never survives the split).
_LEAF = "."


def _render_children(node: dict) -> list[str]:
    """One expression per family under `node`; a key ending here contributes ""."""
    groups: dict[str, list[str]] = {}
    for name, child in node.items():
        if name == _LEAF:
            groups.setdefault("\0leaf", []).append("")
            continue
        rendered = _render_children(child)
        if "" in rendered and len(rendered) > 1:
            # Both `a` and `a.b` are keys: list `a` on its own rather than invent `a.{, b}`.
            groups.setdefault("", []).append(name)
            rendered = [r for r in rendered if r]
        tail = rendered[0] if len(rendered) == 1 else "{" + ", ".join(rendered) + "}"
        groups.setdefault(tail, []).append(name)
    out = []
    for tail, names in groups.items():
        if tail == "\0leaf":
            out.append("")
            continue
        head = _fold_names(names)
        out.append(head + ("." + tail if tail else ""))
    return out


def _fold_names(names: Sequence[str]) -> str:
    """One name as is; all-numeric names as ranges; others factored around a common affix."""
    if len(names) == 1:
        return names[0]
    if all(n.isdigit() and (n == "0" or not n.startswith("0")) for n in names):
        return "{" + _ranges(sorted(int(n) for n in names)) + "}"
    prefix, suffix = _common_affixes(names)
    middles = [n[len(prefix) : len(n) - len(suffix)] for n in names]
    return prefix + "{" + ",".join(middles) + "}" + suffix


def _ranges(numbers: list[int]) -> str:
    """[0,1,2,3,5,7,8] -> "0..3,5,7,8": runs of three or more become a range."""
    parts, start = [], 0
    while start < len(numbers):
        end = start
        while end + 1 < len(numbers) and numbers[end + 1] == numbers[end] + 1:
            end += 1
        if end - start >= 2:
            parts.append(f"{numbers[start]}..{numbers[end]}")
        else:
            parts += [str(n) for n in numbers[start : end + 1]]
        start = end + 1
    return ",".join(parts)


def _common_affixes(names: Sequence[str]) -> tuple[str, str]:
    """The longest prefix and suffix shared by every name that end/start at a word boundary
    ("_" or "-"), so q_proj/k_proj fold to {q,k}_proj but weight/bias do not fold to nothing."""
    shortest = min(len(n) for n in names)
    prefix = 0
    while prefix < shortest and len({n[prefix] for n in names}) == 1:
        prefix += 1
    suffix = 0
    while suffix < shortest - prefix and len({n[len(n) - 1 - suffix] for n in names}) == 1:
        suffix += 1
    first = names[0]
    pre = first[:prefix]
    cut = max(pre.rfind("_"), pre.rfind("-"))
    pre = pre[: cut + 1] if cut >= 0 else ""
    suf = first[len(first) - suffix :] if suffix else ""
    cut = min((i for i in (suf.find("_"), suf.find("-")) if i >= 0), default=-1)
    suf = suf[cut:] if cut >= 0 else ""
    if any(len(n) - len(pre) - len(suf) <= 0 for n in names):
        return "", ""
    return pre, suf


# ----------------------------------------------------------------------------------------
# Human output.

_GREEN, _RED, _YELLOW, _BOLD, _RESET = "\x1b[32m", "\x1b[31m", "\x1b[33m", "\x1b[1m", "\x1b[0m"

# What a name must not put on a terminal: C0 and C1 controls and DEL (escape sequences, carriage
# returns and newlines that forge lines), bidi embeddings, overrides and isolates and other
# invisible format characters that reorder or hide text, line/paragraph separators, and lone
# surrogates (a file name that is not UTF-8, a pickled key), which no encoder can write.
_UNPRINTABLE = re.compile(
    "(\x1b\\[(?:0|1|31|32|33)m)|([\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff])")


def printable(text: str, colour: bool = False) -> str:
    """`text` safe to print as one line: every character in _UNPRINTABLE as a visible escape
    (\\x1b, \\u202e, \\udcff). With `colour`, the few colour codes the renderers themselves
    emit are kept. JSON and tables keep names exactly; only human output goes through here."""
    if _UNPRINTABLE.search(text) is None:
        return text

    def escape(match: re.Match) -> str:
        if match.group(1) is not None:
            return match.group(1) if colour else "\\x1b" + match.group(1)[1:]
        code = ord(match.group(2))
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _UNPRINTABLE.sub(escape, text)


def printable_lines(lines: Iterable[str], colour: bool = False) -> str:
    """The lines of a human report joined, each made printable (see printable)."""
    return "\n".join(printable(line, colour) for line in lines)


class _Paint:
    """ANSI colour when asked for, plain text otherwise (the caller decides: terminal only)."""

    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def __call__(self, text: str, code: str) -> str:
        return f"{code}{text}{_RESET}" if self.colour else text


def _family_lines(label: str, keys: Sequence[str], width: int = 100) -> list[str]:
    """`label N tensors: expr`, one line when it fits, else one family per indented line."""
    exprs = families(keys)
    head = f"{label} {plural(len(keys), 'tensor')}:"
    one = f"{head} {', '.join(exprs)}"
    if len(one) <= width:
        return [one]
    if len(exprs) == 1:
        exprs = _split_family(list(keys))
    if len(exprs) == 1:
        return [one]
    return [head] + [f"  {e}" for e in exprs]


def _split_family(keys: list[str]) -> list[str]:
    """A family too long for one line, as several: the components every key shares are
    factored out and the rest rendered beneath them, one expression per line
    (model.layers.{3,4}.{...} -> model.layers.3.{...} and model.layers.4.{...})."""
    parts = [key.split(".") for key in keys]
    shared = 0
    while all(len(p) > shared + 1 for p in parts) and len({p[shared] for p in parts}) == 1:
        shared += 1
    if shared == 0:
        return families(keys)
    head = ".".join(parts[0][:shared]) + "."
    below = families(".".join(p[shared:]) for p in parts)
    return [head + e for e in below]


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(map(str, value)) + "]"
    return "-" if value is None else str(value)


def _mismatch_lines(items: Sequence[Mismatch], left: str, right: str) -> list[str]:
    """Shape/dtype changes grouped by (expected, actual) so a family shares one line;
    checksum changes grouped together (their values differ per tensor; JSON has them all)."""
    lines = []
    for field_name in FIELDS:
        chosen = [m for m in items if m.field == field_name]
        if not chosen:
            continue
        if field_name == "checksum":
            lines += _family_lines("checksum changed,", [m.key for m in chosen])
            continue
        by_values: dict[tuple[str, str], list[str]] = {}
        for m in chosen:
            by_values.setdefault((_show(m.expected), _show(m.actual)), []).append(m.key)
        for (expected, actual), keys in by_values.items():
            lines += _family_lines(f"{field_name} {left} {expected}, {right} {actual},", keys)
    return lines


def _error_lines(errors: Sequence[FileError], paint: _Paint) -> list[str]:
    lines = []
    for e in sorted(errors, key=lambda e: natural_key(e.file)):
        lines.append(f"{e.file}: {paint('FAILED', _RED)} {e.error}")
        for label, keys in (("intact", e.intact), ("cut", e.cut), ("lost", e.lost)):
            if keys:
                lines += ["  " + line for line in _family_lines(label, keys)]
    return lines


def render_report(report: Report, *, colour: bool = False) -> str:
    """The human form of a check: families missing, unexpected, mismatches, file errors,
    warnings and notes, then one verdict line `PATH: OK` or `PATH: FAILED (...)`."""
    paint = _Paint(colour)
    lonely = report.errors[0] if len(report.errors) == 1 and report.files == 0 else None
    if lonely is not None and lonely.file == report.path and not (report.missing or report.unexpected or report.warnings):
        # Nothing was read but the checkpoint itself, and it says why: one line, not two.
        return printable_lines([f"{report.path}: {paint('FAILED', _RED + _BOLD)} {lonely.error}"], colour)
    lines: list[str] = []
    if report.missing:
        lines += _family_lines("missing", report.missing)
    if report.unexpected:
        lines += _family_lines("unexpected", report.unexpected)
    lines += _mismatch_lines(report.mismatched, "expected", "found")
    lines += _error_lines(report.errors, paint)
    lines += _nonfinite_lines(report.nonfinite, paint)
    lines += [paint(f"warning: {w}", _YELLOW) for w in sorted(report.warnings)]
    lines += [f"note: {n}" for n in sorted(report.notes)]
    against = f" against {', '.join(report.layouts)}" if report.layouts else ""
    size = f"{plural(report.files, 'file')}, {plural(report.tensors, 'tensor')}, {human_bytes(report.bytes)}{against}"
    if report.ok:
        lines.append(f"{report.path}: {paint('OK', _GREEN)} ({size})")
    else:
        counts = [
            f"{n} {label}"
            for n, label in (
                (len(report.missing), "missing"),
                (len(report.unexpected), "unexpected"),
                (len(report.mismatched), "mismatched"),
                (len(report.nonfinite), "non-finite"),
            )
            if n
        ] + ([plural(len(report.errors), "file error")] if report.errors else [])
        lines.append(f"{report.path}: {paint('FAILED', _RED + _BOLD)} {', '.join(counts)} ({size})")
    return printable_lines(lines, colour)


def _nonfinite_lines(items: Sequence[NonFinite], paint: "_Paint") -> list[str]:
    lines = []
    for n in sorted(items, key=lambda n: natural_key(n.key)):
        counts = ", ".join(f"{count} {label}" for count, label in ((n.nan, "NaN"), (n.inf, "Inf")) if count)
        lines.append(f"{paint('non-finite', _RED)}: {n.key} ({counts})")
    return lines


def render_diff(result: Diff, *, colour: bool = False) -> str:
    """The human form of a diff: keys only in A, only in B, changes, file errors, then one
    verdict line `A vs B: identical` or `A vs B: N differences`."""
    paint = _Paint(colour)
    lines: list[str] = []
    if result.only_a:
        lines += _family_lines(f"only in {result.a}:", result.only_a)
    if result.only_b:
        lines += _family_lines(f"only in {result.b}:", result.only_b)
    lines += _mismatch_lines(result.changed, "A", "B")
    lines += _error_lines(result.errors, paint)
    lines += [f"note: {n}" for n in sorted(result.notes)]
    if not result.checksums:
        lines.append("note: checksums not compared (--no-hash)")
    differences = len(result.only_a) + len(result.only_b) + len(result.changed)
    head = f"{result.a} vs {result.b}:"
    if result.ok:
        lines.append(f"{head} {paint('identical', _GREEN)} ({plural(result.unchanged, 'tensor')})")
    else:
        extra = f", {plural(len(result.errors), 'file error')}" if result.errors else ""
        lines.append(
            f"{head} {paint('DIFFERENT', _RED + _BOLD)} {plural(differences, 'difference')}{extra} "
            f"({plural(result.unchanged, 'tensor')} unchanged)"
        )
    return printable_lines(lines, colour)


def plural(count: int, noun: str, plural_noun: str | None = None) -> str:
    """The count with its noun agreeing: "1 file", "2 files", "0 files"; irregular nouns give
    their plural (`plural(n, "match", "matches")`). The one place counts meet words."""
    return f"{count} {noun if count == 1 else plural_noun or noun + 's'}"


def human_bytes(n: float) -> str:
    """Decimal units, as disks and `ls -h --si` count: 4.10 MB, 4.27 GB."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
