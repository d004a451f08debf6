"""What a config.json says about mixture-of-experts layers, standard library only.

The structural check learns from the checkpoint itself which tensors a block holds; what it
cannot learn there is what every MoE layer lacks alike (the last expert of every layer, the
shared experts of every layer) or which blocks are meant to be dense. That is written in
config.json, in fields each family names its own way:

* routed experts per MoE layer: `n_routed_experts` (DeepSeek V2/V3, Kimi K2, GLM-4 MoE),
  `num_local_experts` (Mixtral, GPT-OSS, PhiMoE), `num_experts` (Qwen2/Qwen3-MoE, OLMoE),
  `moe_num_experts` (ERNIE 4.5);
* which layers are MoE (the others are dense):
  - `first_k_dense_replace`, `moe_layer_freq` (DeepSeek, GLM-4 MoE): i >= first_k_dense_replace
    and i % moe_layer_freq == 0;
  - `decoder_sparse_step`, `mlp_only_layers` (Qwen): i not in mlp_only_layers and
    (i + 1) % decoder_sparse_step == 0;
  - `moe_layer_start_index`, `moe_layer_end_index`, `moe_layer_interval` (ERNIE 4.5): start <= i
    <= end (-1: the last layer) and (i + 1) % interval == 0;
  - `expert_layer_period`, `expert_layer_offset` (Jamba): i % period == offset;
  - `moe_layers`, else `interleave_moe_layer_step` (Llama 4): the listed layers, else every
    step-th layer from step - 1;
  - none of these: every layer, as in Mixtral and GPT-OSS;
* shared experts: `n_shared_experts` (DeepSeek: one MLP, `mlp.shared_experts.*`),
  `shared_expert_intermediate_size` (Qwen2-MoE: `mlp.shared_expert.*` and its gate);
* multi-token-prediction layers: `num_nextn_predict_layers`, which DeepSeek-V3 checkpoints
  store as the blocks numbered num_hidden_layers and up (transformers drops them on load).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

#: config.json fields that give the number of routed experts per MoE layer, in the order tried.
EXPERT_COUNT_FIELDS = ("n_routed_experts", "num_local_experts", "num_experts", "moe_num_experts")

#: Shared-expert tensors, relative to the module holding the experts (`mlp`), per declaring field.
SHARED_EXPERT_SUFFIXES = {
    "n_shared_experts": ("shared_experts.gate_proj.weight", "shared_experts.up_proj.weight",
                         "shared_experts.down_proj.weight"),
    "shared_expert_intermediate_size": ("shared_expert.gate_proj.weight", "shared_expert.up_proj.weight",
                                        "shared_expert.down_proj.weight", "shared_expert_gate.weight"),
}

_PER_EXPERT_MLP = ("mlp.experts.*.gate_proj.weight", "mlp.experts.*.up_proj.weight", "mlp.experts.*.down_proj.weight")

#: The MoE module's tensors in each family's hub checkpoints (per expert: `*`), relative to the
#: block. Expected only when no MoE block holds any expert tensor, so there is nothing to learn
#: the names from; otherwise the blocks' own names (quantisation scales included) are used.
MOE_TENSORS = {
    "deepseek_v2": (*_PER_EXPERT_MLP, "mlp.gate.weight"),
    "deepseek_v3": (*_PER_EXPERT_MLP, "mlp.gate.weight", "mlp.gate.e_score_correction_bias"),
    "kimi_k2": (*_PER_EXPERT_MLP, "mlp.gate.weight", "mlp.gate.e_score_correction_bias"),
    "qwen2_moe": (*_PER_EXPERT_MLP, "mlp.gate.weight"),
    "qwen3_moe": (*_PER_EXPERT_MLP, "mlp.gate.weight"),
    "mixtral": ("block_sparse_moe.experts.*.w1.weight", "block_sparse_moe.experts.*.w2.weight",
                "block_sparse_moe.experts.*.w3.weight", "block_sparse_moe.gate.weight"),
    "gpt_oss": ("mlp.experts.gate_up_proj", "mlp.experts.gate_up_proj_bias", "mlp.experts.down_proj",
                "mlp.experts.down_proj_bias", "mlp.router.weight", "mlp.router.bias"),
}

MOE, DENSE, MTP = "moe", "dense", "mtp"


@dataclass(frozen=True)
class MoePlan:
    """The expert structure a config declares for blocks 0..len(kinds)-1 and its MTP blocks.

    `experts`: routed experts in every MoE layer. `kinds[i]`: MOE or DENSE. `explicit`: the
    config itself names its dense layers (otherwise every layer is MoE by default, and a
    block without experts may be a dense block of a family these rules do not know).
    `mtp_layers`: blocks len(kinds) .. len(kinds) + mtp_layers - 1 are multi-token-prediction
    layers: allowed, and whole when present, but never required. `shared`: the shared-expert
    tensors every MoE layer holds, relative to the module holding its experts. `tensors`: the
    family's MoE tensors (MOE_TENSORS), empty for a family not listed there."""

    experts: int
    kinds: tuple[str, ...]
    explicit: bool
    mtp_layers: int
    shared: tuple[str, ...]
    tensors: tuple[str, ...] = ()

    def kind(self, index: int) -> str | None:
        """MOE, DENSE or MTP for block `index`; None for a block the config does not have."""
        if index < len(self.kinds):
            return self.kinds[index]
        if index < len(self.kinds) + self.mtp_layers:
            return MTP
        return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _scope(config: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The part of the config that declares experts: the config itself, or the language
    model's `text_config` of a multimodal config."""
    text = config.get("text_config")
    for scope in (config, text if isinstance(text, dict) else {}):
        if any(_int(scope.get(name)) for name in EXPERT_COUNT_FIELDS):
            return scope
    return None


def moe_plan(config: Mapping[str, Any], layers: int) -> MoePlan | None:
    """The expert structure of a config with `layers` decoder blocks, or None when it
    declares no routed experts (a dense model, or `num_experts` = 0)."""
    if config.get("is_encoder_decoder") is True:
        return None  # Switch, NLLB-MoE: two block stacks, and their sparse-step fields mean other things
    scope = _scope(config)
    if scope is None:
        return None
    experts = next(n for n in (_int(scope.get(name)) for name in EXPERT_COUNT_FIELDS) if n)
    if experts < 1:
        return None
    kinds, explicit = _layer_kinds(scope, layers)
    mtp = _int(scope.get("num_nextn_predict_layers")) or 0
    shared: tuple[str, ...] = ()
    for name, suffixes in SHARED_EXPERT_SUFFIXES.items():
        if (_int(scope.get(name)) or 0) > 0:
            shared = suffixes
            break
    model_type = scope.get("model_type", config.get("model_type"))
    return MoePlan(experts=experts, kinds=kinds, explicit=explicit, mtp_layers=max(mtp, 0), shared=shared,
                   tensors=MOE_TENSORS.get(model_type, ()) if isinstance(model_type, str) else ())


def _layer_kinds(scope: Mapping[str, Any], layers: int) -> tuple[tuple[str, ...], bool]:
    """(kind of every block, whether the config names its dense layers)."""
    if "first_k_dense_replace" in scope or "moe_layer_freq" in scope:
        first_moe = _int(scope.get("first_k_dense_replace")) or 0
        every = _int(scope.get("moe_layer_freq")) or 1
        return tuple(MOE if i >= first_moe and i % every == 0 else DENSE for i in range(layers)), True
    if "decoder_sparse_step" in scope or "mlp_only_layers" in scope:
        step = _int(scope.get("decoder_sparse_step")) or 1
        listed = scope.get("mlp_only_layers")
        dense = {i for i in listed if _int(i) is not None} if isinstance(listed, list) else set()
        return tuple(MOE if i not in dense and (i + 1) % step == 0 else DENSE for i in range(layers)), True
    if any(name in scope for name in ("moe_layer_start_index", "moe_layer_end_index", "moe_layer_interval")):
        first = _int(scope.get("moe_layer_start_index"))
        last = _int(scope.get("moe_layer_end_index"))
        every = _int(scope.get("moe_layer_interval")) or 1
        first = 1 if first is None else first
        last = layers - 1 if last is None or last == -1 else last
        return tuple(MOE if first <= i <= last and (i + 1) % every == 0 else DENSE for i in range(layers)), True
    if "expert_layer_period" in scope or "expert_layer_offset" in scope:
        every = _int(scope.get("expert_layer_period")) or 2
        offset = _int(scope.get("expert_layer_offset"))
        offset = 1 if offset is None else offset
        many = (_int(scope.get("num_experts")) or 0) > 1  # Jamba's one expert is a dense MLP
        return tuple(MOE if many and i % every == offset else DENSE for i in range(layers)), True
    if isinstance(scope.get("moe_layers"), list) or "interleave_moe_layer_step" in scope:
        listed = scope.get("moe_layers")
        if isinstance(listed, list):
            chosen = {i for i in listed if _int(i) is not None}
        else:
            step = _int(scope.get("interleave_moe_layer_step")) or 1
            chosen = set(range(step - 1, layers, step))
        return tuple(MOE if i in chosen else DENSE for i in range(layers)), True
    return (MOE,) * layers, False


def expert_placeholder(suffix: str) -> tuple[str, int] | None:
    """("mlp.experts.*.gate_proj.weight", 7) for the per-expert tensor
    "mlp.experts.7.gate_proj.weight"; None for any other suffix (fused experts such as
    "mlp.experts.gate_up_proj" included)."""
    if suffix.startswith("experts."):
        start = 0
    else:
        start = suffix.find(".experts.") + 1
        if start == 0:
            return None
    number_at = start + len("experts.")
    end = suffix.find(".", number_at)
    number = suffix[number_at:end]
    if end < 0 or not number.isdigit():
        return None
    return f"{suffix[:number_at]}*{suffix[end:]}", int(number)


def is_fused_expert(suffix: str) -> bool:
    """Whether `suffix` is a tensor of all experts at once ("mlp.experts.gate_up_proj",
    GPT-OSS and transformers' in-memory layout), whose first dimension counts the experts."""
    # a parameter of the experts module itself; Switch and NLLB-MoE's experts.expert_0.wi.weight
    # are per-expert modules under names of their own
    parts = suffix.split(".")
    return len(parts) >= 2 and parts[-2] == "experts" and not parts[-1].isdigit()
