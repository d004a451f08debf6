"""Expected-layout sources, each built from a small hand-written file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardscan import layout
from shardscan._core import Names, first_repeat


def test_series_gaps() -> None:
    names = ["m-00001-of-00004.safetensors", "m-00003-of-00004.safetensors", "m-00004-of-00004.safetensors", "other.bin"]
    assert layout.series_gaps(names) == [("m-00002-of-00004.safetensors", "m-*-of-00004.safetensors")]
    assert layout.series_gaps(["m-00001-of-00001.safetensors"]) == []


def test_index_layout(tmp_path: Path) -> None:
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 12}, "weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}))
    found = layout.index_layout(index)
    assert found.specs["a"].file == "s1.safetensors" and found.files == ("s1.safetensors", "s2.safetensors")
    assert found.total_size == 12 and found.complete
    index.write_text(json.dumps({"weight_map": ["a"]}))
    with pytest.raises(ValueError, match="not a shard index"):
        layout.index_layout(index)
    index.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        layout.index_layout(index)


@pytest.mark.parametrize(
    "config, count",
    [
        ({"num_hidden_layers": 28}, 28),  # Llama, Qwen2, Mistral
        ({"n_layer": 12}, 12),  # GPT-2
        ({"text_config": {"num_hidden_layers": 4}}, 4),  # multimodal: the language model's blocks
        ({"hidden_size": 8}, None),  # nothing to count
        ({"num_hidden_layers": True}, None),  # a bool is not a count
    ],
)
def test_layer_count(config: dict, count: int | None) -> None:
    assert layout.layer_count(config) == count


def test_structural_layout_finds_absent_and_partial_blocks() -> None:
    actual: dict[str, tuple[int, ...] | None] = {"model.embed_tokens.weight": (8, 4)}
    for i in range(3):
        actual[f"model.layers.{i}.mlp.weight"] = (4, 4)
        actual[f"model.layers.{i}.norm.weight"] = (4,)
    del actual["model.layers.1.norm.weight"]
    actual["model.layers.2.mlp.weight"] = (4, 5)  # the odd one out; the majority shape is expected
    actual["model.layers.7.mlp.weight"] = (4, 4)  # beyond num_hidden_layers
    found = layout.structural_layout({"num_hidden_layers": 4}, list(actual), list(actual.values()), "config.json")
    expected = {f"model.layers.{i}.{s}" for i in range(4) for s in ("mlp.weight", "norm.weight")}
    assert set(found.specs) == expected
    assert found.specs["model.layers.2.mlp.weight"].shape == (4, 4)
    assert found.extra == {"model.layers.7.mlp.weight"}
    assert not found.complete  # embed_tokens is not judged


def test_structural_layout_without_count_warns() -> None:
    found = layout.structural_layout({}, ["a.layers.0.w"], [(1,)], "config.json")
    assert not found.specs and found.warnings


def test_strip_prefixes_and_candidates() -> None:
    assert layout.strip_prefixes("module._orig_mod.x", ("module.", "_orig_mod.")) == "x"
    assert layout.strip_prefixes("x.module.y", ("module.",)) == "x.module.y"  # only a leading prefix
    candidates = layout.prefix_candidates()
    assert ("module.",) in candidates and ("module.", "_orig_mod.") in candidates


def test_classify(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    (tmp_path / "x.index.json").write_text(json.dumps({"weight_map": {}}))
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    (tmp_path / "m.parquet").write_bytes(b"")
    assert layout.classify(tmp_path / "config.json") == "config"
    assert layout.classify(tmp_path / "x.index.json") == "index"
    assert layout.classify(tmp_path / "m.parquet") == "manifest"
    assert layout.classify(tmp_path) == "config"  # a directory with only config.json
    (tmp_path / "a.safetensors").write_bytes(b"")
    assert layout.classify(tmp_path) == "reference"
    with pytest.raises(ValueError, match="neither"):
        layout.classify(tmp_path / "other.json")
    with pytest.raises(FileNotFoundError):
        layout.classify(tmp_path / "absent")


def test_manifest_csv_shapes(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text('file,key,dtype,shape,checksum\ns.safetensors,a,float32,"[2, 3]",00\n')
    specs = layout.table_specs(layout.read_manifest(path), checksums=True)
    assert specs["a"].shape == (2, 3) and specs["a"].dtype == "float32"


def test_model_layout_ties_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    (tmp_path / "tiny_factory.py").write_text(
        "import torch\n"
        "def build():\n"
        "    m = torch.nn.Module()\n"
        "    m.emb = torch.nn.Embedding(10, 4)\n"
        "    m.head = torch.nn.Linear(4, 10, bias=False)\n"
        "    m.head.weight = m.emb.weight\n"
        "    assert m.head.weight.device.type == 'meta'\n"
        "    return m\n"
        "def not_a_module():\n"
        "    return 3\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    found = layout.model_layout("tiny_factory:build")
    assert found.specs["emb.weight"].shape == (10, 4)
    assert found.ties == {"head.weight": "emb.weight"}
    with pytest.raises(ValueError, match="module:factory"):
        layout.model_layout("tiny_factory")
    with pytest.raises(TypeError, match="not a torch.nn.Module"):
        layout.model_layout("tiny_factory:not_a_module")


def test_transformers_layout_qwen2_tied(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.Qwen2Config(
        vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=True,
    )
    config.architectures = ["Qwen2ForCausalLM"]
    config.save_pretrained(tmp_path)
    found = layout.transformers_layout(tmp_path / "config.json")
    assert found.specs["model.layers.1.self_attn.q_proj.bias"].shape == (8,)
    assert found.ties.get("lm_head.weight") == "model.embed_tokens.weight"
    assert all(re.fullmatch(r"[\w.]+", key) for key in found.specs)


def test_structural_layout_hybrid_blocks() -> None:
    """Alternating attention and Mamba blocks are two signatures, not missing tensors; a
    partly written block is still held to its own kind."""
    actual: dict[str, tuple[int, ...] | None] = {}
    for i in range(4):
        kind = "attn" if i % 2 == 0 else "mamba"
        actual[f"m.layers.{i}.norm.weight"] = (4,)
        actual[f"m.layers.{i}.{kind}.a"] = (4, 4)
        actual[f"m.layers.{i}.{kind}.b"] = (4, 4)
    del actual["m.layers.3.mamba.b"]
    found = layout.structural_layout({"num_hidden_layers": 5}, list(actual), list(actual.values()), "config.json")
    absent = set(found.specs) - set(actual)
    # block 3 lacks its own kind's tensor; block 4 (absent) needs only what every kind has
    assert absent == {"m.layers.3.mamba.b", "m.layers.4.norm.weight"}


def test_tie_groups_need_one_member() -> None:
    from shardscan.checker import _keys_against

    found = layout.Layout(kind="model", source="m", specs={k: layout.Spec() for k in ("emb", "head", "head2", "x")},
                          ties={"head": "emb", "head2": "emb"})
    present = lambda *keys: {k: layout.Spec() for k in keys}  # noqa: E731
    assert _keys_against(found, present("head2", "x")) == (set(), set())  # any member stands in for the group
    assert _keys_against(found, present("x")) == ({"emb", "head", "head2"}, set())  # none: all missing
    assert _keys_against(found, present("emb", "x", "y")) == (set(), {"y"})


def test_structural_layout_first_block_holds_its_own(tmp_path: Path) -> None:
    """T5 keeps its relative position bias in block 0 only: a tensor of block 0 alone is not
    missing from the others, while a tensor most blocks hold still is."""
    transformers = pytest.importorskip("transformers")
    import shardscan
    from safetensors import safe_open

    config = transformers.T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=16, num_layers=4, num_heads=2)
    transformers.T5ForConditionalGeneration(config).save_pretrained(tmp_path)
    assert shardscan.check(tmp_path, hash=False).ok
    with safe_open(tmp_path / "model.safetensors", "pt") as handle:
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    bias = "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    assert bias in shapes
    found = layout.structural_layout(json.loads((tmp_path / "config.json").read_text()), list(shapes), list(shapes.values()), "config.json")
    assert set(found.specs) == {k for k in shapes if k.startswith("decoder.block.")}
    del shapes["decoder.block.2.layer.1.EncDecAttention.k.weight"]
    del shapes[bias]  # lost, block 0's own tensor cannot be known; the partial block 2 still is
    found = layout.structural_layout(json.loads((tmp_path / "config.json").read_text()), list(shapes), list(shapes.values()), "config.json")
    assert set(found.specs) - set(shapes) == {"decoder.block.2.layer.1.EncDecAttention.k.weight"}


def _block_of(key: str) -> tuple[str, str]:
    """The rule, component by component: the first block-list name followed by a number."""
    parts = key.split(".")
    for i in range(len(parts) - 2):
        if parts[i] in layout._BLOCK_CONTAINERS and parts[i + 1].isascii() and parts[i + 1].isdigit():
            return ".".join(parts[: i + 2]), ".".join(parts[i + 2 :])
    return "", ""


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["a", ".", "7", "01", "layers", "layer", "h", "blocks", "\n", "é", "٣", "\0", "\ud800"]),
                         max_size=10).map("".join), max_size=8))
def test_block_columns_follow_the_rule(keys: list[str]) -> None:
    # split in C; keys holding a NUL or a lone surrogate take the key-by-key path
    pairs = [_block_of(key) for key in keys]
    runs, suffixes = layout._block_columns(Names(keys))
    # the runs cover the keys in order, neighbouring runs in different blocks
    assert [start for _, start, _ in runs] == [0, *[end for _, _, end in runs]][: len(runs)]
    assert all(a[0] != b[0] for a, b in zip(runs, runs[1:]))
    heads = [head for head, start, end in runs for _ in range(start, end)]
    assert (heads, suffixes) == ([head for head, _ in pairs], [suffix for _, suffix in pairs])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "a.b", "", "é", "\0", "a\0", "\ud800"]), max_size=8))
def test_first_repeat_finds_the_first_name_given_twice(keys: list[str]) -> None:
    expected = next((i for i, key in enumerate(keys) if key in keys[:i]), len(keys))
    found = first_repeat(Names(keys))
    # The core cannot carry a name holding a NUL or a lone surrogate: it declines them all.
    assert found == (None if any("\0" in key or "\ud800" in key for key in keys) else expected)


@pytest.mark.parametrize("count", [0, 1, 3, 2**32 - 1])
def test_first_repeat_refuses_a_count_its_names_do_not_have(count: int) -> None:
    from shardscan._core import ffi, lib

    names = b"a\0b\0"  # two names
    first, err = ffi.new("uint32_t *"), ffi.new("ss_error *")
    assert lib.ss_first_repeat(names, len(names), count, first, err) == lib.SS_E_ARGUMENT, ffi.string(err.message)


@pytest.mark.parametrize("count", [0, 1, 3, 2**32 - 1])
def test_block_split_refuses_a_count_its_names_do_not_have(count: int) -> None:
    from shardscan._core import ffi, lib

    names = b"model.layers.0.w\0b\0"  # two names
    listing, err = ffi.new("ss_block_listing *"), ffi.new("ss_error *")
    status = lib.ss_block_split(names, len(names), count, b"layers\0\0", listing, err)
    lib.ss_block_listing_free(listing)
    assert status == lib.SS_E_ARGUMENT, ffi.string(err.message)


def _json_reading(raw: bytes) -> tuple[list[str], list[str], int | None]:
    """What the json module (transformers' reader) makes of an index: keys, their shards, total_size."""
    data = json.loads(raw)
    weight_map = data["weight_map"]
    total = data.get("metadata", {}).get("total_size")
    return list(weight_map), list(weight_map.values()), total


_names = st.text(st.characters(exclude_categories=("Cs",)), max_size=6)
_shards = st.sampled_from(["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "a\"b", "é"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_names, _shards), max_size=12), st.one_of(st.none(), st.integers(-5, 2**64), st.floats(), st.text(max_size=3)),
       st.booleans(), st.sampled_from(["", " ", "\n\t "]), st.booleans())
def test_index_read_in_c_agrees_with_json(entries: list[tuple[str, str]], total: object, ascii_only: bool, space: str,
                                          metadata_first: bool) -> None:
    from shardscan._core import parse_index

    # json.dumps of a list of pairs keeps repeated keys, which json.loads resolves its own way
    body = ",".join(f"{json.dumps(k, ensure_ascii=ascii_only)}:{space}{json.dumps(v, ensure_ascii=ascii_only)}" for k, v in entries)
    meta = f'"metadata":{space}{{"total_size": {json.dumps(total)}, "format": "pt"}}' if total is not None else '"metadata": {}'
    members = [meta, f'"weight_map":{space}{{{body}}}']
    raw = (space + "{" + ",".join(members if metadata_first else members[::-1]) + "}" + space).encode()
    keys, shards, total_size = _json_reading(raw)
    plain = parse_index(raw)
    simple_total = total is None or (type(total) is int and 0 <= total < 2**63)
    if len(set(k for k, _ in entries)) == len(entries) and simple_total:
        assert plain is not None  # a plain index takes the C path
    if plain is not None:
        assert plain.keys == keys
        assert [plain.shards[i] for i in plain.shard_of] == shards
        assert plain.total_size == total_size
        assert len(set(plain.shards)) == len(plain.shards)


@pytest.mark.parametrize("raw", [b"", b"[]", b'{"weight_map": []}', b'{"weight_map": {"a": 1}}', b'{"weight_map": {"a": "x"}} x',
                                 b'\xef\xbb\xbf{"weight_map": {}}', b'{"weight_map": {"a": "x", "a": "y"}}',
                                 b'{"weight_map": {}, "weight_map": {"a": "x"}}', b'{"metadata": {"total_size": 1.5}, "weight_map": {}}',
                                 b'{"weight_map": {"\\ud800": "x"}}', b'{"weight_map": {"a": "x"}, "n": NaN}', b'{"metadata": []}'])
def test_index_read_in_c_leaves_the_rest_to_json(raw: bytes) -> None:
    from shardscan._core import parse_index

    assert parse_index(raw) is None


@pytest.mark.parametrize("odd", ["a\0b", "\ud800"])
def test_index_compared_in_c_declines_names_it_cannot_carry(odd: str) -> None:
    from shardscan._core import parse_index

    index = parse_index(b'{"weight_map": {"a": "s1", "b": "s2"}}')
    assert index.compare(Names(["a", "b"]), [0, 0]) == (b"\x01\x02", [0, 0], b"\x01\x01")  # b is in s1, not s2
    assert index.compare(Names([odd, "b"]), [0, 1]) is None  # a NUL would split a name; UTF-8 holds no surrogate
