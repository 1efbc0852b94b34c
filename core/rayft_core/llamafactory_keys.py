"""What each LLaMA-Factory 0.9.5 key means to rayft: the tables rayft_core.llamafactory translates with.

A key is written to a rayft path (DIRECT, METHOD_KEYS, STAGE_KEYS), handled by a function of the
translation (its SPECIAL table), honoured by what rayft does anyway for the values listed in NO_EFFECT
(other values are noted with the reason), or noted by its prefix (PREFIXES).
"""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rayft_core.llamafactory import _Translation

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
    "eval_steps": "train.eval_steps",  # rayft evaluates whenever there is eval data (val_size or eval_dataset)
    "overwrite_output_dir": "output.overwrite",
    "ray_num_workers": "cluster.num_workers",
    "ray_storage_path": "output.storage_path",
    "ray_run_name": "output.name",
}
TEXT_KEYS = {"model_name_or_path", "tokenized_path", "ray_storage_path", "ray_run_name", "ref_model"}  # never numbers

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

ALWAYS = object()  # no value of the key is honoured


def _because(why: str, **honoured: Any) -> dict[str, tuple[tuple, str]]:
    """{key: (the values rayft reproduces anyway, why other values have no effect)}; one value, a tuple, or ALWAYS."""
    return {k: ((), why) if v is ALWAYS else (v if isinstance(v, tuple) else (v,), why) for k, v in honoured.items()}


_OPTIM = "rayft trains with AdamW (or its tuning method's optimizer); no other optimizer yet"
_LOSS = "rayft trains with cross-entropy"
_NA = "not available in rayft"
_MULTIMODAL = "multimodal models are not available in rayft"
_INFER = "an inference/export option; no effect on training"
NO_EFFECT = {  # honoured values are LLaMA-Factory's defaults unless said otherwise
    **_because("rayft train always trains", do_train=True),
    **_because("rayft train does not predict", do_predict=False, predict_with_generate=False),
    **_because("rayft always writes loss.png", plot_loss=True),
    **_because("rayft tokenizes afresh unless data.cache_dir is set", overwrite_cache=True),
    **_because("no effect: Ray Data sizes its own read/tokenize parallelism and batches",
               preprocessing_num_workers=None, preprocessing_batch_size=1000),
    **_because("no effect: Ray Data feeds the workers", dataloader_num_workers=0, dataloader_pin_memory=True,
               dataloader_persistent_workers=False, dataloader_prefetch_factor=None),
    **_because("no effect: Ray Data reads once for the whole cluster", data_shared_file_system=False),
    **_because("rayft always ignores padding in the loss", ignore_pad_token_for_loss=True),
    **_because("rayft's trackers are tensorboard, mlflow and wandb (output.report_to)", use_swanlab=False),
    **_because("names a tracker run; rayft names runs with output.name", run_name=None),
    **_because("rayft writes metrics.jsonl into the run's output and logs every train.logging_steps",
               logging_dir=None, logging_strategy="steps", logging_first_step=False),
    **_because("rayft always reports perf/tokens_per_s", include_num_input_tokens_seen=(True, False),
               include_tokens_per_second=(True, False), include_effective_tokens_per_second=(True, False)),
    **_because("rayft writes the model only", save_only_model=(True, False)),
    **_because("rayft picks how activations are recomputed", use_reentrant_gc=(True, False)),
    **_because("rayft checkpoints every checkpoint.save_steps steps (set from save_steps)", save_strategy="steps"),
    **_because("rayft writes the final model; checkpoint.keep_best keeps the checkpoints of lowest eval loss",
               load_best_model_at_end=False),
    **_because("rayft always writes safetensors", save_safetensors=True),
    **_because("continue a stopped run with `rayft train --resume`", resume_from_checkpoint=None),
    **_because("rayft evaluates every train.eval_steps and at the end whenever there is eval data, with the "
               "training micro-batch size", do_eval=False, eval_strategy="no",
               evaluation_strategy="no", per_device_eval_batch_size=ALWAYS,
               eval_accumulation_steps=None, eval_delay=0, eval_on_each_dataset=False, eval_num_beams=None,
               compute_accuracy=False, early_stopping_steps=None, metric_for_best_model=None),
    **_because("no effect: Ray Train sets up the process group", ddp_timeout=ALWAYS, ddp_find_unused_parameters=None,
               ddp_backend=None, master_addr=None, master_port=None),
    **_because("rayft joins the cluster in RAY_ADDRESS; pass a runtime_env with `ray job submit`", ray_init_kwargs=None),
    **_because("give output.storage_path as a URL or a mounted path", ray_storage_filesystem=None),
    **_because(_OPTIM, optim=("adamw_torch", "adamw_torch_fused", "adamw_hf"), adam_beta1=0.9, adam_beta2=0.999,
               adam_epsilon=1e-8, use_adam_mini=False, use_muon=False, use_apollo=False, use_badam=False),
    **_because("rayft's schedulers take no extra arguments", lr_scheduler_kwargs=(None, {})),
    **_because("rayft leaves matmul precision to PyTorch's default", tf32=None),
    **_because("rayft does not compile the model", torch_compile=False),
    **_because(_LOSS, label_smoothing_factor=0.0, use_dft_loss=False, use_asft_loss=False, use_eaft_loss=False),
    **_because("train.seed also seeds the data order", data_seed=None),
    **_because("rayft writes to output.storage_path only", push_to_hub=False, hub_model_id=None),
    **_because("rayft loads the fast tokenizer with low CPU memory, from a local directory or the hub's default "
               "revision; set HF_HOME and HF_TOKEN for the hub", use_fast_tokenizer=True, low_cpu_mem_usage=True,
               model_revision="main", cache_dir=None, hf_hub_token=None),
    **_because("only local directories and the Hugging Face hub are available in rayft", ms_hub_token=None,
               om_hub_token=None),
    **_because("rayft logs the trainable parameter count", print_param_status=False),
    **_because("rayft adds special tokens only (model.add_special_tokens), their rows set to the noisy mean",
               resize_vocab=False, add_tokens=None, new_special_tokens_config=None, init_special_tokens="noise_init"),
    **_because("rayft computes the loss in float32 anyway", upcast_lmhead_output=False),
    **_because("rayft starts from the weights in model.name_or_path", train_from_scratch=False),
    **_because(_NA, split_special_tokens=False, upcast_layernorm=False, shift_attn=False, mixture_of_depths=None,
               moe_aux_loss_coef=None, full_determinism=False, use_llama_pro=False, use_hyper_parallel=False,
               hyper_parallel_args=None, fp8=False, use_mca=False, enable_torch_profiler=False),
    **_because("a GPU kernel or patch rayft does not use", use_unsloth=False, use_unsloth_gc=False,
               enable_liger_kernel=False, use_v1_kernels=False, use_kt=False),
    **_because("rayft quantizes with bitsandbytes: NF4 with double quantization for 4 bits, placed by Ray Train",
               quantization_method=("bnb", "bitsandbytes"), quantization_type="nf4", double_quantization=True,
               quantization_device_map=None),
    **_because("no key for extra fully-trained modules under LoRA yet", additional_target=None),
    **_because("rayft picks PiSSA's fast-SVD iterations and saves the adapter as trained", pissa_iter=16,
               pissa_convert=False),
    **_because("rayft has no separate LoRA+ embedding learning rate", loraplus_lr_embedding=1e-6),
    **_because("only meaningful with adapter_name_or_path", create_new_adapter=False),
    **_because("rayft shuffles streamed rows with Ray Data's own buffer", buffer_size=16384),
    **_because("rayft renders tools with the chat template", tool_format=None),
    **_because("no default system prompt key yet; put it in the data's system column", default_system=None),
    **_because("no key for reasoning-template switches yet", enable_thinking=True, preserve_thinking=False),
    **_because(_MULTIMODAL, media_dir=None, freeze_vision_tower=True,
               freeze_multi_modal_projector=True, freeze_language_model=False),
    **_because(_INFER, infer_backend="huggingface", infer_dtype="auto",
               use_kv_cache=True, offload_folder="offload"),
}
# Families of keys, by prefix -> why they have no effect (always noted).
PREFIXES = [
    (("ppo_", "reward_model"), "not an option of LLaMA-Factory 0.9.5's stage ppo that rayft knows; no effect"),
    (("oft_", "module_dropout"), "finetuning_type oft is not available in rayft"),
    (("apollo_", "badam_", "asft_", "eaft_"), "an option of an optimizer or loss rayft does not have"),
    (("image_", "video_", "audio_", "crop_to_patches", "use_audio_in_video"), _MULTIMODAL),
    (("vllm_", "sglang_", "export_"), _INFER),
    (("swanlab_", "profiler_", "profile_modules", "fp8_", "kt_"), "an option of an integration rayft does not have"),
]
SECRET = re.compile(r"(token|api_key|secret|webhook_url)$")


# ----------------------------------------------------------------------------- keys with a handler


def stage_words(stage: str | None) -> str:
    """A rayft stage as the LLaMA-Factory YAML asked for it."""
    if stage in DPO_LOSS_STAGES.values():
        return f"stage dpo with pref_loss {stage} (rayft's stage {stage})"
    return f"stage {stage}" if stage else "a stage rayft does not translate"


def as_number(value: Any) -> Any:
    """PyYAML reads `1e-4` as a string; numbers come back as numbers, anything else unchanged."""
    if isinstance(value, str):
        for parse in (int, float):
            try:
                return parse(value)
            except ValueError:
                pass
    return value


def as_list(value: Any) -> list[str]:
    """LLaMA-Factory's comma lists ("q_proj, v_proj"); YAML lists pass through."""
    if isinstance(value, str):
        return [s.strip() for s in value.split(",") if s.strip()]
    return list(value) if isinstance(value, (list, tuple)) else [] if value is None else [value]


# ----------------------------------------------------------------------------- keys that need more than a rename
# Each handler takes (translation, LF key, value).


def _template(t: _Translation, key: str, value: Any) -> None:
    from rayft_core.data.templates import TEMPLATES

    if value in TEMPLATES:
        t.set("model.template", value)
    elif value is not None:  # none: both use the tokenizer's own chat template
        t.note(key, f"rayft has no such template, so the tokenizer's own chat template is used; rayft has "
                    f"{', '.join(TEMPLATES)}")


def _flash_attn(t: _Translation, key: str, value: Any) -> None:
    if value in FLASH_ATTN:
        t.set("model.attn_implementation", FLASH_ATTN[value])
    else:
        t.note(key, "rayft offers auto, sdpa, eager (disabled) and flash_attention_2 (fa2); auto is used")


def _rope_scaling(t: _Translation, key: str, value: Any) -> None:
    if value in ("linear", "dynamic", "yarn"):
        t.set("model.rope_scaling", value)
    elif value is not None:
        t.note(key, "rayft scales RoPE as linear, dynamic or yarn")


def _dtype(t: _Translation, key: str, value: Any) -> None:
    # Without bf16/fp16 LLaMA-Factory picks bf16 > fp16 > fp32 by hardware, as rayft's dtype auto does.
    if value:
        t.set("model.dtype", "float16" if key == "fp16" else "bfloat16")


def _gradient_checkpointing(t: _Translation, key: str, value: Any) -> None:
    # disable_gradient_checkpointing is read in header; transformers' own switch also turns it on in LLaMA-Factory.
    if key == "gradient_checkpointing" and value:
        t.set("model.gradient_checkpointing", True)


def _add_special_tokens(t: _Translation, key: str, value: Any) -> None:
    if value:
        t.set("model.add_special_tokens", as_list(value))


def _adapter(t: _Translation, key: str, value: Any) -> None:
    if value:
        t.note(key, "continuing from an existing adapter is not yet available in rayft", error=True)


def _finetuning_type(t: _Translation, key: str, value: Any) -> None:
    if value not in ("lora", "freeze", "full"):
        t.note(key, "rayft tunes with lora, freeze, full, or GaLore (full with use_galore)", error=True)


def _use_galore(t: _Translation, key: str, value: Any) -> None:
    if value and t.method != "galore":
        t.note(key, "rayft's GaLore trains every parameter: set finetuning_type full")


def _datasets(t: _Translation, key: str, value: Any) -> None:
    names = as_list(value)
    if names and key == "eval_dataset" and t.stage == "ppo":
        t.note(key, "LLaMA-Factory's PPO never evaluates, and rayft's stage ppo has no evaluation loss")
    elif names:
        t.set("data.train" if key == "dataset" else "data.eval", [{"dataset": n} for n in names])


def _val_size(t: _Translation, key: str, value: Any) -> None:
    if t.stage != "ppo":
        t.set("data.val_size", as_number(value))
    elif value:
        t.note(key, "LLaMA-Factory's PPO holds these examples out and never evaluates on them; rayft's stage ppo has "
                    "no evaluation loss and trains on all of them")


def _dataset_dir(t: _Translation, key: str, value: Any) -> None:
    if str(value).startswith("REMOTE:"):  # LLaMA-Factory downloads these from the ModelScope/HF hub
        t.note(key, "rayft reads dataset_info.json from a local or mounted folder: download it and name that folder",
               error=True)
    else:
        t.set("data.dataset_dir", value)


def _mix_strategy(t: _Translation, key: str, value: Any) -> None:
    if value not in MIX:
        t.note(key, "rayft interleaves until the first or the last dataset runs out, not once without replacement; "
                    "interleave_over (all_exhausted) is used")
    mix, stopping = MIX.get(value, ("interleave", "all_exhausted"))
    t.set("data.mix", mix)
    if stopping:
        t.set("data.mix_stopping", stopping)


def _interleave_probs(t: _Translation, key: str, value: Any) -> None:
    if value is not None:
        t.set("data.mix_probabilities", [as_number(p) for p in as_list(value if isinstance(value, str) else map(str, value))])


def _neat_packing(t: _Translation, key: str, value: Any) -> None:
    if value:  # rayft's packing always keeps attention apart per example, which is what neat_packing adds
        t.set("data.packing", True)


def _disable_shuffling(t: _Translation, key: str, value: Any) -> None:
    if value:
        t.set("data.shuffle", False)


def _max_steps(t: _Translation, key: str, value: Any) -> None:
    n = as_number(value)
    if not isinstance(n, (int, float)) or n > 0:  # transformers' -1: train by epochs; a bad value: validation says so
        t.set("train.max_steps", n)


def _lr_scheduler(t: _Translation, key: str, value: Any) -> None:
    if value in LR_SCHEDULERS:
        t.set("train.lr_scheduler", LR_SCHEDULERS[value])
    else:
        nearest = NEAREST_SCHEDULER.get(value, "linear")
        t.note(key, f"rayft schedules cosine, linear or constant; {nearest} is used")
        t.set("train.lr_scheduler", nearest)


def _warmup(t: _Translation, key: str, value: Any) -> None:
    value = as_number(value)
    if not isinstance(value, (int, float)) or key == "warmup_ratio" or value < 1:  # transformers 5: steps < 1 = ratio
        if value:
            t.set("train.warmup_ratio", value)
        return
    max_steps = as_number(t.raw.get("max_steps") or -1)
    if isinstance(max_steps, (int, float)) and max_steps > 0:
        t.set("train.warmup_ratio", value / max_steps)
    else:
        t.note(key, "rayft takes train.warmup_ratio; steps convert only when max_steps is set")


def _deepspeed(t: _Translation, key: str, value: Any) -> None:
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


def _resources_per_worker(t: _Translation, key: str, value: Any) -> None:
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


def _placement_strategy(t: _Translation, key: str, value: Any) -> None:
    t.set("cluster.placement_strategy", str(value).upper())


def _output_dir(t: _Translation, key: str, value: Any) -> None:
    """saves/llama3-8b/lora/sft -> storage_path saves/llama3-8b/lora, name sft; ray_* keys win, as in LLaMA-Factory."""
    path = PurePosixPath(str(value))
    if "ray_storage_path" not in t.raw:
        t.set("output.storage_path", str(path.parent))
    if "ray_run_name" not in t.raw:
        t.set("output.name", path.name)
    if "ray_storage_path" in t.raw and "ray_run_name" in t.raw:
        t.note(key, "superseded by ray_storage_path/ray_run_name, where rayft writes the run")


def _report_to(t: _Translation, key: str, value: Any) -> None:
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
    "dataset": _datasets, "eval_dataset": _datasets, "val_size": _val_size, "dataset_dir": _dataset_dir,
    "mix_strategy": _mix_strategy, "interleave_probs": _interleave_probs,
    "neat_packing": _neat_packing, "disable_shuffling": _disable_shuffling,
    "max_steps": _max_steps, "lr_scheduler_type": _lr_scheduler, "warmup_ratio": _warmup, "warmup_steps": _warmup,
    "deepspeed": _deepspeed, "resources_per_worker": _resources_per_worker,
    "placement_strategy": _placement_strategy, "output_dir": _output_dir,
}
