"""The modules ZeRO-3 must gather whole (DeepSpeed "leaf modules"): ZeRO-3 gathers a module's parameters in a hook
before that module's forward, which is wrong for two kinds of block in transformers' families:

- an MoE block: its experts run only for the tokens routed to them, so ranks would gather different experts and
  the collectives would hang or mismatch; gathered as one block, every rank gathers every expert each step;
- a sequence mixer (Mamba, gated DeltaNet, short convolutions) that reads its Conv1d's weight directly instead of
  calling the Conv1d, so the Conv1d's own hook never runs and the weight would stay a partition.
"""

from __future__ import annotations

from torch import nn

from rayft_core.model.moe import moe_blocks


def leaf_classes(model: nn.Module) -> list[type]:
    mixers = {type(m) for m in model.modules() if any(isinstance(c, nn.Conv1d) for c in m.children())}
    return list(dict.fromkeys([*moe_blocks(model), *mixers]))


def mark_zero3_leaves(model: nn.Module) -> list[str]:
    """Make those blocks ZeRO-3 leaves, before deepspeed.initialize; returns their class names."""
    classes = leaf_classes(model)
    if classes:
        from deepspeed.utils import set_z3_leaf_modules

        set_z3_leaf_modules(model, classes)
    return [c.__name__ for c in classes]
