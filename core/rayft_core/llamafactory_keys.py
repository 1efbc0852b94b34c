"""The LLaMA-Factory 0.9.5 keys that need a function to translate (the SPECIAL table), beside the plain tables of
rayft_core.llamafactory_tables; the keys rayft writes nowhere are in rayft_core.llamafactory_values. A value
rayft cannot honour is noted with the reason: an error note (the run stops) where it would change what is
trained, a warning where it would not (logging, speed, uploads).
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any, Protocol

from rayft_core.llamafactory_method_keys import METHOD_KEYS_SPECIAL
from rayft_core.llamafactory_tables import (
    DEEPSPEED_NAME,
    DPO_LOSS_STAGES,
    FLASH_ATTN,
    LR_SCHEDULERS,
    MIX,
    NEAREST_SCHEDULER,
    OPTIMIZER_METHODS,
)
from rayft_core.llamafactory_values import as_list, as_number


class Translation(Protocol):
    """What a key handler reads and writes of the translation in progress: rayft_core.llamafactory's, which
    imports this module (so this one never imports it back)."""

    raw: dict
    method: str
    stage: str | None

    def set(self, path: str, value: Any) -> None: ...

    def note(self, key: str, why: str, error: bool = False) -> None: ...


# ----------------------------------------------------------------------------- keys with a handler


def stage_words(stage: str | None) -> str:
    """A rayft stage as the LLaMA-Factory YAML asked for it."""
    if stage in DPO_LOSS_STAGES.values():
        return f"stage dpo with pref_loss {stage} (rayft's stage {stage})"
    return f"stage {stage}" if stage else "a stage rayft does not translate"


# ----------------------------------------------------------------------------- keys that need more than a rename
# Each handler takes (translation, LF key, value).


def _template(t: Translation, key: str, value: Any) -> None:
    from rayft_core.data.templates import TEMPLATES

    if value in TEMPLATES:
        t.set("model.template", value)
    elif value is not None:  # none: both use the tokenizer's own chat template
        t.note(
            key,
            f"rayft has no such template, so the tokenizer's own chat template is used; rayft has "
            f"{', '.join(TEMPLATES)}",
        )


def _flash_attn(t: Translation, key: str, value: Any) -> None:
    if value in FLASH_ATTN:
        t.set("model.attn_implementation", FLASH_ATTN[value])
    else:
        t.note(key, "rayft offers auto, sdpa, eager (disabled) and flash_attention_2 (fa2); auto is used")


def _rope_scaling(t: Translation, key: str, value: Any) -> None:
    if value in ("linear", "dynamic", "yarn"):
        t.set("model.rope_scaling", value)
    elif value is not None:  # unscaled, positions past the model's length would train another model
        t.note(key, "rayft scales RoPE as linear, dynamic or yarn", error=True)


def _dtype(t: Translation, key: str, value: Any) -> None:
    # Without bf16/fp16 LLaMA-Factory picks bf16 > fp16 > fp32 by hardware, as rayft's dtype auto does.
    if t.raw.get("bf16") and t.raw.get("fp16"):  # transformers' TrainingArguments refuses both
        if key == "fp16":  # said once
            t.note(key, "bf16 and fp16 cannot both be true (LLaMA-Factory refuses it too): keep one", error=True)
    elif value:
        t.set("model.dtype", "float16" if key == "fp16" else "bfloat16")


def _gradient_checkpointing(t: Translation, key: str, value: Any) -> None:
    # disable_gradient_checkpointing is read in header; transformers' own switch also turns it on in LLaMA-Factory.
    if key == "gradient_checkpointing" and value:
        t.set("model.gradient_checkpointing", True)


def _add_tokens(t: Translation, key: str, value: Any) -> None:
    """add_tokens, add_special_tokens; resize_vocab, which they turn on in LLaMA-Factory too."""
    adds = t.raw.get("add_tokens") or t.raw.get("add_special_tokens")
    if key != "resize_vocab" and value:
        t.set(f"model.{key}", as_list(value))
    elif key == "resize_vocab" and value and not adds:
        t.note(key, "rayft grows the embeddings only for tokens it adds (model.add_tokens)", error=True)
    elif key == "resize_vocab" and value:
        t.note(key, "rayft grows the embeddings to the tokenizer exactly; LLaMA-Factory pads them to a multiple of 64")


def _datasets(t: Translation, key: str, value: Any) -> None:
    names = as_list(value)
    if names and key == "eval_dataset" and t.stage == "ppo":
        t.note(key, "LLaMA-Factory's PPO never evaluates, and rayft's stage ppo has no evaluation loss")
    elif names:
        t.set("data.train" if key == "dataset" else "data.eval", [{"dataset": n} for n in names])


def _eval_steps(t: Translation, key: str, value: Any) -> None:
    # rayft evaluates whenever there is eval data; without it LLaMA-Factory evaluates nothing either.
    if t.raw.get("eval_dataset") or as_number(t.raw.get("val_size") or 0):
        t.set("train.eval_steps", as_number(value))
    elif value is not None:
        t.note(key, "there is no evaluation data (val_size or eval_dataset) to evaluate")


def _val_size(t: Translation, key: str, value: Any) -> None:
    if t.stage != "ppo":
        t.set("data.val_size", as_number(value))
    elif as_number(value):
        t.note(
            key,
            "LLaMA-Factory's PPO holds these examples out and never evaluates on them; rayft's stage ppo has "
            "no evaluation loss and would train on all of them: remove val_size",
            error=True,
        )


def _dataset_dir(t: Translation, key: str, value: Any) -> None:
    if str(value).startswith("REMOTE:"):  # LLaMA-Factory downloads these from the ModelScope/HF hub
        t.note(
            key,
            "rayft reads dataset_info.json from a local or mounted folder: download it and name that folder",
            error=True,
        )
    else:
        t.set("data.dataset_dir", value)


def _mix_strategy(t: Translation, key: str, value: Any) -> None:
    if value not in MIX:
        t.note(
            key,
            "rayft concatenates, or interleaves until the first (interleave_under) or the last "
            "(interleave_over) dataset runs out",
            error=True,
        )
    mix, stopping = MIX.get(value, ("interleave", "all_exhausted"))
    t.set("data.mix", mix)
    if stopping:
        t.set("data.mix_stopping", stopping)


def _interleave_probs(t: Translation, key: str, value: Any) -> None:
    if value is not None:
        t.set(
            "data.mix_probabilities",
            [as_number(p) for p in as_list(value if isinstance(value, str) else map(str, value))],
        )


def _neat_packing(t: Translation, key: str, value: Any) -> None:
    if value:  # rayft's packing always keeps attention apart per example, which is what neat_packing adds
        t.set("data.packing", True)


def _disable_shuffling(t: Translation, key: str, value: Any) -> None:
    if value:
        t.set("data.shuffle", False)


def _max_steps(t: Translation, key: str, value: Any) -> None:
    n = as_number(value)
    if not isinstance(n, (int, float)) or n > 0:  # transformers' -1: train by epochs; a bad value: validation says so
        t.set("train.max_steps", n)


def _lr_scheduler(t: Translation, key: str, value: Any) -> None:
    if value in LR_SCHEDULERS:
        t.set("train.lr_scheduler", LR_SCHEDULERS[value])
    else:
        nearest = NEAREST_SCHEDULER.get(value, "linear")
        t.note(
            key,
            f"rayft schedules cosine, linear, constant and constant_with_warmup (the nearest: {nearest})",
            error=True,
        )
        t.set("train.lr_scheduler", nearest)


def _warmup(t: Translation, key: str, value: Any) -> None:
    value = as_number(value)
    if not isinstance(value, (int, float)) or key == "warmup_ratio" or value < 1:  # transformers 5: steps < 1 = ratio
        if value:
            t.set("train.warmup_ratio", value)
        return
    max_steps = as_number(t.raw.get("max_steps") or -1)
    if isinstance(max_steps, (int, float)) and max_steps > 0:
        t.set("train.warmup_ratio", value / max_steps)
    else:
        t.note(
            key,
            "rayft takes train.warmup_ratio; steps convert only when max_steps is set: give warmup_ratio",
            error=True,
        )


def _deepspeed(t: Translation, key: str, value: Any) -> None:
    if t.method in OPTIMIZER_METHODS:
        t.note(key, f"rayft's {t.method} steps whole weights, so it runs without ZeRO (zero_stage 0)")
    elif not isinstance(value, str):
        t.note(key, "write the DeepSpeed config to a JSON file and name it here")
    elif m := DEEPSPEED_NAME.search(value):
        # LLaMA-Factory's stock configs: every value "auto", the ZeRO stage and CPU offload in the name.
        stage = int(m.group(1))
        t.set("deepspeed.zero_stage", stage)
        if m.group(2):
            t.set("deepspeed.offload_optimizer", True)
            if stage == 3:
                t.set("deepspeed.offload_params", True)
    else:
        t.set("deepspeed.config_file", value)


def _resources_per_worker(t: Translation, key: str, value: Any) -> None:
    if isinstance(value, str):  # LLaMA-Factory also takes it as a JSON string
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if not isinstance(value, dict):
        t.note(key, "expected a mapping such as {GPU: 1}")
        return
    if "GPU" in value:
        t.set("cluster.use_gpu", bool(value["GPU"]))
    if "CPU" in value:
        t.set("cluster.cpus_per_worker", as_number(value["CPU"]))
    if set(value) - {"CPU", "GPU"} or as_number(value.get("GPU", 1)) not in (0, 1):
        t.note(key, "rayft gives each worker one GPU (when it uses GPUs) and cluster.cpus_per_worker CPUs")


def _overwrite_output_dir(t: Translation, key: str, value: Any) -> None:
    t.set("output.overwrite", value)
    if value:  # the same switch, with rayft's guard: say what it does here
        t.note(
            key,
            "in LLaMA-Factory it allows writing into a non-empty output_dir; rayft replaces an earlier rayft "
            "run there and refuses a directory holding files rayft did not write (nothing of yours is deleted)",
        )


def _placement_strategy(t: Translation, key: str, value: Any) -> None:
    t.set("cluster.placement_strategy", str(value).upper())


def _output_dir(t: Translation, key: str, value: Any) -> None:
    """saves/llama3-8b/lora/sft -> storage_path saves/llama3-8b/lora, name sft; ray_* keys win, as in LLaMA-Factory."""
    path = PurePosixPath(str(value))
    if "ray_storage_path" not in t.raw:
        t.set("output.storage_path", str(path.parent))
    if "ray_run_name" not in t.raw:
        t.set("output.name", path.name)
    if "ray_storage_path" in t.raw and "ray_run_name" in t.raw:
        t.note(key, "superseded by ray_storage_path/ray_run_name, where rayft writes the run")


def _report_to(t: Translation, key: str, value: Any) -> None:
    """ "none", "all", one name, a comma string or a list -> output.report_to (TensorBoard, MLflow, W&B)."""
    names = value if isinstance(value, list) else [n.strip() for n in str(value).split(",")] if value else []
    names = [n for n in names if n not in ("none", "")]
    if names == ["all"]:
        names = ["tensorboard", "mlflow", "wandb"]
    kept = [n for n in names if n in ("tensorboard", "mlflow", "wandb")]
    if kept:
        t.set("output.report_to", kept)
    if set(names) - set(kept):
        t.note(
            key,
            f"rayft reports to tensorboard, mlflow and wandb; {', '.join(sorted(set(names) - set(kept)))} "
            "not available (metrics.jsonl has every value)",
        )


SPECIAL = {
    **METHOD_KEYS_SPECIAL,
    "report_to": _report_to,
    "template": _template,
    "flash_attn": _flash_attn,
    "rope_scaling": _rope_scaling,
    "bf16": _dtype,
    "pure_bf16": _dtype,
    "fp16": _dtype,
    "disable_gradient_checkpointing": _gradient_checkpointing,
    "gradient_checkpointing": _gradient_checkpointing,
    "add_special_tokens": _add_tokens,
    "add_tokens": _add_tokens,
    "resize_vocab": _add_tokens,
    "dataset": _datasets,
    "eval_dataset": _datasets,
    "val_size": _val_size,
    "eval_steps": _eval_steps,
    "dataset_dir": _dataset_dir,
    "mix_strategy": _mix_strategy,
    "interleave_probs": _interleave_probs,
    "neat_packing": _neat_packing,
    "disable_shuffling": _disable_shuffling,
    "max_steps": _max_steps,
    "lr_scheduler_type": _lr_scheduler,
    "warmup_ratio": _warmup,
    "warmup_steps": _warmup,
    "deepspeed": _deepspeed,
    "resources_per_worker": _resources_per_worker,
    "placement_strategy": _placement_strategy,
    "output_dir": _output_dir,
    "overwrite_output_dir": _overwrite_output_dir,
}
