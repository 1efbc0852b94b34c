"""Checks on the driver before anything is submitted: model, tuning method, optional packages, resources.

Each raises ``RunCheckError`` with the key to change. They run before the output directory is
created, so a run that fails them leaves nothing behind.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rayft_core.config import LoraTuning, RunConfig
from rayft_core.errors import UserInputError
from rayft_core.model.loader import ModelLoadError, check_model_path


class RunCheckError(UserInputError):
    """The run cannot start as configured; the message says what to change."""


def check_run(run: RunConfig, cluster_resources: dict[str, float], use_gpu: bool, resume: bool = False) -> None:
    problems: list[str] = []
    try:
        check_model_path(run.model)
    except ModelLoadError as e:
        raise RunCheckError(str(e)) from None
    problems += _check_packages(run, use_gpu)
    problems += _check_chat_template(run)
    problems += _check_stage(run)
    problems += _check_targets(run)
    problems += _check_resources(run, cluster_resources, use_gpu)
    problems += _check_storage(run) or (_check_resume(run) if resume else _check_output(run))
    if problems:
        raise RunCheckError("the run cannot start:\n" + "\n".join(f"  - {p}" for p in problems))


def _check_packages(run: RunConfig, use_gpu: bool) -> list[str]:
    problems = []
    if importlib.util.find_spec("deepspeed") is None:
        problems.append("training needs DeepSpeed: pip install 'rayft[deepspeed]'")
    if isinstance(run.tuning, LoraTuning) and run.tuning.quantization_bit and importlib.util.find_spec("bitsandbytes") is None:
        problems.append("tuning.quantization_bit needs bitsandbytes: pip install 'rayft[qlora]'")
    if run.tuning.method == "galore" and importlib.util.find_spec("galore_torch") is None:
        problems.append("tuning.method galore needs galore-torch: pip install 'rayft[galore]'")
    if (run.deepspeed.offload_optimizer or run.deepspeed.offload_params) and not use_gpu:
        problems.append("deepspeed.offload_*: offloading moves state from GPU to CPU memory; this run has no GPU, "
                        "so set them to false")
    from rayft_core.train.tracking import missing_trackers

    problems += missing_trackers(run)
    if run.deepspeed.config_file and not Path(run.deepspeed.config_file).is_file():
        problems.append(f"deepspeed.config_file: no file at {run.deepspeed.config_file!r}")
    return problems


def _check_chat_template(run: RunConfig) -> list[str]:
    if run.stage.name == "pt" or run.model.chat_template or run.model.template:
        return []
    from rayft_core.model.loader import load_tokenizer

    if not getattr(load_tokenizer(run.model), "chat_template", None):
        return [f"model.chat_template: stage {run.stage.name!r} renders conversations with the tokenizer's chat "
                "template and this tokenizer has none; give one (a Jinja string) in model.chat_template"]
    return []


def _check_stage(run: RunConfig) -> list[str]:
    """What a preference stage needs of the models: a hidden state for a value head, a loadable reference."""
    problems = []
    if run.stage.name == "rm":
        from rayft_core.model.loader import build_model_config
        from rayft_core.model.value_head import hidden_size_of

        if hidden_size_of(build_model_config(run)) is None:
            problems.append(f"stage: rm puts a value head on the last hidden state, and {run.model.name_or_path} "
                            "declares no hidden_size; train the reward model on a causal LM that has one")
    reference = getattr(run.stage, "reference_model", None)
    if reference and not (Path(reference).expanduser() / "config.json").is_file():
        problems.append(f"stage.reference_model: {reference!r} has no config.json; point it at a model directory "
                        "written by save_pretrained")
    return problems


def _check_targets(run: RunConfig) -> list[str]:
    """Resolve LoRA/GaLore targets and freeze layers on a weightless (meta) copy of the model."""
    target = getattr(run.tuning, "target", None)
    if target is None and run.tuning.method != "freeze":
        return []
    import torch
    from transformers import AutoModelForCausalLM

    from rayft_core.model.adapters import TuningError, decoder_layers, resolve_targets
    from rayft_core.model.loader import build_model_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(build_model_config(run), trust_remote_code=run.model.trust_remote_code)
    try:
        if target is not None:
            resolve_targets(model, target, "tuning.target")
        else:
            n = len(decoder_layers(model))
            if run.tuning.trainable_layers > n:
                return [f"tuning.trainable_layers: the model has {n} layers, got {run.tuning.trainable_layers}"]
    except TuningError as e:
        return [str(e)]
    return []


def _check_resources(run: RunConfig, resources: dict[str, float], use_gpu: bool) -> list[str]:
    c = run.cluster
    problems = []
    cpus_needed = c.num_workers * c.cpus_per_worker
    if cpus_needed > resources.get("CPU", 0):
        problems.append(f"cluster.num_workers: {c.num_workers} workers x {c.cpus_per_worker} CPUs need {cpus_needed:g} CPUs; "
                        f"the cluster has {resources.get('CPU', 0):g}. Lower num_workers or cpus_per_worker, or add nodes")
    if use_gpu and c.num_workers > resources.get("GPU", 0):
        problems.append(f"cluster.num_workers: {c.num_workers} GPU workers need {c.num_workers} GPUs; the cluster has "
                        f"{resources.get('GPU', 0):g}")
    return problems


def _check_storage(run: RunConfig) -> list[str]:
    """Write (and remove) a probe file: a storage path nobody can write fails now, not after training."""
    from rayft_core.storage import check_writable

    why = check_writable(run.output.storage_path)
    if why:
        return [f"output.storage_path: cannot write to {run.output.storage_path} ({why}); choose a writable directory "
                "or bucket (on a multi-node cluster, storage every node reaches)"]
    return []


def _check_output(run: RunConfig) -> list[str]:
    from rayft_core.storage import holds_files

    if holds_files(run.output.dir) and not run.output.overwrite:
        return [f"output.name: {run.output.dir} already holds a run; choose another name, set output.overwrite=true, or "
                "continue it from its latest checkpoint with `rayft train --resume`"]
    return []


# What a checkpoint's contents depend on: resuming with any of these changed would load shards of another model,
# method or layout (ZeRO partitions are per rank).
RESUME_KEYS = ("model.name_or_path", "model.add_special_tokens", "tuning", "stage.name", "deepspeed.zero_stage",
               "cluster.num_workers")


def _check_resume(run: RunConfig) -> list[str]:
    import yaml

    from rayft_core.config import validate_config
    from rayft_core.storage import join, read_text
    from rayft_core.train.outputs import CONFIG_FILE

    saved = read_text(join(run.output.dir, CONFIG_FILE))
    if saved is None:
        return [f"--resume: {run.output.dir} holds no run to resume ({CONFIG_FILE} is missing); check output.name "
                "and output.storage_path"]
    before, now = validate_config(yaml.safe_load(saved)).model_dump(mode="json"), run.model_dump(mode="json")
    changed = [k for k in RESUME_KEYS if _get(before, k) != _get(now, k)]
    return [f"{k}: the run being resumed has {_get(before, k)!r}, this config {_get(now, k)!r}; its checkpoints "
            "only load into the same model, tuning method, stage, ZeRO stage and number of workers" for k in changed]


def _get(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree
