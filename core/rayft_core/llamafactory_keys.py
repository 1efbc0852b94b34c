"""What each LLaMA-Factory 0.9.5 key means to rayft: the tables rayft_core.llamafactory translates with.

A key is written to a rayft path (DIRECT, METHOD_KEYS, STAGE_KEYS) or handled by a function of the
translation (its SPECIAL table); the keys rayft writes nowhere are in rayft_core.llamafactory_values. A value
rayft cannot honour is noted with the reason: an error note (the run stops) where it would change what is
trained, a warning where it would not (logging, speed, uploads).
"""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath
from typing import Any, Protocol

from rayft_core.llamafactory_values import as_list, as_number


class Translation(Protocol):
    """What a key handler reads and writes of the translation in progress: rayft_core.llamafactory's, which
    imports this module (so this one never imports it back)."""

    raw: dict
    method: str
    stage: str | None

    def set(self, path: str, value: Any) -> None: ...

    def note(self, key: str, why: str, error: bool = False) -> None: ...


ERROR = "error: "
WARNING = "warning: "

# Keys only LLaMA-Factory's flat layout has at the top level; a rayft config nests everything in sections.
MARKERS = {"model_name_or_path", "finetuning_type", "dataset", "cutoff_len", "output_dir", "do_train",
           "per_device_train_batch_size"}

# LLaMA-Factory's (transformers') defaults that differ from rayft's and change the trained model.
# Written out when the YAML leaves them unset, so the run trains as it did under LLaMA-Factory.
LF_DEFAULTS = {"learning_rate": 5e-5, "num_train_epochs": 3.0, "per_device_train_batch_size": 8,
               "lr_scheduler_type": "linear", "cutoff_len": 2048}
LF_GALORE_SCALE = 2.0  # LLaMA-Factory's galore_scale default; rayft's is 0.25


# LF key -> rayft path, same meaning.
DIRECT = {
    "model_name_or_path": "model.name_or_path",
    "trust_remote_code": "model.trust_remote_code",
    "cutoff_len": "data.max_seq_len",
    "packing": "data.packing",
    "streaming": "data.streaming",
    "tokenized_path": "data.cache_dir",  # both keep the tokenized data for later runs
    "per_device_train_batch_size": "train.micro_batch_size",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps",
    "learning_rate": "train.learning_rate",
    "num_train_epochs": "train.num_epochs",
    "weight_decay": "train.weight_decay",
    "max_grad_norm": "train.max_grad_norm",
    "seed": "train.seed",
    "logging_steps": "train.logging_steps",
    "save_steps": "checkpoint.save_steps",
    "save_total_limit": "checkpoint.keep",
    "ray_num_workers": "cluster.num_workers",
    "ray_storage_path": "output.storage_path",
    "ray_run_name": "output.name",
}
TEXT_KEYS = {"model_name_or_path", "tokenized_path", "ray_storage_path", "ray_run_name", "ref_model"}  # never numbers

# LLaMA-Factory's finetuning types rayft trains, as the tuning methods of the same names (rayft_core.methods);
# GaLore is finetuning_type full with use_galore in LLaMA-Factory, and rayft's method galore.
FINETUNING_TYPES = ("lora", "freeze", "full")
# rayft tuning method -> {LF key: tuning key}. LLaMA-Factory ignores another method's keys, and so does
# rayft, with a note. None: handled in _Translation.method_key.
METHOD_KEYS: dict[str, dict[str, str | None]] = {
    "lora": {"lora_rank": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout", "lora_target": "target",
             "use_rslora": "use_rslora", "use_dora": "use_dora", "loraplus_lr_ratio": "loraplus_lr_ratio",
             "pissa_init": None, "quantization_bit": None},
    "freeze": {"freeze_trainable_layers": None, "freeze_extra_modules": "trainable_modules",
               "freeze_trainable_modules": None},
    "galore": {"galore_rank": "rank", "galore_update_interval": "update_proj_gap", "galore_scale": "scale",
               "galore_target": "target", "galore_proj_type": None, "galore_layerwise": None},
}
LF_METHOD_DEFAULTS = {"lora_rank": 8, "lora_alpha": None, "lora_dropout": 0.0, "lora_target": "all",
                      "use_rslora": False, "use_dora": False, "loraplus_lr_ratio": None, "pissa_init": False,
                      "quantization_bit": None,
                      "freeze_trainable_layers": 2, "freeze_extra_modules": None, "freeze_trainable_modules": "all",
                      "galore_rank": 16, "galore_update_interval": 200, "galore_scale": 2.0, "galore_target": "all",
                      "galore_proj_type": "std", "galore_layerwise": False}
LIST_KEYS = {"lora_target", "galore_target", "freeze_extra_modules"}  # comma strings; "all" stays for targets

# LLaMA-Factory's stage -> rayft's; its stage dpo trains ORPO or SimPO when pref_loss names them.
STAGES = {"pt": "pt", "sft": "sft", "rm": "rm", "ppo": "ppo", "dpo": "dpo", "kto": "kto"}
DPO_LOSS_STAGES = {"orpo": "orpo", "simpo": "simpo"}
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo")  # pref_loss values that stay stage dpo, as its loss_type
PREF_STAGES = ("dpo", "kto", "orpo", "simpo")  # the stages that read pref_beta
LF_PREF_BETA = 0.1  # written out for these: rayft's simpo defaults to 2.0
# Stages rayft trains without dropout (RunConfig.check_combinations): LLaMA-Factory's DPO and KTO trainers do too
# (TRL's disable_dropout_in_model); for rm and ppo it is rayft's own rule, said so in the note (WHY_NO_DROPOUT).
NO_DROPOUT_STAGES = (*PREF_STAGES, "rm", "ppo")
WHY_NO_DROPOUT = {"rm": "it compares the scores of two answers",
                  "ppo": "it compares the policy with the one that generated the rollouts and with its reference"}

# rayft stage.* values LLaMA-Factory's PPO trains with when the YAML leaves them unset: its ppo_epochs, ppo_target
# and sampling defaults, and TRL's init_kl_coef (its adaptive KL controller is on, over a horizon of 10000 samples,
# as rayft's adaptive_kl_horizon).
LF_PPO_DEFAULTS = {"ppo_epochs": 4, "kl_coef": 0.2, "adaptive_kl_target": 6.0, "max_new_tokens": 1024,
                   "temperature": 0.95, "top_p": 0.7}
# LLaMA-Factory's generation keys (GeneratingArguments) and their defaults: PPO's rollouts sample with them
# (_Translation.generation_key); for other stages they are inference options, noted as unknown keys.
LF_GENERATION = {"max_new_tokens": 1024, "temperature": 0.95, "top_p": 0.7, "top_k": 50, "do_sample": True,
                 "repetition_penalty": 1.0, "num_beams": 1, "length_penalty": 1.0, "max_length": 1024}
REWARD_MODEL_TYPES = ("lora", "full", "api")

# rayft stage -> {LF key: stage key}. LLaMA-Factory ignores another stage's keys, and so does rayft, with a note
# unless the value is LLaMA-Factory's default (LF_STAGE_DEFAULTS). None: handled in _Translation.stage_key.
STAGE_KEYS: dict[str, dict[str, str | None]] = {
    "sft": {"train_on_prompt": "train_on_prompt", "mask_history": "mask_history"},
    "dpo": {"pref_beta": "beta", "pref_loss": None, "pref_ftx": "ftx", "dpo_label_smoothing": None,
            "ref_model": "reference_model", "ref_model_adapters": None, "ref_model_quantization_bit": None,
            "pref_bco_weight": None, "ld_alpha": None},
    "kto": {"pref_beta": "beta", "pref_ftx": None, "kto_chosen_weight": "desirable_weight",
            "kto_rejected_weight": "undesirable_weight", "ref_model": "reference_model", "ref_model_adapters": None,
            "ref_model_quantization_bit": None},
    "ppo": {"reward_model": None, "reward_model_type": None, "reward_model_adapters": None,
            "reward_model_quantization_bit": None, "ppo_epochs": "ppo_epochs", "ppo_buffer_size": None,
            "ppo_score_norm": "normalize_reward", "ppo_target": "adaptive_kl_target", "ppo_whiten_rewards": None,
            "ppo_logger": None},
    "orpo": {"pref_beta": "beta", "pref_loss": None, "pref_ftx": None, "dpo_label_smoothing": None, "ld_alpha": None},
    "simpo": {"pref_beta": "beta", "pref_loss": None, "pref_ftx": "ftx", "dpo_label_smoothing": None,
              "simpo_gamma": "gamma", "ld_alpha": None},
}
LF_STAGE_DEFAULTS = {"train_on_prompt": False, "mask_history": False, "pref_beta": LF_PREF_BETA, "pref_loss": "sigmoid",
                     "pref_ftx": 0.0, "dpo_label_smoothing": 0.0, "simpo_gamma": 0.5, "kto_chosen_weight": 1.0,
                     "kto_rejected_weight": 1.0, "pref_bco_weight": 0.0, "ref_model": None, "ref_model_adapters": None,
                     "ref_model_quantization_bit": None, "ld_alpha": None, "reward_model": None,
                     "reward_model_type": "lora", "reward_model_adapters": None, "reward_model_quantization_bit": None,
                     "ppo_epochs": 4, "ppo_buffer_size": 1, "ppo_score_norm": False, "ppo_target": 6.0,
                     "ppo_whiten_rewards": False, "ppo_logger": None}

LR_SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant", "constant_with_warmup": "constant"}
NEAREST_SCHEDULER = {"cosine_with_restarts": "cosine", "cosine_with_min_lr": "cosine",
                     "cosine_warmup_with_min_lr": "cosine", "polynomial": "linear"}
FLASH_ATTN = {"auto": "auto", "disabled": "eager", "sdpa": "sdpa", "fa2": "flash_attention_2"}
MIX = {"concat": ("concat", None), "interleave_under": ("interleave", "first_exhausted"),
       "interleave_over": ("interleave", "all_exhausted")}
DEEPSPEED_NAME = re.compile(r"ds_z([0-3])(_offload)?_config\.json$")  # LLaMA-Factory's examples/deepspeed/*.json

SECRET = re.compile(r"(token|api_key|secret|webhook_url)$")


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
        t.note(key, f"rayft has no such template, so the tokenizer's own chat template is used; rayft has "
                    f"{', '.join(TEMPLATES)}")


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


def _add_special_tokens(t: Translation, key: str, value: Any) -> None:
    if value:
        t.set("model.add_special_tokens", as_list(value))


def _adapter(t: Translation, key: str, value: Any) -> None:
    if value:
        t.note(key, "continuing from an existing adapter is not yet available in rayft", error=True)


def _finetuning_type(t: Translation, key: str, value: Any) -> None:
    if value not in FINETUNING_TYPES:
        t.note(key, "rayft tunes with lora, freeze, full, or GaLore (full with use_galore)", error=True)


def _use_galore(t: Translation, key: str, value: Any) -> None:
    if value and t.method != "galore":  # LLaMA-Factory refuses it with LoRA; rayft's GaLore is a method of its own
        t.note(key, "rayft's GaLore trains every parameter: set finetuning_type full", error=True)


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
        t.note(key, "LLaMA-Factory's PPO holds these examples out and never evaluates on them; rayft's stage ppo has "
                    "no evaluation loss and would train on all of them: remove val_size", error=True)


def _dataset_dir(t: Translation, key: str, value: Any) -> None:
    if str(value).startswith("REMOTE:"):  # LLaMA-Factory downloads these from the ModelScope/HF hub
        t.note(key, "rayft reads dataset_info.json from a local or mounted folder: download it and name that folder",
               error=True)
    else:
        t.set("data.dataset_dir", value)


def _mix_strategy(t: Translation, key: str, value: Any) -> None:
    if value not in MIX:
        t.note(key, "rayft concatenates, or interleaves until the first (interleave_under) or the last "
                    "(interleave_over) dataset runs out", error=True)
    mix, stopping = MIX.get(value, ("interleave", "all_exhausted"))
    t.set("data.mix", mix)
    if stopping:
        t.set("data.mix_stopping", stopping)


def _interleave_probs(t: Translation, key: str, value: Any) -> None:
    if value is not None:
        t.set("data.mix_probabilities", [as_number(p) for p in as_list(value if isinstance(value, str) else map(str, value))])


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
        t.note(key, f"rayft schedules cosine, linear, constant and constant_with_warmup (the nearest: {nearest})",
               error=True)
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
        t.note(key, "rayft takes train.warmup_ratio; steps convert only when max_steps is set: give warmup_ratio",
               error=True)


def _deepspeed(t: Translation, key: str, value: Any) -> None:
    if t.method == "galore":
        t.note(key, "GaLore needs whole 2-D weights, so rayft runs it without ZeRO (zero_stage 0)")
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
        t.note(key, "in LLaMA-Factory it allows writing into a non-empty output_dir; rayft replaces an earlier rayft "
                    "run there and refuses a directory holding files rayft did not write (nothing of yours is deleted)")


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
    """"none", "all", one name, a comma string or a list -> output.report_to (TensorBoard, MLflow, W&B)."""
    names = value if isinstance(value, list) else [n.strip() for n in str(value).split(",")] if value else []
    names = [n for n in names if n not in ("none", "")]
    if names == ["all"]:
        names = ["tensorboard", "mlflow", "wandb"]
    kept = [n for n in names if n in ("tensorboard", "mlflow", "wandb")]
    if kept:
        t.set("output.report_to", kept)
    if set(names) - set(kept):
        t.note(key, f"rayft reports to tensorboard, mlflow and wandb; {', '.join(sorted(set(names) - set(kept)))} "
                    "not available (metrics.jsonl has every value)")


SPECIAL = {
    "report_to": _report_to,
    "template": _template, "flash_attn": _flash_attn, "rope_scaling": _rope_scaling,
    "bf16": _dtype, "pure_bf16": _dtype, "fp16": _dtype,
    "disable_gradient_checkpointing": _gradient_checkpointing, "gradient_checkpointing": _gradient_checkpointing,
    "add_special_tokens": _add_special_tokens, "adapter_name_or_path": _adapter, "adapter_folder": _adapter,
    "finetuning_type": _finetuning_type, "use_galore": _use_galore,
    "dataset": _datasets, "eval_dataset": _datasets, "val_size": _val_size, "eval_steps": _eval_steps,
    "dataset_dir": _dataset_dir,
    "mix_strategy": _mix_strategy, "interleave_probs": _interleave_probs,
    "neat_packing": _neat_packing, "disable_shuffling": _disable_shuffling,
    "max_steps": _max_steps, "lr_scheduler_type": _lr_scheduler, "warmup_ratio": _warmup, "warmup_steps": _warmup,
    "deepspeed": _deepspeed, "resources_per_worker": _resources_per_worker,
    "placement_strategy": _placement_strategy, "output_dir": _output_dir,
    "overwrite_output_dir": _overwrite_output_dir,
}
