"""The LLaMA-Factory 0.9.5 keys rayft writes nowhere, and what their values mean to rayft_core.llamafactory;
how its YAMLs write values (as_number, as_list).

NO_EFFECT: keys of logging, speed, uploads and the like. rayft reproduces the values listed; another value is noted
with the reason, and the run trains as LLaMA-Factory would have trained it.
REFUSED: keys whose other values would train another model (the model, data, loss, optimizer, schedule, precision,
or which model is the result). rayft reproduces the values listed; another value stops the run with the reason.
PREFIXES: families of keys that are always noted.
"""

from __future__ import annotations

from typing import Any


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


# ----------------------------------------------------------------------------- the keys rayft writes nowhere

ALWAYS = object()  # no value of the key is honoured


def _because(why: str, **honoured: Any) -> dict[str, tuple[tuple, str]]:
    """{key: (the values rayft reproduces anyway, why other values have no effect)}; one value, a tuple, or ALWAYS."""
    return {k: ((), why) if v is ALWAYS else (v if isinstance(v, tuple) else (v,), why) for k, v in honoured.items()}


def _refused(why: str, needs: str | None = None, **honoured: Any) -> dict[str, tuple[tuple, str, str | None]]:
    """{key: (the values rayft reproduces, why another would train otherwise, the key LLaMA-Factory reads it with)}."""
    return {k: (*v, needs) for k, v in _because(why, **honoured).items()}


_OPTIM = "rayft trains with AdamW (betas 0.9, 0.999, eps 1e-8) or its tuning method's optimizer; no other optimizer yet"
_LOSS = "rayft trains with cross-entropy"
_NA = "not available in rayft"
_MULTIMODAL = "multimodal models are not available in rayft"
_INFER = "an inference/export option; no effect on training"
NO_EFFECT = {  # logging, speed, uploads: other values are noted. Honoured values are LLaMA-Factory's defaults
    **_because("rayft train does not predict", do_predict=False, predict_with_generate=False),
    **_because("rayft always writes loss.png", plot_loss=True),
    **_because("rayft tokenizes afresh unless data.cache_dir is set", overwrite_cache=True),
    **_because(
        "no effect: Ray Data sizes its own read/tokenize parallelism and batches",
        preprocessing_num_workers=None,
        preprocessing_batch_size=1000,
    ),
    **_because(
        "no effect: Ray Data feeds the workers",
        dataloader_num_workers=0,
        dataloader_pin_memory=True,
        dataloader_persistent_workers=False,
        dataloader_prefetch_factor=None,
    ),
    **_because("no effect: Ray Data reads once for the whole cluster", data_shared_file_system=False),
    **_because("rayft's trackers are tensorboard, mlflow and wandb (output.report_to)", use_swanlab=False),
    **_because("names a tracker run; rayft names runs with output.name", run_name=None),
    **_because(
        "rayft writes metrics.jsonl into the run's output and logs every train.logging_steps",
        logging_dir=None,
        logging_strategy="steps",
        logging_first_step=False,
    ),
    **_because(
        "rayft always reports perf/tokens_per_s",
        include_num_input_tokens_seen=(True, False),
        include_tokens_per_second=(True, False),
        include_effective_tokens_per_second=(True, False),
    ),
    **_because("rayft writes the model only", save_only_model=(True, False)),
    **_because("rayft picks how activations are recomputed", use_reentrant_gc=(True, False)),
    **_because("rayft checkpoints every checkpoint.save_steps steps (set from save_steps)", save_strategy="steps"),
    **_because("rayft always writes safetensors", save_safetensors=True),
    # Evaluation never changes what is trained: only load_best_model_at_end and early_stopping_steps would (REFUSED).
    **_because(
        "rayft evaluates every train.eval_steps and at the end whenever there is eval data, with the "
        "training micro-batch size",
        do_eval=False,
        eval_strategy="no",
        evaluation_strategy="no",
        per_device_eval_batch_size=ALWAYS,
        eval_accumulation_steps=None,
        eval_delay=0,
        eval_on_each_dataset=False,
        eval_num_beams=None,
        compute_accuracy=False,
        metric_for_best_model=None,
    ),
    **_because(
        "no effect: Ray Train sets up the process group",
        ddp_timeout=ALWAYS,
        ddp_find_unused_parameters=None,
        ddp_backend=None,
        master_addr=None,
        master_port=None,
    ),
    **_because(
        "rayft joins the cluster in RAY_ADDRESS; pass a runtime_env with `ray job submit`", ray_init_kwargs=None
    ),
    **_because("give output.storage_path as a URL or a mounted path", ray_storage_filesystem=None),
    # Speed settings whose numerical differences are those of any other kernel.
    **_because("rayft leaves float32 matmul precision to PyTorch's default", tf32=None),
    **_because("rayft does not compile the model", torch_compile=False),
    **_because(
        "Unsloth swaps in model classes and a trainer of its own for one GPU; rayft trains transformers' classes "
        "under DeepSpeed, with its fused loss and, where model.liger_kernel is on, Liger's kernels",
        use_unsloth=False,
        use_unsloth_gc=False,
    ),
    **_because("a GPU kernel or patch rayft does not use", use_v1_kernels=False, use_kt=False),
    **_because(
        _NA,
        full_determinism=False,
        use_hyper_parallel=False,
        hyper_parallel_args=None,
        use_mca=False,
        enable_torch_profiler=False,
    ),
    **_because("train.seed also seeds the data order", data_seed=None),
    **_because("rayft shuffles streamed rows within chunks of 256 rows per worker", buffer_size=16384),
    **_because("rayft writes to output.storage_path only", push_to_hub=False, hub_model_id=None),
    **_because(
        "rayft loads the fast tokenizer with low CPU memory; set HF_HOME and HF_TOKEN for the hub",
        use_fast_tokenizer=True,
        low_cpu_mem_usage=True,
        cache_dir=None,
        hf_hub_token=None,
    ),
    **_because(
        "only local directories and the Hugging Face hub are available in rayft", ms_hub_token=None, om_hub_token=None
    ),
    **_because("rayft logs the trainable parameter count", print_param_status=False),
    **_because("rayft computes the loss in float32 anyway", upcast_lmhead_output=False),
    **_because("Ray Train places the quantized model", quantization_device_map=None),
    **_because("rayft saves the PiSSA adapter as trained", pissa_convert=False),
    **_because(
        _MULTIMODAL,
        media_dir=None,
        freeze_vision_tower=True,
        freeze_multi_modal_projector=True,
        freeze_language_model=False,
    ),
    **_because(_INFER, infer_backend="huggingface", infer_dtype="auto", use_kv_cache=True, offload_folder="offload"),
}
# Keys whose other values would train another model (model, data, loss, optimizer, schedule, precision, what is
# saved as the result): a value rayft does not reproduce stops the run. With `needs`, LLaMA-Factory reads the key
# only when that key is set; without it the value has no effect and is noted.
REFUSED = {
    **_refused("rayft train always trains", do_train=True),
    **_refused("rayft always ignores padding in the loss", ignore_pad_token_for_loss=True),
    **_refused(
        "rayft's final model is the last one; checkpoint.keep_best keeps the checkpoints of lowest eval loss",
        load_best_model_at_end=False,
    ),
    **_refused(
        "rayft stops early on eval/loss with train.early_stopping_patience (a rayft config)", early_stopping_steps=None
    ),
    **_refused(
        "rayft starts from model_name_or_path; `rayft train --resume` continues a stopped rayft run",
        resume_from_checkpoint=None,
    ),
    **_refused(_OPTIM, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, optim_args=None, optim_target_modules=None),
    **_refused("rayft's schedulers take no extra arguments", lr_scheduler_kwargs=(None, {})),
    **_refused(_LOSS, label_smoothing_factor=0.0),
    **_refused(
        "rayft trains with per_device_train_batch_size as given, in data order",
        auto_find_batch_size=False,
        group_by_length=False,
    ),
    **_refused("rayft loads a local directory or the hub's default revision", model_revision="main"),
    **_refused(
        "rayft grows the embeddings for the tokens it adds (model.add_tokens, model.add_special_tokens), their rows "
        "set to the noisy mean, and trains them",
        new_special_tokens_config=None,
    ),
    **_refused(
        "rayft sets new token rows to the noisy mean",
        needs="new_special_tokens_config",
        init_special_tokens="noise_init",
    ),
    **_refused(_NA, split_special_tokens=False, fp8=False),
    **_refused(
        "mixture of depths is not in rayft: its top-k routing over the whole sequence lets a token's path depend "
        "on later tokens, so generating with a KV cache needs the paper's auxiliary router, and its models load "
        "with the MoD package's classes only",
        mixture_of_depths=None,
    ),
    **_refused(
        "rayft quantizes with bitsandbytes: NF4 with double quantization for 4 bits",
        needs="quantization_bit",
        quantization_method=("bnb", "bitsandbytes"),
        quantization_type="nf4",
        double_quantization=True,
    ),
    **_refused("rayft initialises PiSSA with 16 fast-SVD iterations", needs="pissa_init", pissa_iter=16),
    **_refused(
        "rayft has no separate LoRA+ embedding learning rate", needs="loraplus_lr_ratio", loraplus_lr_embedding=1e-6
    ),
    **_refused("rayft renders tools with the chat template", tool_format=None),
    **_refused("no default system prompt key yet; put it in the data's system column", default_system=None),
    **_refused("no key for reasoning-template switches yet", enable_thinking=True, preserve_thinking=False),
}
# Families of keys, by prefix -> why they have no effect (always noted).
PREFIXES = [
    (("ppo_", "reward_model"), "not an option of LLaMA-Factory 0.9.5's stage ppo that rayft knows; no effect"),
    (("image_", "video_", "audio_", "crop_to_patches", "use_audio_in_video"), _MULTIMODAL),
    (("vllm_", "sglang_", "export_"), _INFER),
    (("swanlab_", "profiler_", "profile_modules", "fp8_", "kt_"), "an option of an integration rayft does not have"),
]
