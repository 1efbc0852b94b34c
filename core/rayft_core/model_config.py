"""The model section of a run: which checkpoint, how it computes, the tokens and template it gets. A part of the
run schema (rayft_core.config, which re-exports it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from rayft_core.schema import Section

if TYPE_CHECKING:
    from rayft_core.config import RunConfig


class ModelConfig(Section):
    name_or_path: str = Field(
        description="Local directory (or hub id, when online) of a causal LM that transformers' Auto classes load."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Compute dtype. auto: bfloat16 on CUDA with compute capability >= 8, float16 below, float32 on CPU.",
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="auto: flash_attention_2 when installed and on CUDA, else sdpa."
    )
    shift_attn: bool = Field(
        False,
        description="LongLoRA's shifted sparse attention (S2-Attn) in training: each token attends within a quarter "
        "of the sequence, half of the heads in groups shifted by half a group; full attention in evaluation and "
        "generation (LLaMA-Factory's shift_attn). For long-context fine-tuning; an SDPA path of rayft's own.",
    )
    liger_kernel: bool = Field(
        False,
        description="Liger's Triton kernels for RMSNorm, the gated MLP and RoPE on a GPU, for the families Liger "
        "covers (LLaMA-Factory's enable_liger_kernel); on CPU, no effect (said in the log). pip install "
        "'rayft[liger]' on GPU workers.",
    )
    rope_scaling: Literal["linear", "dynamic", "yarn"] | None = Field(
        None,
        description="RoPE scaling type used when data.max_seq_len exceeds the model's max_position_embeddings; "
        "factor = max_seq_len / max_position_embeddings.",
    )
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto",
        description="Recompute activations in backward: less memory, a forward pass more of compute. auto: on only "
        "where a worker could not hold its activations (rayft train decides from the memory estimate and the "
        "memory of the worker's GPU, or its share of its node's; on when that is unknown); the plan line says which.",
    )
    trust_remote_code: bool = Field(
        False, description="Run modelling code shipped with the checkpoint. Off unless you trust it."
    )
    add_special_tokens: list[str] = Field(
        default_factory=list,
        description="Extra special tokens; the embeddings are resized and new rows set to the noisy mean of the old ones.",
    )
    add_tokens: list[str] = Field(
        default_factory=list,
        description="Extra ordinary tokens (words the tokenizer then keeps whole; not special): the embeddings grow "
        "as for add_special_tokens (LLaMA-Factory's add_tokens).",
    )
    template: str | None = Field(
        None,
        description="A named chat template (llama3, qwen, chatml, mistral, gemma, phi, deepseek3, alpaca, default, "
        "empty) instead of the tokenizer's own; see `rayft data templates`.",
    )
    chat_template: str | None = Field(None, description="A Jinja chat template that replaces the tokenizer's own.")
    router_aux_loss_coef: float | None = Field(
        None,
        ge=0,
        description="Mixture-of-experts models: weight of the router's load-balancing loss added to pt/sft's loss "
        "(logged as train/aux_loss). Default: the model config's router_aux_loss_coef; 0 turns it off.",
    )
    from_scratch: bool = Field(
        False,
        description="Start from randomly initialised weights of name_or_path's architecture (its config.json) "
        "instead of its trained weights: pre-training a new model (LLaMA-Factory's train_from_scratch).",
    )
    upcast_layernorm: bool = Field(
        False,
        description="LoRA on a 16-bit base: keep the normalisation layers' weights in float32, their outputs in the "
        "model's dtype (LLaMA-Factory's upcast_layernorm).",
    )

    @property
    def checkpoints_activations(self) -> bool:
        """Gradient checkpointing on (auto counts as off until rayft train resolves it: export, merge, inference)."""
        return self.gradient_checkpointing is True

    @property
    def adds_tokens(self) -> bool:
        """Whether the run grows the vocabulary (and so trains the embeddings, also under LoRA)."""
        return bool(self.add_special_tokens or self.add_tokens)

    def problems(self, run: RunConfig) -> list[str]:
        """Its rules on the rest of the run, each as 'path: what to change'."""
        problems = []
        if self.from_scratch and getattr(run.tuning, "quantization_bit", None):
            problems.append("model.from_scratch: random new weights are not quantized; remove tuning.quantization_bit")
        if self.upcast_layernorm and (run.tuning.method != "lora" or run.deepspeed.zero_stage == 3):
            problems.append(
                "model.upcast_layernorm: only with LoRA under ZeRO 0-2 (full-parameter training in bf16/fp16 keeps "
                "an fp32 master copy of every weight already, and ZeRO-3 partitions the norms it would upcast)"
            )
        if self.shift_attn and self.attn_implementation != "auto":
            problems.append(
                "model.shift_attn: S2-Attn is an attention of its own (SDPA within groups); leave "
                f"model.attn_implementation at auto, got {self.attn_implementation}"
            )
        if self.shift_attn and run.cluster.sequence_parallel_size > 1:
            problems.append(
                "model.shift_attn: S2-Attn groups a whole sequence, which sequence parallelism splits across "
                "workers; use one or the other"
            )
        return problems
