"""The Report/Diff JSON contract and the family renderer (pure functions, no files)."""

from __future__ import annotations

import json

import pytest

from shardscan.report import Diff, FileError, Mismatch, Report, families, natural_sorted, render_diff, render_report


def _qwen_layer(i: int) -> list[str]:
    keys = [f"model.layers.{i}.self_attn.{p}_proj.{s}" for p in "qkv" for s in ("weight", "bias")]
    keys.append(f"model.layers.{i}.self_attn.o_proj.weight")
    keys += [f"model.layers.{i}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
    keys += [f"model.layers.{i}.{p}_layernorm.weight" for p in ("input", "post_attention")]
    return keys


def _expand(expr: str) -> set[str]:
    """Independent expansion of a brace expression, to prove families() covers exactly its input."""
    start = expr.find("{")
    if start < 0:
        return {expr}
    depth, end = 0, start
    for end in range(start, len(expr)):
        depth += {"{": 1, "}": -1}.get(expr[end], 0)
        if depth == 0:
            break
    inner, alternatives, depth, last = expr[start + 1 : end], [], 0, 0
    for i, ch in enumerate(inner):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            alternatives.append(inner[last:i].strip())
            last = i + 1
    alternatives.append(inner[last:].strip())
    options = []
    for alt in alternatives:
        if ".." in alt and "{" not in alt and alt.replace("..", "").isdigit():
            lo, hi = alt.split("..")
            options += [str(n) for n in range(int(lo), int(hi) + 1)]
        else:
            options.append(alt)
    out = set()
    for option in options:
        out |= _expand(expr[:start] + option + expr[end + 1 :])
    return out


@pytest.mark.parametrize(
    "keys, expected",
    [
        # one key: printed as is
        (["lm_head.weight"], ["lm_head.weight"]),
        # numbered siblings with the same subtree collapse to a range of three or more
        ([f"h.{i}.w" for i in (0, 1, 2, 3)], ["h.{0..3}.w"]),
        # two numbers are listed, not ranged; gaps split ranges
        ([f"h.{i}.w" for i in (1, 2, 5, 6, 7)], ["h.{1,2,5..7}.w"]),
        # names sharing a "_"-delimited suffix are factored around it
        (["a.q_proj", "a.k_proj"], ["a.{k,q}_proj"]),
        # names with nothing in common at a word boundary are simply listed
        (["x.weight", "x.bias"], ["x.{bias,weight}"]),
        # a key that is also a prefix of another is listed on its own
        (["a", "a.b"], ["a", "a.b"]),
        # natural order: 2 before 10; distinct families are separate expressions
        (["m.10.w", "m.2.w", "z"], ["m.{2,10}.w", "z"]),
        # leading zeros are names, not numbers (would change the keys if ranged)
        (["t.01.w", "t.02.w"], ["t.{01,02}.w"]),
    ],
)
def test_families_known_answers(keys: list[str], expected: list[str]) -> None:
    assert families(keys) == expected


def test_seed_case_reads_as_one_line() -> None:
    keys = [k for i in range(24, 28) for k in _qwen_layer(i)]
    assert len(keys) == 48
    (line,) = families(keys)
    assert line.startswith("model.layers.{24..27}.")
    assert "self_attn.{{k,q,v}_proj.{bias,weight}, o_proj.weight}" in line
    assert _expand(line) == set(keys)


def test_families_cover_exactly_their_input() -> None:
    keys = [k for i in (0, 1, 5, 24, 25, 26, 27) for k in _qwen_layer(i)][:-3] + ["lm_head.weight", "model.norm.weight"]
    expanded = set()
    for expr in families(keys):
        expanded |= _expand(expr)
    assert expanded == set(keys)


def test_report_json_contract() -> None:
    report = Report(
        path="ckpt", against=None, files=2, tensors=3, bytes=10,
        missing=("m.10.w", "m.2.w"), unexpected=("b", "a"),
        mismatched=(Mismatch("k", "checksum", "aa", "bb"), Mismatch("k", "shape", (2, 3), (3, 2))),
        errors=(FileError("z.safetensors", "cut short", intact=("b", "a"), cut=("c",), lost=(), kind="truncated"),
                FileError("a.bin", "CRC32 mismatch", kind="crc")),
    )
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False and report.ok is False
    assert data["missing"] == ["m.2.w", "m.10.w"]  # sorted, naturally
    assert data["unexpected"] == ["a", "b"]
    assert data["mismatched"] == [
        {"key": "k", "field": "shape", "expected": [2, 3], "actual": [3, 2]},  # shapes as lists
        {"key": "k", "field": "checksum", "expected": "aa", "actual": "bb"},
    ]
    assert data["errors"][0] == {"file": "a.bin", "kind": "crc", "error": "CRC32 mismatch"}
    assert data["errors"][1]["kind"] == "truncated"
    assert data["errors"][1]["intact"] == ["a", "b"] and data["errors"][1]["cut"] == ["c"]
    for name in ("ok", "path", "against", "files", "tensors", "bytes", "missing", "unexpected", "mismatched", "errors"):
        assert name in data


def test_ok_ignores_warnings_and_notes() -> None:
    report = Report(path="p", against="q", files=1, tensors=1, bytes=1, warnings=("w",), notes=("n",))
    assert report.ok and report.to_dict()["ok"] is True


def test_render_report_groups_and_verdict() -> None:
    keys = [k for i in range(24, 28) for k in _qwen_layer(i)]
    report = Report(
        path="ckpt", against=None, files=1, tensors=5, bytes=100, missing=tuple(keys),
        mismatched=(Mismatch("a.1.w", "shape", (4,), (5,)), Mismatch("a.2.w", "shape", (4,), (5,))),
        errors=(FileError("s.safetensors", "truncated", intact=("x",), cut=("y",), lost=("z",)),),
    )
    text = render_report(report)
    lines = text.splitlines()
    assert lines[0].startswith("missing 48 tensors: model.layers.{24..27}.")
    assert "shape expected [4], found [5], 2 tensors: a.{1,2}.w" in text
    assert "s.safetensors: FAILED truncated" in text and "  cut 1 tensor: y" in text
    assert lines[-1].startswith("ckpt: FAILED 48 missing, 2 mismatched, 1 file error")
    assert "\x1b[" not in text  # no colour unless asked for
    assert "\x1b[31m" in render_report(report, colour=True)


def test_diff_contract_and_render() -> None:
    result = Diff(a="A", b="B", files=(1, 1), tensors=(2, 2), only_a=("x",), changed=(Mismatch("k", "dtype", "float32", "bfloat16"),), unchanged=1)
    data = result.to_dict()
    assert data["changed"] == [{"key": "k", "field": "dtype", "a": "float32", "b": "bfloat16"}]
    assert data["only_a"] == ["x"] and data["only_b"] == [] and data["ok"] is False
    assert render_diff(result).splitlines()[-1].startswith("A vs B: DIFFERENT 2 differences")
    same = Diff(a="A", b="B", files=(1, 1), tensors=(2, 2), unchanged=2)
    assert same.ok and render_diff(same) == "A vs B: identical (2 tensors)"


def test_natural_sorted() -> None:
    assert natural_sorted(["l.10", "l.9", "l.1a", "k"]) == ["k", "l.1a", "l.9", "l.10"]


def test_long_family_splits_into_lines() -> None:
    keys = _qwen_layer(3)[:5] + _qwen_layer(4) + _qwen_layer(12)[2:]
    lines = render_report(Report(path="p", against=None, files=1, tensors=1, bytes=1, missing=tuple(keys))).splitlines()
    assert lines[0] == f"missing {len(keys)} tensors:"
    body = [line.strip() for line in lines[1:-1]]
    assert all(line.startswith("model.layers.") for line in body) and len(body) == 3
    expanded = set()
    for line in body:
        expanded |= _expand(line)
    assert expanded == set(keys)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_component = st.one_of(
    st.sampled_from(["model", "layers", "mlp", "q_proj", "k_proj", "up_proj", "weight", "bias", "norm", "a_b", "x-y"]),
    st.integers(0, 12).map(str),
)


@settings(max_examples=300, deadline=None)
@given(st.sets(st.lists(_component, min_size=1, max_size=5).map(".".join), min_size=1, max_size=40))
def test_families_round_trip(keys: set[str]) -> None:
    """Whatever the keys, the expressions expand back to exactly them (checked by an
    independent expander), so grouping can never hide or invent a key."""
    expanded: set[str] = set()
    for expr in families(keys):
        expanded |= _expand(expr)
    assert expanded == keys
