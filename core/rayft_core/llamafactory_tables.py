"""What each LLaMA-Factory 0.9.5 key means to rayft, as tables: the keys written straight to a rayft path
(DIRECT, METHOD_KEYS, STAGE_KEYS), the stages and methods, and the defaults LLaMA-Factory gives where rayft's
differ. The keys that need a function are in rayft_core.llamafactory_keys; the keys rayft writes nowhere are in
rayft_core.llamafactory_values.
"""

from __future__ import annotations

import re

ERROR = "error: "
WARNING = "warning: "

# Keys only LLaMA-Factory's flat layout has at the top level; a rayft config nests everything in sections.
MARKERS = {
    "model_name_or_path",
    "finetuning_type",
    "dataset",
    "cutoff_len",
    "output_dir",
    "do_train",
    "per_device_train_batch_size",
}

# LLaMA-Factory's (transformers') defaults that differ from rayft's and change the trained model.
# Written out when the YAML leaves them unset, so the run trains as it did under LLaMA-Factory.
LF_DEFAULTS = {
    "learning_rate": 5e-5,
    "num_train_epochs": 3.0,
    "per_device_train_batch_size": 8,
    "lr_scheduler_type": "linear",
    "cutoff_len": 2048,
}
LF_GALORE_SCALE = 2.0  # LLaMA-Factory's galore_scale default; rayft's is 0.25


# LF key -> rayft path, same meaning.
DIRECT = {
    "model_name_or_path": "model.name_or_path",
    "trust_remote_code": "model.trust_remote_code",
    "moe_aux_loss_coef": "model.router_aux_loss_coef",
    "neftune_noise_alpha": "train.neftune_noise_alpha",
    "train_from_scratch": "model.from_scratch",
    "upcast_layernorm": "model.upcast_layernorm",
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
    "shift_attn": "model.shift_attn",
    "enable_liger_kernel": "model.liger_kernel",
    "logging_steps": "train.logging_steps",
    "save_steps": "checkpoint.save_steps",
    "save_total_limit": "checkpoint.keep",
    "ray_num_workers": "cluster.num_workers",
    "ray_storage_path": "output.storage_path",
    "ray_run_name": "output.name",
}
TEXT_KEYS = {"model_name_or_path", "tokenized_path", "ray_storage_path", "ray_run_name", "ref_model"}  # never numbers

# LLaMA-Factory's finetuning types rayft trains, as the tuning methods of the same names (rayft_core.methods);
# GaLore and APOLLO are finetuning_type full with use_galore / use_apollo in LLaMA-Factory, and rayft's methods
# galore and apollo; OFT is PEFT's OFT
# tuner, rayft's method peft with type OFT (its keys go to tuning.config, PEFT's own names).
FINETUNING_TYPES = ("lora", "freeze", "full", "oft")
# LLaMA-Factory's optimizers over finetuning_type full (use_galore...) that are tuning methods in rayft
OPTIMIZER_METHODS = ("galore", "apollo", "badam")
# rayft tuning method -> {LF key: tuning key}. LLaMA-Factory ignores another method's keys, and so does
# rayft, with a note. None: handled in _Translation.method_key.
METHOD_KEYS: dict[str, dict[str, str | None]] = {
    "lora": {
        "lora_rank": "rank",
        "lora_alpha": "alpha",
        "lora_dropout": "dropout",
        "lora_target": "target",
        "use_rslora": "use_rslora",
        "use_dora": "use_dora",
        "loraplus_lr_ratio": "loraplus_lr_ratio",
        "additional_target": "train_modules",
        "pissa_init": None,
        "quantization_bit": None,
    },
    "freeze": {
        "freeze_trainable_layers": None,
        "freeze_extra_modules": "trainable_modules",
        "freeze_trainable_modules": None,
    },
    "oft": {
        "oft_rank": "config.r",
        "oft_block_size": "config.oft_block_size",
        "oft_target": "config.target_modules",
        "module_dropout": "config.module_dropout",
        "additional_target": "config.modules_to_save",
    },
    "galore": {
        "galore_rank": "rank",
        "galore_update_interval": "update_proj_gap",
        "galore_scale": "scale",
        "galore_target": "target",
        "galore_proj_type": None,
        "galore_layerwise": None,
    },
    "apollo": {
        "apollo_rank": "rank",
        "apollo_update_interval": "update_proj_gap",
        "apollo_scale": "scale",
        "apollo_target": "target",
        "apollo_proj": "proj",
        "apollo_scale_type": "scale_type",
        "apollo_proj_type": None,
        "apollo_layerwise": None,
        "apollo_scale_front": None,
    },
    "badam": {
        "badam_mode": "mode",
        "badam_start_block": "start_block",
        "badam_switch_mode": "switch_mode",
        "badam_switch_interval": "switch_interval",
        "badam_update_ratio": "update_ratio",
        "badam_mask_mode": "mask",
        "badam_verbose": None,
    },
}
LF_METHOD_DEFAULTS = {
    "lora_rank": 8,
    "lora_alpha": None,
    "lora_dropout": 0.0,
    "lora_target": "all",
    "use_rslora": False,
    "use_dora": False,
    "loraplus_lr_ratio": None,
    "additional_target": None,
    "pissa_init": False,
    "quantization_bit": None,
    "freeze_trainable_layers": 2,
    "freeze_extra_modules": None,
    "freeze_trainable_modules": "all",
    "oft_rank": 0,
    "oft_block_size": 32,
    "oft_target": "all",
    "module_dropout": 0.0,
    "galore_rank": 16,
    "galore_update_interval": 200,
    "galore_scale": 2.0,
    "galore_target": "all",
    "galore_proj_type": "std",
    "galore_layerwise": False,
    "apollo_rank": 16,
    "apollo_update_interval": 200,
    "apollo_scale": 32.0,
    "apollo_target": "all",
    "apollo_proj": "random",
    "apollo_scale_type": "channel",
    "apollo_proj_type": "std",
    "apollo_layerwise": False,
    "apollo_scale_front": False,
    "badam_mode": "layer",
    "badam_start_block": None,
    "badam_switch_mode": "ascending",
    "badam_switch_interval": 50,
    "badam_update_ratio": 0.05,
    "badam_mask_mode": "adjacent",
    "badam_verbose": 0,
}
LIST_KEYS = {
    "lora_target",
    "galore_target",
    "apollo_target",
    "freeze_extra_modules",
    "additional_target",
    "oft_target",
}  # comma strings; "all" stays for targets

# LLaMA-Factory's stage -> rayft's; its stage dpo trains ORPO or SimPO when pref_loss names them.
STAGES = {"pt": "pt", "sft": "sft", "rm": "rm", "ppo": "ppo", "dpo": "dpo", "kto": "kto"}
DPO_LOSS_STAGES = {"orpo": "orpo", "simpo": "simpo"}
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo")  # pref_loss values that stay stage dpo, as its loss_type
PREF_STAGES = ("dpo", "kto", "orpo", "simpo")  # the stages that read pref_beta
LF_PREF_BETA = 0.1  # written out for these: rayft's simpo defaults to 2.0
# Stages rayft trains without dropout (RunConfig.check_combinations): LLaMA-Factory's DPO and KTO trainers do too
# (TRL's disable_dropout_in_model); for rm and ppo it is rayft's own rule, said so in the note (WHY_NO_DROPOUT).
NO_DROPOUT_STAGES = (*PREF_STAGES, "rm", "ppo")
WHY_NO_DROPOUT = {
    "rm": "it compares the scores of two answers",
    "ppo": "it compares the policy with the one that generated the rollouts and with its reference",
}

# rayft stage.* values LLaMA-Factory's PPO trains with when the YAML leaves them unset: its ppo_epochs, ppo_target
# and sampling defaults, and TRL's init_kl_coef (its adaptive KL controller is on, over a horizon of 10000 samples,
# as rayft's adaptive_kl_horizon).
LF_PPO_DEFAULTS = {
    "ppo_epochs": 4,
    "kl_coef": 0.2,
    "adaptive_kl_target": 6.0,
    "max_new_tokens": 1024,
    "temperature": 0.95,
    "top_p": 0.7,
}
# LLaMA-Factory's generation keys (GeneratingArguments) and their defaults: PPO's rollouts sample with them
# (_Translation.generation_key); for other stages they are inference options, noted as unknown keys.
LF_GENERATION = {
    "max_new_tokens": 1024,
    "temperature": 0.95,
    "top_p": 0.7,
    "top_k": 50,
    "do_sample": True,
    "repetition_penalty": 1.0,
    "num_beams": 1,
    "length_penalty": 1.0,
    "max_length": 1024,
}
REWARD_MODEL_TYPES = ("lora", "full", "api")

# rayft stage -> {LF key: stage key}. LLaMA-Factory ignores another stage's keys, and so does rayft, with a note
# unless the value is LLaMA-Factory's default (LF_STAGE_DEFAULTS). None: handled in _Translation.stage_key.
STAGE_KEYS: dict[str, dict[str, str | None]] = {
    "sft": {"train_on_prompt": "train_on_prompt", "mask_history": "mask_history"},
    "dpo": {
        "pref_beta": "beta",
        "pref_loss": None,
        "pref_ftx": "ftx",
        "dpo_label_smoothing": None,
        "ref_model": "reference_model",
        "ref_model_adapters": None,
        "ref_model_quantization_bit": None,
        "pref_bco_weight": "bco_weight",
        "ld_alpha": "ld_alpha",
    },
    "kto": {
        "pref_beta": "beta",
        "pref_ftx": None,
        "kto_chosen_weight": "desirable_weight",
        "kto_rejected_weight": "undesirable_weight",
        "ref_model": "reference_model",
        "ref_model_adapters": None,
        "ref_model_quantization_bit": None,
    },
    "ppo": {
        "reward_model": None,
        "reward_model_type": None,
        "reward_model_adapters": None,
        "reward_model_quantization_bit": None,
        "ppo_epochs": "ppo_epochs",
        "ppo_buffer_size": None,
        "ppo_score_norm": "normalize_reward",
        "ppo_target": "adaptive_kl_target",
        "ppo_whiten_rewards": None,
        "ppo_logger": None,
    },
    "orpo": {
        "pref_beta": "beta",
        "pref_loss": None,
        "pref_ftx": None,
        "dpo_label_smoothing": None,
        "ld_alpha": "ld_alpha",
    },
    "simpo": {
        "pref_beta": "beta",
        "pref_loss": None,
        "pref_ftx": "ftx",
        "dpo_label_smoothing": None,
        "simpo_gamma": "gamma",
        "ld_alpha": "ld_alpha",
    },
}
LF_STAGE_DEFAULTS = {
    "train_on_prompt": False,
    "mask_history": False,
    "pref_beta": LF_PREF_BETA,
    "pref_loss": "sigmoid",
    "pref_ftx": 0.0,
    "dpo_label_smoothing": 0.0,
    "simpo_gamma": 0.5,
    "kto_chosen_weight": 1.0,
    "kto_rejected_weight": 1.0,
    "pref_bco_weight": 0.0,
    "ref_model": None,
    "ref_model_adapters": None,
    "ref_model_quantization_bit": None,
    "ld_alpha": None,
    "reward_model": None,
    "reward_model_type": "lora",
    "reward_model_adapters": None,
    "reward_model_quantization_bit": None,
    "ppo_epochs": 4,
    "ppo_buffer_size": 1,
    "ppo_score_norm": False,
    "ppo_target": 6.0,
    "ppo_whiten_rewards": False,
    "ppo_logger": None,
}

LR_SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant", "constant_with_warmup": "constant"}
NEAREST_SCHEDULER = {
    "cosine_with_restarts": "cosine",
    "cosine_with_min_lr": "cosine",
    "cosine_warmup_with_min_lr": "cosine",
    "polynomial": "linear",
}
FLASH_ATTN = {"auto": "auto", "disabled": "eager", "sdpa": "sdpa", "fa2": "flash_attention_2"}
MIX = {
    "concat": ("concat", None),
    "interleave_under": ("interleave", "first_exhausted"),
    "interleave_over": ("interleave", "all_exhausted"),
}
DEEPSPEED_NAME = re.compile(r"ds_z([0-3])(_offload)?_config\.json$")  # LLaMA-Factory's examples/deepspeed/*.json

SECRET = re.compile(r"(token|api_key|secret|webhook_url)$")
