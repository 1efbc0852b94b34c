"""BAdam (Luo et al. 2024, "BAdam: A Memory Efficient Full Parameter Optimization Method for Large Language Models",
NeurIPS 2024): full-parameter training by block coordinate descent with Adam, so gradients and optimizer state are
held for one block at a time (rayft_core.train.block_adam). LLaMA-Factory's use_badam and badam_* keys."""

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from rayft_core.methods.base import Run, TuningSection

if TYPE_CHECKING:
    from torch import nn


class BadamTuning(TuningSection):
    optimizer = "badam"  # class variable: rayft_core.train.optim.OPTIMIZERS

    method: Literal["badam"] = "badam"
    mode: Literal["layer", "ratio"] = Field(
        "layer",
        description="layer: one decoder layer trains at a time, the embeddings, head and norms outside the layers "
        "stay frozen (as BAdam's default); ratio: every weight but the embeddings trains, update_ratio of its "
        "entries at a time.",
    )
    switch_interval: int = Field(50, ge=1, description="Optimizer steps before the next block (or masks).")
    switch_mode: Literal["ascending", "descending", "random", "fixed"] = Field(
        "ascending",
        description="layer mode: the order of the blocks (random: a fresh permutation each cycle through them; "
        "fixed: start_block only).",
    )
    start_block: int | None = Field(
        None, ge=0, description="layer mode: the first block (default: the first in the order, the last descending)."
    )
    update_ratio: float = Field(0.05, gt=0, le=1, description="ratio mode: the share of each weight's entries.")
    mask: Literal["adjacent", "scatter"] = Field(
        "adjacent", description="ratio mode: the entries as one adjacent run of each flattened weight, or scattered."
    )

    def apply(self, model: "nn.Module", run: Run) -> "nn.Module":
        from rayft_core.methods.layers import decoder_layers

        if self.mode == "ratio":  # every weight but the embeddings (and a head tied to them), as LLaMA-Factory's
            model.requires_grad_(True)
            model.get_input_embeddings().requires_grad_(False)
            return model
        model.requires_grad_(False)
        decoder_layers(model).requires_grad_(True)  # the optimizer leaves one of them trainable at a time
        return model

    def blocks(self, model: "nn.Module") -> list[list]:
        from rayft_core.methods.layers import decoder_layers

        return [list(layer.parameters()) for layer in decoder_layers(model)]

    def first_block(self, count: int) -> int:
        if self.start_block is not None:
            return self.start_block
        return count - 1 if self.switch_mode == "descending" else 0

    def problems(self, run: Run) -> list[str]:
        out = []
        if run.deepspeed.zero_stage:
            out.append(
                f"deepspeed.zero_stage: BAdam switches which parameters train and keeps state for those alone, which "
                f"ZeRO-1/2/3's partitions fixed at the start cannot follow; set it to 0, got {run.deepspeed.zero_stage}"
            )
        if run.model.dtype in ("bfloat16", "float16"):
            out.append(
                "model.dtype: BAdam steps whole weights, and DeepSpeed's mixed-precision optimizer hands it flat "
                "copies; set model.dtype: float32"
            )
        return out
