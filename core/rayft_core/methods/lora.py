"""LoRA: PEFT adapters train, the base is frozen; rsLoRA, DoRA, PiSSA init, LoRA+ learning rates, and QLoRA
on a bitsandbytes-quantized base (`tuning: qlora`)."""

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator

from rayft_core.methods.base import Dependency, Run, TuningSection, decay_groups, nonempty_target

if TYPE_CHECKING:
    from torch import nn

BITSANDBYTES = Dependency("bitsandbytes", "bitsandbytes", "qlora")


class LoraTuning(TuningSection):
    aliases = {"qlora": {"quantization_bit": 4}}  # TuningSection's class variables
    trains_adapter = True

    method: Literal["lora"] = "lora"
    rank: int = Field(8, ge=1, description="LoRA rank r: higher = more capacity and memory.")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha; default 2 * rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target: Literal["all"] | list[str] = Field(
        "all",
        description="'all' = every nn.Linear except the output head, or a list of module names (q_proj, v_proj, ...).",
    )
    target_experts: bool = Field(
        False,
        description="Mixtures of experts: also adapt the experts' weights (transformers keeps them as 3-D tensors; "
        "PEFT's target_parameters). Routers stay frozen either way.",
    )
    train_modules: list[str] = Field(
        default_factory=list,
        description="Modules trained in full beside the adapters and saved with them: each module named so, or "
        "whose dotted path ends with one of these (lm_head; input_layernorm takes every layer's; norm the final norm "
        "only), as PEFT's modules_to_save and LLaMA-Factory's additional_target.",
    )
    use_rslora: bool = Field(False, description="rsLoRA: scale by alpha / sqrt(rank) instead of alpha / rank.")
    use_dora: bool = Field(False, description="DoRA: weight-decomposed LoRA (magnitude + direction).")
    init: Literal["default", "pissa", "gaussian", "loftq"] = Field(
        "default",
        description="pissa: initialise A and B from the principal singular vectors of the weight (fast SVD); loftq "
        "(with quantization_bit): from the rank-r SVD of what quantizing the base lost, so base + adapter starts "
        "closer to the full-precision model (LoftQ, one alternating step).",
    )
    loraplus_lr_ratio: float | None = Field(
        None, gt=0, description="LoRA+: the B matrices learn at learning_rate * ratio (the paper suggests 16)."
    )
    quantization_bit: Literal[4, 8] | None = Field(
        None,
        description="QLoRA: load the base in 4-bit NF4 (double quantisation) or 8-bit with bitsandbytes. "
        "`tuning: qlora` is shorthand for method lora with quantization_bit 4.",
    )
    adapter: str | None = Field(
        None,
        description="Continue training this saved LoRA adapter of the base (a rayft run's output, or any PEFT LoRA "
        "directory): its weights, rank, alpha, targets and trained modules are the start, so those keys are not "
        "set here (LLaMA-Factory's adapter_name_or_path).",
    )
    merge_adapters: list[str] = Field(
        default_factory=list,
        description="Saved LoRA adapters merged into the base, in order, before training starts (LLaMA-Factory's "
        "adapter_name_or_path with create_new_adapter); ZeRO 0-2.",
    )

    # Keys an adapter given by `adapter` brings in its own adapter_config.json.
    ADAPTER_OWN: ClassVar[tuple[str, ...]] = (
        "rank", "alpha", "dropout", "target", "target_experts", "train_modules", "use_rslora", "use_dora", "init",
    )  # fmt: skip

    @field_validator("target")
    @classmethod
    def _some_target(cls, target: Any) -> Any:
        return nonempty_target(target)

    @property
    def lora_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.rank

    def apply(self, model: "nn.Module", run: Run) -> "nn.Module":
        from peft import PeftModel, prepare_model_for_kbit_training

        for path in self.merge_adapters:  # earlier adapters become part of the base
            model = PeftModel.from_pretrained(model, path).merge_and_unload()
        if self.quantization_bit:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=run.model.checkpoints_activations)
            _no_cpu_repacking(model)
        if self.adapter:
            model = PeftModel.from_pretrained(model, self.adapter, is_trainable=True)
        else:
            model = self._new_adapter(model, run)
        return _trainable_in_fp32(model)

    def _new_adapter(self, model: "nn.Module", run: Run) -> "nn.Module":
        from peft import LoraConfig, get_peft_model

        from rayft_core.methods.layers import resolve_targets, untargeted_namesakes

        targets = resolve_targets(model, self.target, "tuning.target")
        init: Any = {"default": True, "gaussian": "gaussian", "pissa": "pissa_niter_16", "loftq": True}[self.init]
        config = LoraConfig(
            task_type="CAUSAL_LM",
            r=self.rank,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.dropout,
            target_modules=targets,
            exclude_modules=untargeted_namesakes(model, targets) or None,
            target_parameters=self._expert_parameters(model),
            use_rslora=self.use_rslora,
            use_dora=self.use_dora,
            init_lora_weights=init,
            # Added special tokens have fresh embedding rows: train the embeddings and head in full
            # and save them with the adapter, or the adapter would point at rows no one trained.
            modules_to_save=self.trained_in_full(model, run) or None,
        )
        model = get_peft_model(model, config)
        if self.init == "loftq":  # PEFT's LoftQ needs CUDA: rayft's (rayft_core.methods.loftq) runs on the loaded base
            from rayft_core.methods.loftq import loftq_initialise

            loftq_initialise(model, run.model.name_or_path)
        return model

    def trained_in_full(self, model: "nn.Module", run: Run) -> list[str]:
        """What trains in full beside the adapters: train_modules, and the embeddings and head of a run that adds
        tokens. A name no module has is a TuningError."""
        from rayft_core.methods.layers import TuningError

        names = [name for name, _ in model.named_modules()]
        # PEFT's matching (0.22): the whole name, or its end after a dot
        unknown = [m for m in self.train_modules if not any(n == m or n.endswith("." + m) for n in names)]
        if unknown:
            raise TuningError(f"tuning.train_modules: the model has no module named {', '.join(unknown)}")
        return sorted(set(self.train_modules) | set(_embedding_module_names(model) if run.model.adds_tokens else []))

    def _expert_parameters(self, model: "nn.Module") -> list[str] | None:
        if not self.target_experts:
            return None
        from rayft_core.methods.layers import TuningError
        from rayft_core.model.moe import expert_parameter_names

        names = expert_parameter_names(model)
        if not names:
            raise TuningError("tuning.target_experts: this model has no experts with 3-D weights to adapt")
        return names

    def param_groups(self, model: "nn.Module", run: Run) -> list[dict]:
        lr, ratio = run.train.learning_rate, self.loraplus_lr_ratio
        # LoRA+ (Hayou et al. 2024): B learns ratio x faster than A; with B initialised at zero
        # this gives the adapter's update a larger effective step without destabilising A.
        return decay_groups(model, run, lambda name: lr * ratio if ratio and "lora_B" in name else lr)

    def problems(self, run: Run) -> list[str]:
        from pathlib import Path

        problems = []
        if self.quantization_bit and run.deepspeed.zero_stage == 3:
            problems.append("deepspeed.zero_stage: a bitsandbytes-quantized base cannot be sharded by ZeRO-3; use 0-2")
        if self.init == "loftq" and not self.quantization_bit:
            problems.append(
                "tuning.init: loftq starts the adapter at what quantizing the base lost; set quantization_bit"
            )
        if self.init == "pissa" and self.quantization_bit:
            problems.append(
                "tuning.init: PiSSA splits the full-precision weight into adapter and residual, and a base quantized "
                "as it loads has none left to split (LLaMA-Factory refuses it too); for QLoRA use init: loftq"
            )
        if self.init == "loftq" and self.merge_adapters:
            problems.append("tuning.init: loftq reads the base's weights from its files, which merged adapters change")
        if self.merge_adapters and run.deepspeed.zero_stage == 3:
            problems.append(
                "tuning.merge_adapters: merging changes the base's weights, which ZeRO-3 partitions; use 0-2"
            )
        if self.adapter:
            problems += [
                f"tuning.{key}: comes from the adapter being continued (tuning.adapter); remove it"
                for key in self.ADAPTER_OWN
                if key in self.model_fields_set
            ]
        for i, path in [(None, self.adapter), *enumerate(self.merge_adapters)]:
            if path and not (Path(path).expanduser() / "adapter_config.json").is_file():
                where = "tuning.adapter" if i is None else f"tuning.merge_adapters[{i}]"
                problems.append(
                    f"{where}: {path!r} holds no adapter_config.json; give a saved LoRA adapter's directory"
                )
        return problems

    def missing_dependency(self) -> str | None:
        return BITSANDBYTES.missing("tuning.quantization_bit") if self.quantization_bit else None


def _no_cpu_repacking(model: "nn.Module") -> None:
    """bitsandbytes repacks a 4-bit layer's weights for its AVX-512 CPU kernel at the first forward pass in eval mode
    without gradients (an evaluation), and its backward through the repacked weights is wrong: the adapters'
    gradients after it differ from before by 100% (measured on this machine). A model being trained keeps the
    layout it backpropagates through correctly."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _trainable_in_fp32(model: "nn.Module") -> "nn.Module":
    """Adapters train in fp32 even when the frozen base runs in 16-bit: small updates to low-rank matrices
    underflow in bf16."""
    import torch

    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


def _embedding_module_names(model: "nn.Module") -> list[str]:
    wanted = {id(model.get_input_embeddings()), id(model.get_output_embeddings())}
    return [name.rsplit(".", 1)[-1] for name, m in model.named_modules() if id(m) in wanted]
