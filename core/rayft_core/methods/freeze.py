"""Freeze tuning: the last N decoder layers train, and the parameters named in trainable_modules; the rest is
frozen."""

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

    def apply(self, model: "nn.Module", run: Run) -> "nn.Module":
        from rayft_core.methods.layers import TuningError, decoder_layers

        layers = decoder_layers(model)
        if self.trainable_layers > len(layers):
            raise TuningError(
                f"tuning.trainable_layers: the model has {len(layers)} layers, got {self.trainable_layers}"
            )
        model.requires_grad_(False)
        for layer in layers[len(layers) - self.trainable_layers :]:
            layer.requires_grad_(True)
        for pattern in self.trainable_modules:
            hits = [p for name, p in model.named_parameters() if pattern in name]
            if not hits:
                raise TuningError(f"tuning.trainable_modules: {pattern!r} matches no parameter name")
            for p in hits:
                p.requires_grad_(True)
        return model
