"""MoE-aware structural layouts, against checkpoints transformers itself writes.

Each family's tiny model is built by AutoModelForCausalLM.from_config and saved sharded by
save_pretrained. DeepSeek V2/V3, Kimi K2 (the DeepSeek-V3 architecture), Qwen2/3-MoE and
Mixtral are written one tensor per expert, as their hub checkpoints are (transformers fuses the
experts in memory and splits them again on save); GPT-OSS as one fused tensor of all experts.

The oracle is transformers loading the damaged checkpoint: its conversion mapping names the
in-memory tensor each of our file keys feeds, and from_pretrained must report exactly those as
missing, unexpected or mis-sized. (It cannot name a missing per-expert key itself: it stacks
the experts that are there and reports the fused tensor as one expert short.)
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import shardscan  # noqa: E402
from shardscan import layout, moe  # noqa: E402
from shardscan.report import render_report  # noqa: E402

INDEX = "model.safetensors.index.json"
LAYERS = 4
COMMON = dict(vocab_size=64, hidden_size=16, num_attention_heads=2, num_key_value_heads=1,
              num_hidden_layers=LAYERS, max_position_embeddings=64)
# DeepSeek's multi-head latent attention and its expert sizes, shrunk
MLA = dict(q_lora_rank=8, kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=4,
           intermediate_size=32, moe_intermediate_size=8, num_experts_per_tok=2)


def _config(family: str) -> Any:
    """A tiny config per family, each exercising its own way of naming dense layers."""
    t = transformers
    if family == "deepseek_v3":  # layer 0 dense, one MTP layer after the stack
        return t.DeepseekV3Config(**COMMON, **MLA, n_routed_experts=8, n_shared_experts=1, first_k_dense_replace=1,
                                  n_group=2, topk_group=1, num_nextn_predict_layers=1)
    if family == "kimi_k2":  # Kimi K2: DeepSeek-V3 architecture, one expert group, no MTP layer
        return t.DeepseekV3Config(**COMMON, **MLA, n_routed_experts=12, n_shared_experts=1, first_k_dense_replace=1,
                                  n_group=1, topk_group=1, num_nextn_predict_layers=0)
    if family == "deepseek_v2":  # layers 0 and 1 dense, two shared experts
        return t.DeepseekV2Config(**COMMON, **MLA, n_routed_experts=8, n_shared_experts=2, first_k_dense_replace=2)
    if family == "qwen2_moe":  # MoE every second layer, layer 3 dense by mlp_only_layers: only layer 1 is MoE
        return t.Qwen2MoeConfig(**COMMON, intermediate_size=32, moe_intermediate_size=8, shared_expert_intermediate_size=16,
                                num_experts=8, num_experts_per_tok=2, decoder_sparse_step=2, mlp_only_layers=[3])
    if family == "qwen3_moe":  # every layer MoE but layer 1
        return t.Qwen3MoeConfig(**COMMON, head_dim=8, intermediate_size=32, moe_intermediate_size=8, num_experts=8,
                                num_experts_per_tok=2, decoder_sparse_step=1, mlp_only_layers=[1])
    if family == "mixtral":  # every layer MoE; hub checkpoints name them block_sparse_moe.experts.N.w1
        return t.MixtralConfig(**COMMON, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2)
    if family == "gpt_oss":  # every layer MoE, experts fused on disk
        return t.GptOssConfig(**COMMON, head_dim=8, intermediate_size=16, num_local_experts=8, num_experts_per_tok=2)
    if family == "glm4_moe":  # DeepSeek's dense-layer fields, its own attention
        return t.Glm4MoeConfig(**COMMON, intermediate_size=32, moe_intermediate_size=8, n_routed_experts=8, n_shared_experts=1,
                               first_k_dense_replace=1, num_experts_per_tok=2, n_group=1, topk_group=1, head_dim=8,
                               num_nextn_predict_layers=1)
    if family == "jamba":  # MoE every second layer from layer 1, Mamba and attention blocks interleaved
        return t.JambaConfig(**COMMON, intermediate_size=32, num_experts=4, num_experts_per_tok=2, expert_layer_period=2,
                             expert_layer_offset=1, attn_layer_period=2, attn_layer_offset=1, mamba_d_state=4,
                             mamba_expand=2, mamba_dt_rank=4)
    if family == "llama4":  # MoE every second layer, experts fused on disk next to a shared expert
        return t.Llama4TextConfig(**COMMON, intermediate_size=32, intermediate_size_mlp=32, num_local_experts=4,
                                  num_experts_per_tok=1, interleave_moe_layer_step=2, head_dim=8)
    if family == "ernie4_5_moe":  # MoE from layer 2 to the last, on every layer
        return t.Ernie4_5_MoeConfig(**COMMON, intermediate_size=32, moe_num_experts=4, moe_k=2, moe_intermediate_size=8,
                                    moe_layer_start_index=2, moe_layer_end_index=-1)
    raise AssertionError(family)


PER_EXPERT = ("deepseek_v3", "kimi_k2", "deepseek_v2", "qwen2_moe", "qwen3_moe", "mixtral")
#: families with hub names in moe.MOE_TENSORS
FAMILIES = PER_EXPERT + ("gpt_oss",)
#: and families whose dense-layer rules are known but not their names
OTHERS = ("glm4_moe", "jamba", "llama4", "ernie4_5_moe")


class Saved:
    """One family's model and the checkpoint save_pretrained wrote for it."""

    def __init__(self, family: str, root: Path) -> None:
        self.family = family
        self.config = _config(family)
        torch.manual_seed(0)
        self.model = transformers.AutoModelForCausalLM.from_config(self.config)
        self.path = root / family
        self.model.save_pretrained(self.path, max_shard_size="20KB")
        if family == "kimi_k2":
            # a Kimi K2 repo's config.json: its own model_type, remote code, moe_layer_freq written out
            raw = json.loads((self.path / "config.json").read_text())
            raw.update(model_type="kimi_k2", moe_layer_freq=1,
                       auto_map={"AutoConfig": "configuration_deepseek.DeepseekV3Config",
                                 "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM"})
            (self.path / "config.json").write_text(json.dumps(raw, indent=2))
        # which layers transformers builds with experts, and how many (it holds them fused, experts
        # along the first dimension): the oracle for what the config's fields mean
        experts = {i: module for i, block in enumerate(self.model.model.layers)
                   for name, module in block.named_modules() if name.rsplit(".", 1)[-1] == "experts"}
        self.moe_layers = sorted(experts)
        self.experts = next(experts[self.moe_layers[0]].parameters()).shape[0]

    def copy(self, to: Path) -> Path:
        shutil.copytree(self.path, to)
        return to

    def load_report(self, path: Path) -> dict[str, set[str]]:
        """What transformers' own loading says about `path`: in-memory names that are
        missing, unexpected or of another size than the model's."""
        _, info = type(self.model).from_pretrained(path, config=self.config, output_loading_info=True,
                                                   ignore_mismatched_sizes=True)
        return {"missing": set(info["missing_keys"]), "unexpected": set(info["unexpected_keys"]),
                "mismatched": {key for key, *_ in info["mismatched_keys"]}}

    def in_memory(self, keys: set[str] | tuple[str, ...]) -> set[str]:
        """The in-memory tensor each checkpoint key feeds, by transformers' conversion mapping."""
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

        conversions = get_model_conversion_mapping(self.model)
        renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
        converters = [c for c in conversions if isinstance(c, WeightConverter)]
        return {rename_source_key(key, renamings, converters)[0] for key in keys}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Saved]:
    root = tmp_path_factory.mktemp("moe")
    cache: dict[str, Saved] = {}

    def get(family: str) -> Saved:
        if family not in cache:
            cache[family] = Saved(family, root)
        return cache[family]

    return get


def rewrite(directory: Path, edit: Callable[[str, Any], Any]) -> set[str]:
    """Rewrites every shard with `edit(key, tensor)` -> tensor, or None to drop the key, and
    the index to match (weight_map and total_size), as a consistent checkpoint would be.
    Returns the dropped keys."""
    index_path = directory / INDEX
    index = json.loads(index_path.read_text())
    weight_map: dict[str, str] = index["weight_map"]
    dropped: set[str] = set()
    for shard in sorted(set(weight_map.values())):
        tensors = load_file(directory / shard)
        edited = {key: edit(key, tensor) for key, tensor in tensors.items()}
        if all(edited[key] is tensors[key] for key in tensors):
            continue
        dropped |= {key for key, tensor in edited.items() if tensor is None}
        kept = {key: tensor.contiguous() for key, tensor in edited.items() if tensor is not None}
        if kept:
            save_file(kept, directory / shard, metadata={"format": "pt"})
        else:
            (directory / shard).unlink()
    for key in dropped:
        del weight_map[key]
    _write_index(directory, index)
    return dropped


def add_shard(directory: Path, name: str, tensors: dict[str, Any]) -> None:
    save_file({k: t.contiguous() for k, t in tensors.items()}, directory / name, metadata={"format": "pt"})
    index = json.loads((directory / INDEX).read_text())
    index["weight_map"].update({key: name for key in tensors})
    _write_index(directory, index)


def _write_index(directory: Path, index: dict[str, Any]) -> None:
    total = 0
    for shard in sorted(set(index["weight_map"].values())):
        total += sum(t.numel() * t.element_size() for t in load_file(directory / shard).values())
    index["metadata"] = {"total_size": total}
    (directory / INDEX).write_text(json.dumps(index, indent=2))


def file_keys(directory: Path) -> set[str]:
    return set(json.loads((directory / INDEX).read_text())["weight_map"])


def layer_of(key: str) -> int:
    return int(key.split(".")[2])


# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES + OTHERS)
def test_intact_checkpoint_is_expected_exactly(saved: Callable[[str], Saved], family: str) -> None:
    """The structural layout of a whole checkpoint is exactly the block keys transformers
    wrote: every expert of every MoE layer, no experts in dense layers; and the config's
    dense-layer rules pick the layers transformers builds with experts."""
    s = saved(family)
    raw = layout.read_config(s.path)
    plan = moe.moe_plan(raw, LAYERS)
    assert plan is not None and plan.experts == s.experts
    assert [i for i, kind in enumerate(plan.kinds) if kind == moe.MOE] == s.moe_layers
    if family not in ("mixtral", "gpt_oss"):  # each tiny config has a dense layer where its family can
        assert 0 < len(s.moe_layers) < LAYERS
    shapes = {}
    for shard in sorted(set(json.loads((s.path / INDEX).read_text())["weight_map"].values())):
        with safe_open(s.path / shard, "pt") as handle:
            shapes.update({key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()})
    found = layout.structural_layout(raw, list(shapes), list(shapes.values()), "config.json")
    assert set(found.specs) == {key for key in shapes if key.startswith("model.layers.")}
    assert all(found.specs[key].shape == shape for key, shape in shapes.items() if key in found.specs)
    report = shardscan.check(s.path, hash=False)
    assert report.ok, render_report(report)
    assert "config.json (structural)" in report.layouts


@pytest.mark.parametrize("family", PER_EXPERT + ("glm4_moe", "jamba", "ernie4_5_moe"))
def test_last_expert_missing_in_every_layer_fails(saved: Callable[[str], Saved], family: str, tmp_path: Path) -> None:
    """The index is consistent (the keys are gone from it too); only config.json can tell."""
    s = saved(family)
    path = s.copy(tmp_path / family)
    last = f".experts.{s.experts - 1}."
    dropped = rewrite(path, lambda key, tensor: None if last in key else tensor)
    assert {layer_of(key) for key in dropped} == set(s.moe_layers)
    report = shardscan.check(path, hash=False)
    assert not report.ok
    assert set(report.missing) == dropped and not report.unexpected and not report.mismatched
    loaded = s.load_report(path)
    # transformers stacks the experts it finds: each fused tensor is one expert short
    assert loaded["mismatched"] == s.in_memory(report.missing) and not loaded["missing"] and not loaded["unexpected"]


def test_missing_experts_are_listed_compactly(saved: Callable[[str], Saved], tmp_path: Path) -> None:
    s = saved("deepseek_v3")
    path = s.copy(tmp_path / "ds")
    rewrite(path, lambda key, tensor: None if ".experts.7." in key else tensor)
    text = render_report(shardscan.check(path, hash=False))
    assert "missing 9 tensors: model.layers.{1..3}.mlp.experts.7.{down,gate,up}_proj.weight" in text


def _fused_checkpoint(s: Saved, path: Path) -> None:
    """The model's in-memory state dict written as is (experts fused), in two shards with an
    index: transformers loads this form without conversion."""
    state = {key: tensor.detach().clone() for key, tensor in s.model.state_dict().items()}
    keys = sorted(state)
    path.mkdir()
    s.model.config.save_pretrained(path)
    halves = {"a.safetensors": keys[: len(keys) // 2], "b.safetensors": keys[len(keys) // 2 :]}
    for name, half in halves.items():
        save_file({k: state[k].contiguous() for k in half}, path / name, metadata={"format": "pt"})
    _write_index(path, {"weight_map": {k: name for name, half in halves.items() for k in half}})


@pytest.mark.parametrize("family", ["gpt_oss", "llama4", "mixtral", "deepseek_v3"])
def test_fused_experts_one_short_are_mismatched(saved: Callable[[str], Saved], family: str, tmp_path: Path) -> None:
    s = saved(family)
    if family in ("gpt_oss", "llama4"):
        path = s.copy(tmp_path / family)  # save_pretrained writes these fused
    else:
        path = tmp_path / family
        _fused_checkpoint(s, path)
    assert shardscan.check(path, hash=False).ok
    fused = lambda key: re.search(r"\.experts\.[^0-9]", key) is not None  # noqa: E731
    rewrite(path, lambda key, tensor: tensor[:-1].clone() if fused(key) else tensor)
    report = shardscan.check(path, hash=False)
    shape_mismatches = {m.key for m in report.mismatched if m.field == "shape"}
    assert not report.missing and not report.unexpected and shape_mismatches
    assert all(m.expected[0] == s.experts and m.actual[0] == s.experts - 1 for m in report.mismatched)
    assert shape_mismatches == s.load_report(path)["mismatched"]


def _moe_part(layer: int) -> tuple[str, str]:
    return f"model.layers.{layer}.mlp.", f"model.layers.{layer}.block_sparse_moe."


@pytest.mark.parametrize("family", ["deepseek_v3", "qwen3_moe", "mixtral", "gpt_oss"])
def test_moe_layer_without_its_moe_block(saved: Callable[[str], Saved], family: str, tmp_path: Path) -> None:
    """A MoE layer that lost its whole MoE block holds a subset of a dense block's tensors
    too; the config says which kind it is, so its experts, router and shared experts are missing."""
    s = saved(family)
    path = s.copy(tmp_path / family)
    dropped = rewrite(path, lambda key, tensor: None if key.startswith(_moe_part(s.moe_layers[-1])) else tensor)
    report = shardscan.check(path, hash=False)
    assert set(report.missing) == dropped and not report.unexpected
    assert s.load_report(path)["missing"] == s.in_memory(report.missing)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_moe_block_gone(saved: Callable[[str], Saved], family: str, tmp_path: Path) -> None:
    """No block shows what an expert is called: the family's hub naming is expected."""
    s = saved(family)
    path = s.copy(tmp_path / family)
    parts = tuple(p for layer in s.moe_layers for p in _moe_part(layer))
    dropped = rewrite(path, lambda key, tensor: None if key.startswith(parts) else tensor)
    report = shardscan.check(path, hash=False)
    assert set(report.missing) == dropped and not report.unexpected
    assert s.load_report(path)["missing"] == s.in_memory(report.missing)


@pytest.mark.parametrize("family", ["deepseek_v3", "deepseek_v2", "qwen2_moe"])
def test_shared_experts_missing_from_every_layer(saved: Callable[[str], Saved], family: str, tmp_path: Path) -> None:
    s = saved(family)
    path = s.copy(tmp_path / family)
    dropped = rewrite(path, lambda key, tensor: None if ".shared_expert" in key else tensor)
    assert dropped
    report = shardscan.check(path, hash=False)
    assert set(report.missing) == dropped and not report.unexpected
    assert s.load_report(path)["missing"] == s.in_memory(report.missing)


def test_experts_in_a_dense_layer_are_unexpected(saved: Callable[[str], Saved], tmp_path: Path) -> None:
    s = saved("deepseek_v3")
    path = s.copy(tmp_path / "ds")
    source = f"model.layers.{s.moe_layers[0]}.mlp.experts."
    assert 0 not in s.moe_layers
    copied = {}
    for shard in sorted(set(json.loads((path / INDEX).read_text())["weight_map"].values())):
        copied.update({k.replace(source, "model.layers.0.mlp.experts."): t
                       for k, t in load_file(path / shard).items() if k.startswith(source)})
    add_shard(path, "extra.safetensors", copied)
    report = shardscan.check(path, hash=False)
    assert set(report.unexpected) == set(copied) and not report.missing
    assert s.load_report(path)["unexpected"] == s.in_memory(report.unexpected)


def _mtp_layer(s: Saved, root: Path) -> dict[str, Any]:
    """Block `num_hidden_layers` as DeepSeek-V3 checkpoints ship it: a whole decoder layer
    (taken from the same model with one more layer, as save_pretrained writes it, per expert)
    plus the MTP module's own tensors (embedding, the two norms, the projection, the head)."""
    deeper = copy.deepcopy(s.config)
    deeper.num_hidden_layers = LAYERS + 1
    model = transformers.AutoModelForCausalLM.from_config(deeper)
    model.save_pretrained(root / "deeper", max_shard_size="20KB")
    prefix = f"model.layers.{LAYERS}."
    tensors = {}
    for shard in sorted(set(json.loads((root / "deeper" / INDEX).read_text())["weight_map"].values())):
        tensors.update({k: t for k, t in load_file(root / "deeper" / shard).items() if k.startswith(prefix)})
    hidden, vocab = s.config.hidden_size, s.config.vocab_size
    own = {"embed_tokens.weight": (vocab, hidden), "enorm.weight": (hidden,), "hnorm.weight": (hidden,),
           "eh_proj.weight": (hidden, 2 * hidden), "shared_head.norm.weight": (hidden,),
           "shared_head.head.weight": (vocab, hidden)}
    tensors.update({prefix + name: torch.zeros(shape) for name, shape in own.items()})
    return tensors


def test_mtp_layers_are_allowed_whole_and_bounded(saved: Callable[[str], Saved], tmp_path: Path) -> None:
    s = saved("deepseek_v3")
    mtp = _mtp_layer(s, tmp_path)
    assert any(".experts.7." in key for key in mtp)
    path = s.copy(tmp_path / "ds")
    add_shard(path, "mtp.safetensors", mtp)
    report = shardscan.check(path, hash=False)
    assert report.ok and not report.unexpected, render_report(report)
    # present, the MTP layer is held to its whole MoE block like any other
    rewrite(path, lambda key, tensor: None if key.startswith(f"model.layers.{LAYERS}.mlp.experts.7.") else tensor)
    report = shardscan.check(path, hash=False)
    assert set(report.missing) == {f"model.layers.{LAYERS}.mlp.experts.7.{p}_proj.weight" for p in ("gate", "up", "down")}
    # one block further is beyond what the config declares
    add_shard(path, "beyond.safetensors", {f"model.layers.{LAYERS + 1}.enorm.weight": torch.zeros(s.config.hidden_size)})
    assert shardscan.check(path, hash=False).unexpected == (f"model.layers.{LAYERS + 1}.enorm.weight",)


@pytest.mark.parametrize(
    "config, kinds, mtp",
    [
        # DeepSeek-V3 / Kimi K2 as their hubs write them: three (one) dense layers first
        ({"n_routed_experts": 256, "first_k_dense_replace": 3, "moe_layer_freq": 1, "num_nextn_predict_layers": 1}, "DDDMMM", 1),
        ({"n_routed_experts": 384, "first_k_dense_replace": 1, "moe_layer_freq": 1, "num_nextn_predict_layers": 0}, "DMMMMM", 0),
        ({"n_routed_experts": 64, "first_k_dense_replace": 1, "moe_layer_freq": 2}, "DDMDMD", 0),  # remote code's i % freq
        ({"num_experts": 60, "decoder_sparse_step": 1}, "MMMMMM", 0),  # Qwen1.5-MoE
        ({"num_experts": 128, "decoder_sparse_step": 2, "mlp_only_layers": [5]}, "DMDMDD", 0),
        ({"num_experts": 0, "decoder_sparse_step": 1}, None, 0),  # Qwen2-MoE made dense
        ({"num_local_experts": 8}, "MMMMMM", 0),  # Mixtral, GPT-OSS
        ({"text_config": {"num_experts": 8, "mlp_only_layers": [0]}}, "DMMMMM", 0),  # a multimodal config's language model
        ({"intermediate_size": 8}, None, 0),  # dense
        ({"num_experts": 16, "expert_layer_period": 2, "expert_layer_offset": 1}, "DMDMDM", 0),  # Jamba
        ({"num_experts": 1, "expert_layer_period": 2, "expert_layer_offset": 1}, "DDDDDD", 0),  # Jamba's one expert: an MLP
        ({"num_local_experts": 16, "moe_layers": [0, 5], "interleave_moe_layer_step": 2}, "MDDDDM", 0),  # Llama 4: the list wins
        ({"moe_num_experts": 64, "moe_layer_start_index": 1, "moe_layer_end_index": -1, "moe_layer_interval": 2}, "DMDMDM", 0),
    ],
)
def test_moe_plan_rules(config: dict, kinds: str | None, mtp: int) -> None:
    plan = moe.moe_plan(config, 6)
    if kinds is None:
        assert plan is None
        return
    assert plan is not None
    assert "".join("M" if k == moe.MOE else "D" for k in plan.kinds) == kinds and plan.mtp_layers == mtp
    assert plan.kind(6) == (moe.MTP if mtp else None) and plan.kind(6 + mtp) is None


def test_expert_suffix_forms() -> None:
    assert moe.expert_placeholder("mlp.experts.7.gate_proj.weight") == ("mlp.experts.*.gate_proj.weight", 7)
    assert moe.expert_placeholder("block_sparse_moe.experts.12.w1.weight_scale_inv") == (
        "block_sparse_moe.experts.*.w1.weight_scale_inv", 12)
    assert moe.expert_placeholder("mlp.experts.gate_up_proj") is None  # fused
    assert moe.expert_placeholder("mlp.shared_experts.gate_proj.weight") is None
    assert moe.is_fused_expert("mlp.experts.gate_up_proj_bias") and not moe.is_fused_expert("mlp.experts.3.w1.weight")
    assert not moe.is_fused_expert("mlp.shared_experts.down_proj.weight")
    assert not moe.is_fused_expert("mlp.experts.expert_0.wi.weight")  # Switch, NLLB-MoE: per-expert modules
    assert moe.moe_plan({"is_encoder_decoder": True, "num_experts": 8, "decoder_sparse_step": 2}, 6) is None


@pytest.mark.parametrize("family", ["switch_transformers", "nllb_moe"])
def test_encoder_decoder_moe_checks_clean(family: str, tmp_path: Path) -> None:
    """Encoder-decoder MoE models keep two block stacks and name experts expert_N; their
    sparse-step fields mean something else than Qwen's and must not invent findings."""
    t = transformers
    if family == "switch_transformers":
        config = t.SwitchTransformersConfig(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=4, num_decoder_layers=4,
                                            num_heads=2, num_experts=4, encoder_sparse_step=2, decoder_sparse_step=2)
    else:
        config = t.NllbMoeConfig(vocab_size=64, d_model=16, encoder_layers=4, decoder_layers=4, encoder_attention_heads=2,
                                 decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_experts=4,
                                 encoder_sparse_step=2, decoder_sparse_step=2, max_position_embeddings=64)
    t.AutoModelForSeq2SeqLM.from_config(config).save_pretrained(tmp_path, max_shard_size="30KB")
    report = shardscan.check(tmp_path, hash=False)
    assert report.ok, render_report(report)


@pytest.mark.parametrize("family", FAMILIES + OTHERS)
def test_blocks_measured_block_by_block_find_what_the_key_by_key_comparison_finds(
        saved: Callable[[str], Saved], family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Experts lost from one layer, a whole layer lost, a tensor of another shape and a layer
    past num_hidden_layers: the same report whether the structural layout is measured block by
    block or expanded to every key and compared one by one."""
    s = saved(family)
    path = s.copy(tmp_path / family)
    first, last = s.moe_layers[0], LAYERS - 1
    resized: list[str] = []
    common = "mamba" if family == "jamba" else "attn"  # a tensor other blocks of its kind hold too

    def damage(key: str, tensor: Any) -> Any:
        if not key.startswith("model.layers."):
            return tensor
        if layer_of(key) == first and f".experts.{s.experts - 1}." in key or layer_of(key) == last:
            return None
        if not resized and tensor.dim() == 2 and common in key and layer_of(key) not in (first, last):
            resized.append(key)
            return torch.zeros(tensor.shape[0], tensor.shape[1] + 1, dtype=tensor.dtype)
        return tensor

    rewrite(path, damage)
    shard = next(iter(sorted(path.glob("*.safetensors"))))
    deeper = load_file(shard)
    deeper[f"model.layers.{LAYERS + 3}.input_layernorm.weight"] = torch.ones(4)
    save_file(deeper, shard, metadata={"format": "pt"})
    used = []
    real = layout.BlockLayout.block_findings
    monkeypatch.setattr(layout.BlockLayout, "block_findings", lambda self: used.append(real(self)) or used[-1])
    by_block = shardscan.check(path, hash=False).to_dict()
    assert used and used[0] is not None  # the blocks were measured as blocks
    monkeypatch.setattr(layout.BlockLayout, "block_findings", lambda self: None)
    key_by_key = shardscan.check(path, hash=False).to_dict()
    by_block.pop("elapsed"), key_by_key.pop("elapsed")
    assert by_block == key_by_key
    # (with two blocks of a kind, the resized tensor may be the one that sets the shape)
    assert by_block["missing"] and by_block["unexpected"] and by_block["mismatched"] and resized
