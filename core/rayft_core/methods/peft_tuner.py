"""Any of PEFT's adapter tuners for causal LMs, with PEFT's own config keys: `tuning: {method: peft, type: LOHA,
config: {r: 8, alpha: 16}}` (IA3, LoHa, LoKr, VeRA, OFT, BOFT, FourierFT, LN-tuning, HRA, ...). The base is
frozen and the tuner's modules train; the output is a PEFT adapter directory like LoRA's.

The config is built with PEFT's own config class before any worker starts, so a misspelt key is named with the
closest one. ``target_modules`` unset: PEFT's default for the model family where it has one, else rayft's `all`
(every linear layer inside the decoder blocks, rayft_core.methods.layers). Tuners that prepend virtual tokens
(prompt, prefix and p-tuning) and those that need a call of their own at every step (AdaLoRA's rank allocator)
or several adapters at once (X-LoRA, Poly) are refused with that reason.
"""

import difflib
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from rayft_core.methods.base import Run, TuningSection

if TYPE_CHECKING:
    from torch import nn

NEEDS_MORE = {
    "ADALORA": "AdaLoRA's rank allocator must be called at every step, which rayft's loop does not do yet",
    "XLORA": "X-LoRA mixes several trained LoRA adapters, which rayft does not load yet",
    "POLY": "Poly routes among adapters per task, which needs task ids in the data",
    "MULTITASK_PROMPT_TUNING": "it is a prompt-learning tuner",
}


class PeftTuning(TuningSection):
    trains_adapter = True  # TuningSection's class variable

    method: Literal["peft"] = "peft"
    type: str = Field(
        description="PEFT's tuner, by its PeftType name: IA3, LOHA, LOKR, VERA, OFT, BOFT, FOURIERFT, LN_TUNING, "
        "HRA, ... (any case)."
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="The tuner's own config keys, as PEFT's <Type>Config takes them (task_type is CAUSAL_LM).",
    )

    def peft_config(self) -> Any:
        """PEFT's config object of the section; a ValueError says what is wrong with the section."""
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        names = {getattr(k, "value", k): k for k in PEFT_TYPE_TO_CONFIG_MAPPING}  # PeftType members: "LOHA", ...
        key = self.type.upper()
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f"; PEFT has {', '.join(sorted(names))}"
            raise ValueError(f"tuning.type: PEFT has no tuner {self.type!r}{hint}")
        if key in NEEDS_MORE:
            raise ValueError(f"tuning.type: {key} is not supported: {NEEDS_MORE[key]}")
        config_class = PEFT_TYPE_TO_CONFIG_MAPPING[names[key]]
        fields = set(config_class.__dataclass_fields__)
        for name in self.config:
            if name not in fields:
                close = difflib.get_close_matches(name, sorted(fields), n=1)
                raise ValueError(
                    f"tuning.config.{name}: not a key of PEFT's {config_class.__name__}"
                    + (f" (did you mean {close[0]!r}?)" if close else "")
                )
        try:
            config = config_class(task_type="CAUSAL_LM", **self.config)
        except (TypeError, ValueError) as e:
            raise ValueError(f"tuning.config: PEFT's {config_class.__name__} refuses it: {e}") from None
        if config.is_prompt_learning:
            raise ValueError(
                f"tuning.type: {key} prepends virtual tokens to every row, which rayft's loss does not count yet"
            )
        return config

    def apply(self, model: "nn.Module", run: Run) -> "nn.Module":
        from peft import get_peft_model

        from rayft_core.methods.layers import resolve_targets
        from rayft_core.methods.lora import _trainable_in_fp32

        config = self.peft_config()
        try:
            return _trainable_in_fp32(get_peft_model(model, config))
        except ValueError as e:  # PEFT knows no default target modules for this family: every linear layer
            if "target_modules" not in str(e) or getattr(config, "target_modules", None) is not None:
                raise
        config.target_modules = resolve_targets(model, "all", "tuning.config.target_modules")
        return _trainable_in_fp32(get_peft_model(model, config))

    def problems(self, run: Run) -> list[str]:
        try:
            self.peft_config()
        except ValueError as e:
            return [str(e)]
        return []
