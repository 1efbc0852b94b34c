"""Mixture-of-experts models, named once: how many experts a config has, which modules route to them, which hold
them, and the family's load-balancing loss.

transformers keeps each MoE layer's experts as one module with 3-D weights (experts x out x in) and routes with
a small linear layer (or a router module) whose outputs are one logit per expert.
"""

from __future__ import annotations

import functools
from typing import Any

from torch import nn

EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def expert_count(config: Any) -> int:
    """Routed experts per MoE layer (0 for a dense model), read from whichever key the family uses."""
    config = getattr(config, "text_config", None) or config
    for c in (config, getattr(config, "ffn_config", None)):
        for key in EXPERT_KEYS:
            value = getattr(c, key, None)
            if isinstance(value, int) and value > 1:
                return value
    return 0


def is_router(model: nn.Module, module: nn.Module) -> bool:
    """Whether a linear layer routes tokens: one logit per expert (plus the zero experts of LongCat), or the single
    gate of a shared expert (Qwen-MoE). Routers stay frozen under LoRA: an adapter on one shifts which experts
    every token goes to."""
    n = expert_count(model.config)
    if not n:
        return False
    out = getattr(module, "out_features", None)
    zero = getattr(model.config, "zero_expert_num", 0) or 0
    return out in (n, n + zero) or out == 1


def expert_modules(model: nn.Module) -> list[nn.Module]:
    """The modules that hold a layer's experts (their 3-D weights)."""
    return [m for m in model.modules() if any(p.ndim == 3 for p in m.parameters(recurse=False)) and _has_experts(m)]


def expert_parameter_names(model: nn.Module) -> list[str]:
    """The experts' 3-D weights as PEFT's target_parameters names them ("experts.gate_up_proj", ...)."""
    experts = {id(m) for m in expert_modules(model)}
    names = set()
    for module_name, module in model.named_modules():
        if id(module) in experts:
            short = module_name.rsplit(".", 1)[-1]
            names.update(f"{short}.{p}" for p, w in module.named_parameters(recurse=False) if w.ndim == 3)
    return sorted(names)


def _has_experts(module: nn.Module) -> bool:
    return "expert" in type(module).__name__.lower()


def moe_blocks(model: nn.Module) -> list[type]:
    """The classes of the MoE blocks (router + experts): DeepSpeed's ZeRO-3 leaf modules."""
    classes: dict[str, type] = {}
    for module in model.modules():
        if any(_has_experts(child) for child in module.children()) and not _has_experts(module):
            classes[type(module).__name__] = type(module)
    return list(classes.values())


def load_balancing_loss(base: nn.Module) -> Any:
    """The family's own load-balancing loss function (Switch Transformer style, in its modeling module), or None
    where it has none (dense models; MoE families that balance without an auxiliary loss, such as DeepSeek V3).
    Called every step: the lookup is made once per model class."""
    return _family_loss(type(base)) if expert_count(base.config) else None


@functools.cache
def _family_loss(model_class: type) -> Any:
    import inspect
    import sys

    fn = getattr(sys.modules.get(model_class.__module__), "load_balancing_loss_func", None)
    return fn if fn is not None and "gate_logits" in inspect.signature(fn).parameters else None


def router_aux_loss(base: nn.Module, router_logits: Any, attention_mask: Any) -> Any:
    """The load-balancing loss of one forward pass from its router logits (one tensor per MoE layer)."""
    fn = load_balancing_loss(base)
    top_k = getattr(base.config, "num_experts_per_tok", 2)
    return fn(router_logits, expert_count(base.config), top_k, attention_mask)
