"""How the LLaMA-Factory keys of the tuning method, its optimizer and its loss translate when a table cannot say
it: adapters to continue, GaLore and APOLLO, Muon, LLaMA Pro, DFT and EAFT. A part of the SPECIAL table of
rayft_core.llamafactory_keys."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rayft_core.llamafactory_tables import FINETUNING_TYPES, OPTIMIZER_METHODS
from rayft_core.llamafactory_values import as_list, as_number

if TYPE_CHECKING:
    from rayft_core.llamafactory_keys import Translation


def _adapter(t: Translation, key: str, value: Any) -> None:
    """LLaMA-Factory merges every adapter but the last into the base and continues the last one, or with
    create_new_adapter merges them all and trains a new one."""
    paths = as_list(value)
    if not paths:
        return
    if t.method != "lora":
        t.note(key, "rayft continues adapters with finetuning_type lora only", error=True)
        return
    new = bool(t.raw.get("create_new_adapter"))
    merged = paths if new else paths[:-1]
    if merged:
        t.set("tuning.merge_adapters", merged)
    if not new:
        t.set("tuning.adapter", paths[-1])


def _create_new_adapter(t: Translation, key: str, value: Any) -> None:
    if value and not as_list(t.raw.get("adapter_name_or_path")):  # else read by _adapter
        t.note(key, "no adapter_name_or_path to merge before the new adapter; no effect")


def _adapter_folder(t: Translation, key: str, value: Any) -> None:
    if value:
        t.note(
            key, "rayft reads an adapter from its own directory: put the subfolder in adapter_name_or_path", error=True
        )


def _finetuning_type(t: Translation, key: str, value: Any) -> None:
    if value not in FINETUNING_TYPES:
        t.note(
            key,
            "rayft tunes with lora, freeze, full, oft, or GaLore or APOLLO (full with use_galore, use_apollo)",
            error=True,
        )


def _use_projection(t: Translation, key: str, value: Any) -> None:
    """use_galore / use_apollo / use_badam: rayft's methods galore, apollo and badam train every parameter
    (LLaMA-Factory refuses them with LoRA, and more than one of them)."""
    method = key.removeprefix("use_")
    if value and t.method in OPTIMIZER_METHODS and t.method != method:
        t.note(key, f"use_{t.method} is on too; LLaMA-Factory refuses more than one of them", error=True)
    elif value and t.method != method:
        t.note(key, f"rayft's {method} trains every parameter: set finetuning_type full", error=True)


def _token_loss(t: Translation, key: str, value: Any) -> None:
    """use_dft_loss / use_eaft_loss / use_asft_loss (+ eaft_alpha, asft_alpha): rayft's train.token_loss, in
    LLaMA-Factory's SFT trainer only. It takes DFT first, then EAFT; ASFT's reference-model path would then feed
    their loss function the reference's logits, so ASFT with either of them is refused."""
    alpha = key.endswith("_alpha")
    loss = key.removeprefix("use_").removesuffix("_loss").removesuffix("_alpha")
    if t.stage != "sft":
        if value and not alpha:
            t.note(key, "LLaMA-Factory applies it in stage sft only; no effect")
    elif alpha:
        if t.raw.get(f"use_{loss}_loss"):
            t.set(f"train.{loss}_alpha", as_number(value))
        elif as_number(value) != {"eaft": 1.0, "asft": 0.1}[loss]:
            t.note(key, f"applies with use_{loss}_loss only")
    elif value and loss == "asft" and (t.raw.get("use_dft_loss") or t.raw.get("use_eaft_loss")):
        t.note(key, "LLaMA-Factory's ASFT path breaks with use_dft_loss or use_eaft_loss on; choose one", error=True)
    elif value and (loss == "dft" or not t.raw.get("use_dft_loss")):
        t.set("train.token_loss", loss)


# The optimizers LLaMA-Factory builds, in the order it tries them (create_custom_optimizer): the first one on wins.
LF_OPTIMIZER_ORDER = ("use_galore", "use_apollo", "loraplus_lr_ratio", "use_badam", "use_adam_mini", "use_muon")


def _use_optimizer(t: Translation, key: str, value: Any) -> None:
    """use_muon, use_adam_mini: rayft's train.optimizer, unless LLaMA-Factory builds another optimizer first."""
    if not value:
        return
    first = [k for k in LF_OPTIMIZER_ORDER[: LF_OPTIMIZER_ORDER.index(key)] if t.raw.get(k)]
    if first:
        t.note(key, f"LLaMA-Factory builds the optimizer of {first[0]} first; no effect")
        return
    t.set("train.optimizer", key.removeprefix("use_"))
    if as_number(t.raw.get("weight_decay")) and key == "use_muon":
        t.note(key, "rayft does not decay biases and norm scales; LLaMA-Factory's Muon decays every parameter")


def _use_llama_pro(t: Translation, key: str, value: Any) -> None:
    """use_llama_pro on a model LLaMA Pro expanded: freeze tuning trains the blocks spread evenly."""
    if value and t.method == "freeze":
        t.set("tuning.spread", True)
    elif value:
        t.note(key, "rayft's LLaMA Pro is freeze tuning (tuning.spread, tuning.expand_layers)", error=True)


# HF Trainer's optim names -> rayft's train.optimizer (its AdamW for the torch ones)
LF_OPTIM = {
    **dict.fromkeys(("adamw_torch", "adamw_torch_fused", "adamw_hf"), "adamw"),
    **dict.fromkeys(("adamw_bnb_8bit", "adamw_8bit"), "adamw_8bit"),
    "paged_adamw_8bit": "paged_adamw_8bit",
    "paged_adamw_32bit": "paged_adamw_32bit",
}


def _optim(t: Translation, key: str, value: Any) -> None:
    """optim: HF's optimizer name. LLaMA-Factory's own optimizers (GaLore...) replace it when they are on."""
    own = [k for k in ("use_galore", "use_apollo", "use_adam_mini", "use_muon") if t.raw.get(k)]
    if value not in LF_OPTIM:
        names = ", ".join(k for k, v in LF_OPTIM.items() if v != "adamw")
        t.note(
            key, f"rayft trains with AdamW, bitsandbytes' {names} or its methods' optimizers, not {value}", error=True
        )
    elif LF_OPTIM[value] == "adamw":
        return
    elif own and own[0] in ("use_galore", "use_apollo"):
        t.note(
            key, f"rayft's {own[0][4:]} steps with its AdamW; LLaMA-Factory would take {value}'s variant", error=True
        )
    elif own:
        t.note(key, f"LLaMA-Factory builds the optimizer of {own[0]} instead; no effect")
    else:  # LoRA+ and BAdam build on it in LLaMA-Factory, as LoRA+ does in rayft
        t.set("train.optimizer", LF_OPTIM[value])


METHOD_KEYS_SPECIAL = {
    "optim": _optim,
    "adapter_name_or_path": _adapter,
    "adapter_folder": _adapter_folder,
    "create_new_adapter": _create_new_adapter,
    "finetuning_type": _finetuning_type,
    "use_galore": _use_projection,
    "use_apollo": _use_projection,
    "use_badam": _use_projection,
    "use_muon": _use_optimizer,
    "use_adam_mini": _use_optimizer,
    "use_llama_pro": _use_llama_pro,
    "use_dft_loss": _token_loss,
    "use_eaft_loss": _token_loss,
    "eaft_alpha": _token_loss,
    "use_asft_loss": _token_loss,
    "asft_alpha": _token_loss,
}
