"""Freeze tuning: the last N decoder layers train (or N spread evenly, or the new blocks of LLaMA Pro's expansion:
rayft_core.methods.llama_pro), and the parameters named in trainable_modules; the rest is frozen."""

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from rayft_core.methods.base import Run, TuningSection

if TYPE_CHECKING:
    from torch import nn


class FreezeTuning(TuningSection):
    method: Literal["freeze"] = "freeze"
    trainable_layers: int = Field(2, ge=1, description="Train the last N decoder layers (the rest is frozen).")
    trainable_modules: list[str] = Field(
        default_factory=list,
        description="Also train parameters whose name contains one of these strings (e.g. embed_tokens, lm_head).",
    )
    spread: bool = Field(
        False,
        description="Train the trainable_layers blocks spread evenly, the last of each equal group, instead of the "
        "last ones: where LLaMA Pro put its new blocks (LLaMA-Factory's use_llama_pro, on an expanded model).",
    )
    expand_layers: int = Field(
        0,
        ge=0,
        description="LLaMA Pro (Wu et al. 2024): insert this many copies of decoder blocks, one after each equal "
        "group, their output projections (o_proj, down_proj) at zero so the model starts out computing what it "
        "did; only the copies train (trainable_layers is not used). The saved model has the extra layers.",
    )

    def apply(self, model: "nn.Module", run: Run) -> "nn.Module":
        from rayft_core.methods.layers import TuningError, decoder_layers
        from rayft_core.methods.llama_pro import expand_blocks, spread_layers

        layers = decoder_layers(model)
        if self.expand_layers:
            trainable = expand_blocks(model, self.expand_layers)
        elif self.trainable_layers > len(layers):
            raise TuningError(
                f"tuning.trainable_layers: the model has {len(layers)} layers, got {self.trainable_layers}"
            )
        elif self.spread:
            trainable = spread_layers(layers, self.trainable_layers)
        else:
            trainable = layers[len(layers) - self.trainable_layers :]
        model.requires_grad_(False)
        for layer in trainable:
            layer.requires_grad_(True)
        for pattern in self.trainable_modules:
            hits = [p for name, p in model.named_parameters() if pattern in name]
            if not hits:
                raise TuningError(f"tuning.trainable_modules: {pattern!r} matches no parameter name")
            for p in hits:
                p.requires_grad_(True)
        return model

    def problems(self, run: Run) -> list[str]:
        out = []
        if self.expand_layers and {"trainable_layers", "spread"} & self.model_fields_set:
            out.append("tuning.expand_layers: the new blocks are the ones that train; drop trainable_layers and spread")
        if self.expand_layers and run.deepspeed.zero_stage == 3:
            out.append("tuning.expand_layers: blocks are copied before ZeRO-3 partitions them; use zero_stage 0-2")
        return out
