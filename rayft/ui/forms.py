"""The Configure tab's server side: the form's fields described by the run schema, a config (from the form or its
YAML) checked as `rayft config validate` checks it, a LLaMA-Factory YAML translated, a model's facts.

Every label's help text is the schema's own `Field(description=...)`: the page and `rayft config schema` read one
source and cannot disagree.
"""

from __future__ import annotations

import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel

from rayft_core.config import RunConfig, validate_config
from rayft_core.errors import UserInputError
from rayft_core.schema import ConfigError, models_in

# The keys the form shows, by tab section; every other key is set in the YAML beside it.
FORM_FIELDS = {
    "model": ["model.name_or_path", "model.template", "model.dtype"],
    "method": [
        "stage.name",
        "tuning.method",
        "tuning.rank",
        "tuning.alpha",
        "tuning.dropout",
        "tuning.target",
        "tuning.quantization_bit",
    ],
    "data": ["data.dataset_dir", "data.max_seq_len", "data.packing", "data.val_size"],
    "train": [
        "train.learning_rate",
        "train.num_epochs",
        "train.max_steps",
        "train.micro_batch_size",
        "train.gradient_accumulation_steps",
        "train.lr_scheduler",
        "train.logging_steps",
    ],
    "resources": [
        "cluster.num_workers",
        "cluster.cpus_per_worker",
        "cluster.use_gpu",
        "deepspeed.zero_stage",
        "cluster.sequence_parallel_size",
    ],
    "output": ["output.storage_path", "output.name", "output.overwrite"],
}
DATASET_FIELDS = ["dataset", "path", "format", "ranking", "num_samples"]  # one row of data.train
SWEEP_FIELDS = ["tune.num_samples", "tune.search", "tune.scheduler", "tune.metric", "tune.mode", "tune.keep_top"]
SPACE_KINDS = ["choice", "grid", "uniform", "loguniform"]  # tune.space's distributions, as the Sweep tab offers them

# What a newcomer starts from: a LoRA SFT run; the model and the data are theirs to name.
STARTER = {
    "model": {"name_or_path": ""},
    "stage": {"name": "sft"},
    "tuning": {"method": "lora"},
    "data": {"train": [{"path": "", "format": "alpaca"}]},
    "output": {"name": "my-run"},
}


def describe_fields() -> dict[str, Any]:
    """Each form field's description, default, type and choices, and those of a data.train row."""
    fields = {path: _describe(path) for section in FORM_FIELDS.values() for path in section}
    dataset = {f"data.train.{name}": _describe(f"data.train.0.{name}") for name in DATASET_FIELDS}
    sweep = {path: _describe(path) for path in [*SWEEP_FIELDS, "tune.space"]}
    return {
        "sections": FORM_FIELDS,
        "sweep": SWEEP_FIELDS,
        "space_kinds": SPACE_KINDS,
        "fields": {**fields, **dataset, **sweep},
        "starter": STARTER,
    }


def _field_owners(path: str) -> list[Any]:
    """The pydantic FieldInfos of PATH across every model the path can pass through (a stage's keys live in
    one stage model each; a list's index is skipped)."""
    owners: list[type[BaseModel]] = [RunConfig]
    parts = [p for p in path.split(".") if not p.isdigit()]
    for i, part in enumerate(parts):
        infos = [m.model_fields[part] for m in owners if part in m.model_fields]
        if not infos:
            raise KeyError(path)
        if i == len(parts) - 1:
            return infos
        found = [models_in(info.annotation) for info in infos]
        owners = [m for f in found for m in (f if isinstance(f, list) else [f] if f else [])]
    raise KeyError(path)


def _choices(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return list(typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        return [c for arg in typing.get_args(annotation) for c in _choices(arg)]
    return []


def _members(annotation: Any) -> list[Any]:
    """The members of a union (through Optional and Annotated), the annotation itself otherwise."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _members(arg)]
    return [annotation]


def _describe(path: str) -> dict[str, Any]:
    infos = _field_owners(path)
    first = infos[0]
    choices = list(dict.fromkeys(c for info in infos for c in _choices(info.annotation)))
    default = None if first.is_required() or first.default_factory else first.default
    members = _members(first.annotation)
    found = {m for m in members if typing.get_origin(m) is not Literal} - {type(None)}
    kind = "bool" if found == {bool} else "number" if found and found <= {int, float} else "text"
    kind = ("choice" if not found else "text") if choices else kind  # choices beside other types: suggestions
    # a union's tag (stage.name, tuning.method) has no text of its own: its section's describes it
    description = first.description or _field_owners(path.rsplit(".", 1)[0])[0].description or ""
    return {"description": description, "default": default, "choices": choices, "type": kind}


def check(config: dict | None = None, text: str | None = None) -> dict[str, Any]:
    """A config given as a mapping (the form) or as YAML text: both forms of it, and its problems
    ({path, message}, as `rayft config validate` words them), empty when valid."""
    if text is not None:
        try:
            config = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            return {"config": None, "yaml": text, "problems": [{"path": "", "message": f"not YAML: {e}"}]}
        if not isinstance(config, dict):
            return {"config": None, "yaml": text, "problems": [{"path": "", "message": "expected a mapping of keys"}]}
    config = config or {}
    problems: list[str] = []
    summary = None
    try:
        run = validate_config(config)
        summary = f"{run.stage.name}, {run.tuning.method}, {run.cluster.num_workers} worker(s), ZeRO-{run.deepspeed.zero_stage}"
    except ConfigError as e:
        problems = e.problems
    return {
        "config": config,
        "yaml": text if text is not None else dump(config),
        "problems": [split_problem(p) for p in problems],
        "summary": summary,
    }


def split_problem(line: str) -> dict[str, str]:
    """A problem line split into its key path (list items as data.train.0) and message."""
    path, sep, message = line.partition(": ")
    if not sep or " " in path:
        return {"path": "", "message": line}
    return {"path": re.sub(r"\[(\d+)\]", r".\1", path), "message": message}


def full_check(config: dict) -> dict[str, Any]:
    """All that `rayft config validate` checks (the model, LoRA targets, datasets and their columns, sizes, packages,
    the output folder), as `check` words it; a RunCheckError naming every problem otherwise."""
    from rayft.checks import check_config
    from rayft_core import ownership

    run = validate_config(config).with_absolute_paths()
    check_config(run, output=ownership.SWEEP if run.tune else ownership.RUN)
    return check(config)


def dataset_names(directory: str) -> list[str]:
    """The dataset names of DIRECTORY's dataset_info.json (none when it has none)."""
    try:
        info = json.loads((Path(directory) / "dataset_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return sorted(info) if isinstance(info, dict) else []


def dump(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def import_llamafactory(text: str) -> dict[str, Any]:
    """A LLaMA-Factory YAML's translation (as `rayft config import-llamafactory` writes it) and the keys not
    honoured; a UserInputError when it is not one or cannot run."""
    from rayft_core.llamafactory import dump_translation, translate_runnable

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserInputError(f"not YAML: {e}") from None
    translated, notes = translate_runnable(raw, "the imported YAML")
    return {**check(translated), "yaml": dump_translation(translated, notes, "imported.yaml"), "notes": notes}


def model_facts(name_or_path: str) -> dict[str, Any]:
    """The architecture and parameter count of a local model directory (or a hub id in the local cache), from its
    config.json alone: the model is built on the meta device, no weights are read."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(name_or_path)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception as e:  # a path that is no model, a hub id not cached here: say what it was
        raise UserInputError(f"{name_or_path}: cannot read this model's config: {e}") from None
    return {
        "model_type": config.model_type,
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": getattr(config, "num_hidden_layers", None),
        "hidden_size": getattr(config, "hidden_size", None),
    }
