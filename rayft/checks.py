"""Checks on the driver before anything starts: model, tuning method, data, optional packages, output, resources.

``check_config`` needs no cluster: `rayft config validate` runs it, and `rayft train` / `rayft tune` run it before
Ray starts. ``check_cluster`` compares the run with the cluster it joined. Each raises ``RunCheckError`` with
every problem and the key to change. They run before the output directory is created, so a run that fails
them leaves nothing behind.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rayft_core import ownership
from rayft_core.config import RunConfig
from rayft_core.errors import UserInputError
from rayft_core.methods import missing_dependencies
from rayft_core.model.loader import ModelFacts, ModelLoadError, check_model_path
from rayft_core.ownership import OutputKind
from rayft_core.schema import get_key
from rayft_core.stage_base import TEXT
from rayft_core.train import sequence_parallel

# More workers than any cluster holds: a typo (an extra zero or three), not a plan.
MAX_WORKERS = 100_000


class RunCheckError(UserInputError):
    """The run cannot start as configured; the message says what to change."""


def check_config(
    run: RunConfig, resume: bool = False, output: OutputKind = ownership.RUN, model: ModelFacts | None = None
) -> None:
    """Everything that needs no cluster. ``output``: what the run's directory will hold (a sweep's, a sweep).
    ``model``: the model as the checks read it (each part loaded once); the caller's, to reuse it after."""
    from rayft_core.train.stages import STAGES

    _check_model(run)
    model = model or ModelFacts(run)
    problems = _check_packages(run)
    problems += _check_chat_template(run, model)
    problems += STAGES[run.stage.name].check(run, model)
    problems += _check_family(model)
    problems += sequence_parallel.model_problems(run.cluster.sequence_parallel_size, model.config)
    problems += _check_targets(run, model)
    problems += _check_sizes(run, model)
    problems += _check_data(run)
    problems += _check_storage(run) or (_check_resume(run) if resume else _check_output(run, output))
    _raise(problems)


def check_data_inputs(run: RunConfig, sections: tuple[str, ...] = ("data.train",), model: bool = True) -> None:
    """What reading the data of ``sections`` needs (`rayft data preview/prepare`, `rayft infer`): the datasets,
    and with ``model`` the tokenizer's model and its chat template."""
    if model:
        _check_model(run)
    _raise((_check_chat_template(run, ModelFacts(run)) if model else []) + _check_data(run, sections))


def check_cluster(run: RunConfig, resources: dict[str, float], use_gpu: bool) -> None:
    """What the run asks of the cluster it joined: CPUs and GPUs for its workers."""
    problems = _check_resources(run, resources, use_gpu)
    if (run.deepspeed.offload_optimizer or run.deepspeed.offload_params) and not use_gpu:
        problems.append(
            "deepspeed.offload_*: offloading moves state from GPU to CPU memory; this run has no GPU, "
            "so set them to false"
        )
    _raise(problems)


def _check_model(run: RunConfig) -> None:
    """First, alone: without a loadable model the checks after it (template, targets, sizes) cannot run."""
    try:
        check_model_path(run.model)
    except ModelLoadError as e:
        raise RunCheckError(str(e)) from None


def _check_family(facts: ModelFacts) -> list[str]:
    """A model family the architecture matrix (`rayft models`) shows rayft cannot train: not a decoder LLM, or one
    whose logits rayft's loss does not reproduce (it would train on a wrong loss without a sign)."""
    from rayft_core.model.matrix import family_problem

    problem = family_problem(getattr(facts.config, "model_type", None))
    return [f"model.name_or_path: {problem}"] if problem else []


def _raise(problems: list[str]) -> None:
    if problems:
        raise RunCheckError("the run cannot start:\n" + "\n".join(f"  - {p}" for p in problems))


def _check_packages(run: RunConfig) -> list[str]:
    problems = []
    if importlib.util.find_spec("deepspeed") is None:
        problems.append("training needs DeepSpeed: pip install 'rayft[deepspeed]'")
    problems += missing_dependencies(run)  # the tuning method's optional packages (bitsandbytes, galore-torch)
    from rayft_core.train.tracking import missing_trackers

    problems += missing_trackers(run)
    if run.deepspeed.config_file and not Path(run.deepspeed.config_file).is_file():
        problems.append(f"deepspeed.config_file: no file at {run.deepspeed.config_file!r}")
    return problems


def _check_chat_template(run: RunConfig, model: ModelFacts) -> list[str]:
    if run.stage.data == TEXT or run.model.chat_template or run.model.template:
        return []
    if not getattr(model.tokenizer, "chat_template", None):
        return [
            f"model.chat_template: stage {run.stage.name!r} renders conversations with the tokenizer's chat "
            "template and this tokenizer has none; give one (a Jinja string) in model.chat_template"
        ]
    return []


def _check_targets(run: RunConfig, facts: ModelFacts) -> list[str]:
    """Resolve LoRA/GaLore targets and freeze layers on a weightless (meta) copy of the model."""
    target = getattr(run.tuning, "target", None)
    if target is None and run.tuning.method != "freeze":
        return []
    from rayft_core.model.adapters import TuningError, decoder_layers, resolve_targets

    model = facts.meta_model
    try:
        if target is not None:
            resolve_targets(model, target, "tuning.target")
            if run.tuning.method == "lora":
                run.tuning.trained_in_full(model, run)
        else:
            n = len(decoder_layers(model))
            if run.tuning.trainable_layers > n:
                return [f"tuning.trainable_layers: the model has {n} layers, got {run.tuning.trainable_layers}"]
    except TuningError as e:
        return [str(e)]
    return []


def _check_sizes(run: RunConfig, model: ModelFacts) -> list[str]:
    """Sizes no run can have: a context beyond the model's positions without RoPE scaling, absurd worker counts."""
    problems = []
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and run.data.max_seq_len > limit and not run.model.rope_scaling:
        problems.append(
            f"data.max_seq_len: {run.data.max_seq_len} is beyond the {limit} positions "
            f"{run.model.name_or_path} was trained on; lower it, or set model.rope_scaling (linear, dynamic "
            "or yarn) to stretch the positions"
        )
    if run.cluster.num_workers > MAX_WORKERS:
        problems.append(
            f"cluster.num_workers: {run.cluster.num_workers:,} workers is more than any cluster holds "
            f"(over {MAX_WORKERS:,}); one worker takes one GPU, or cpus_per_worker CPUs"
        )
    return problems


def _check_data(run: RunConfig, sections: tuple[str, ...] = ("data.train", "data.eval")) -> list[str]:
    """The datasets resolve before anything is read: dataset_info.json names, files, the columns the stage needs."""
    from rayft.data import resolve_datasets
    from rayft.sources import resolve_files

    problems = []
    for section in sections:
        try:
            for d in resolve_datasets(run, section):
                if d.spec.path and "://" not in d.spec.path and d.manifest is None:
                    resolve_files(d.spec.path, d.key)
        except UserInputError as e:
            problems.append(str(e))
    return problems


def _check_resources(run: RunConfig, resources: dict[str, float], use_gpu: bool) -> list[str]:
    c = run.cluster
    problems = []
    cpus_needed = c.num_workers * c.cpus_per_worker
    if cpus_needed > resources.get("CPU", 0):
        problems.append(
            f"cluster.num_workers: {c.num_workers} workers x {c.cpus_per_worker:g} CPUs need {cpus_needed:g} CPUs; "
            f"the cluster has {resources.get('CPU', 0):g}. Lower num_workers or cpus_per_worker, or add nodes"
        )
    if use_gpu and c.num_workers > resources.get("GPU", 0):
        problems.append(
            f"cluster.num_workers: {c.num_workers} GPU workers need {c.num_workers} GPUs; the cluster has "
            f"{resources.get('GPU', 0):g}"
        )
    return problems


def _check_storage(run: RunConfig) -> list[str]:
    """Write (and remove) a probe file: a storage path nobody can write fails now, not after training."""
    from rayft_core.storage import check_writable

    why = check_writable(run.output.storage_path)
    if why:
        return [
            f"output.storage_path: cannot write to {run.output.storage_path} ({why}); choose a writable directory "
            "or bucket (on a multi-node cluster, storage every node reaches)"
        ]
    return []


OVERWRITE_FLAG = "output.overwrite=true"


def _check_output(run: RunConfig, kind: OutputKind) -> list[str]:
    """The run's directory is new, empty, or (with output.overwrite) an earlier rayft output of the same kind."""
    why = ownership.problem(run.output.dir, kind, run.output.overwrite, OVERWRITE_FLAG)
    if why and ownership.is_owned(run.output.dir, kind) and kind is ownership.RUN:
        why += ", or continue it from its latest checkpoint with `rayft train --resume`"
    return [f"output.name: {why}"] if why else []


# What a checkpoint's contents depend on: resuming with any of these changed would load shards of another model,
# method or layout (ZeRO partitions are per rank).
RESUME_KEYS = (
    "model.name_or_path",
    "model.add_special_tokens",
    "tuning",
    "stage.name",
    "deepspeed.zero_stage",
    "cluster.num_workers",
)


def _check_resume(run: RunConfig) -> list[str]:
    import yaml

    from rayft_core.config import validate_config
    from rayft_core.storage import join, read_text
    from rayft_core.train.outputs import CONFIG_FILE

    saved = read_text(join(run.output.dir, CONFIG_FILE))
    if saved is None:
        return [
            f"--resume: {run.output.dir} holds no run to resume ({CONFIG_FILE} is missing); check output.name "
            "and output.storage_path"
        ]
    before, now = validate_config(yaml.safe_load(saved)).model_dump(mode="json"), run.model_dump(mode="json")
    changed = [k for k in RESUME_KEYS if get_key(before, k) != get_key(now, k)]
    return [
        f"{k}: the run being resumed has {get_key(before, k)!r}, this config {get_key(now, k)!r}; its checkpoints "
        "only load into the same model, tuning method, stage, ZeRO stage and number of workers"
        for k in changed
    ]
