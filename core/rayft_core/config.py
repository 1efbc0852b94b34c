"""The one typed schema of a rayft run: YAML + dotted ``key=value`` overrides -> RunConfig.

    cfg = load_config("run.yaml", ["train.learning_rate=1e-4", "tuning.rank=16"])

Defaults live only here; derived values are properties. Every error is reported at once with
its YAML path, the value received and the fix (``ConfigError``, from the machinery all rayft schemas
share: rayft_core.schema).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SerializeAsAny, field_validator, model_validator

# The sections of where and how the workers run (DeepSpeed, the cluster), in their own module.
from rayft_core.cluster_config import ClusterConfig as ClusterConfig
from rayft_core.cluster_config import DeepSpeedConfig as DeepSpeedConfig

# The data section, in its own module like the stage, tuning and tune sections; its names stay importable from here.
from rayft_core.data_config import DataConfig as DataConfig
from rayft_core.data_config import DatasetColumns as DatasetColumns
from rayft_core.data_config import DatasetSpec as DatasetSpec
from rayft_core.data_config import DatasetTags as DatasetTags
from rayft_core.errors import UserInputError

# The tuning sections: one module a method in rayft_core.methods, the union built from its registry. Their names
# stay importable from here (`X as X`: re-exported).
from rayft_core.methods import ApolloTuning as ApolloTuning
from rayft_core.methods import BadamTuning as BadamTuning
from rayft_core.methods import FreezeTuning as FreezeTuning
from rayft_core.methods import FullTuning as FullTuning
from rayft_core.methods import GaloreTuning as GaloreTuning
from rayft_core.methods import LoraTuning, TuningConfig, TuningSection, expand_alias, plugin_method
from rayft_core.methods import PeftTuning as PeftTuning
from rayft_core.model_config import ModelConfig as ModelConfig
from rayft_core.plugins import absolute_reference, is_reference, name_or_reference
from rayft_core.schedule import ScheduleChange
from rayft_core.schema import ConfigError, Section, apply_override, read_yaml, validate_section
from rayft_core.stage_config import SftStage, StageConfig
from rayft_core.sweep_config import SweepConfig

# Sections that are tagged unions: section -> (tag key, default tag). Read shorthand (`stage: pt`),
# fill a missing tag, and hide the tag from error paths.
UNION_TAGS = {"stage": ("name", "sft"), "tuning": ("method", "lora")}


# ----------------------------------------------------------------------------- optimisation


class TrainConfig(Section):
    num_epochs: float = Field(1.0, gt=0, description="Passes over the data (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    micro_batch_size: int = Field(4, ge=1, description="Examples per worker per forward pass.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate.")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warmup.")
    warmup_ratio: float = Field(
        0.0, ge=0, lt=1, description="Fraction of the optimizer steps spent warming up linearly."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    optimizer: name_or_reference(
        ("adamw", "muon", "adam_mini", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")
    ) = Field(
        "adamw",
        description="muon: orthogonalised updates on 2-D hidden weights, AdamW on the rest (use_muon); adam_mini: one "
        "second moment per block (use_adam_mini), both ZeRO-0 with fp32 weights or an adapter; adamw_8bit, paged_*: "
        "bitsandbytes' AdamW with 8-bit or paged states (LLaMA-Factory's optim names); or your own, "
        "'path/to/file.py:function' taking (param_groups, run, model) and returning a torch optimizer "
        "(docs/extending.md).",
    )
    max_grad_norm: float = Field(1.0, ge=0, description="Clip the global gradient norm (0 = off).")
    token_loss: name_or_reference(("cross_entropy", "dft", "eaft", "asft")) = Field(
        "cross_entropy",
        description="pt/sft: each token's cross-entropy weighted, the weight held constant: dft by the probability "
        "the model gives the token (Wu et al. 2025; LLaMA-Factory's use_dft_loss), eaft by (H/3)^eaft_alpha with H "
        "the entropy over the 20 likeliest tokens (use_eaft_loss); asft (sft only) DFT plus asft_alpha times the KL "
        "from the base's next-token distribution to the model's (use_asft_loss; a frozen copy of the base on each "
        "worker unless the run trains an adapter); or your own, 'path/to/file.py:function' taking "
        "(logits, cross_entropy) of the labelled tokens and returning their weights (docs/extending.md). "
        "train/loss reports the weighted loss.",
    )
    eaft_alpha: float = Field(1.0, gt=0, description="token_loss eaft: the exponent of its entropy weight.")
    asft_alpha: float = Field(0.1, ge=0, description="token_loss asft: the weight of its KL term.")
    neftune_noise_alpha: float | None = Field(
        None,
        gt=0,
        description="NEFTune (Jain et al. 2023): uniform noise in [-a, a], a = alpha / sqrt(seq_len * hidden), added "
        "to the input embeddings while training (never in evaluation or generation); the paper uses 5 to 15.",
    )
    seed: int = Field(42, description="Seeds model init of new parameters, dropout and data order.")
    logging_steps: int = Field(
        10,
        ge=1,
        description="Report metrics every N optimizer steps (RL stages: every N iterations, averaged over them).",
    )
    eval_steps: int | None = Field(
        None,
        ge=1,
        description="Evaluate every N optimizer steps when there is evaluation "
        "data (data.eval or data.val_size); it is always evaluated at the end.",
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="Stop once eval/loss has not improved on its best by more than early_stopping_threshold "
        "for this many evaluations in a row; the model saved is the last one, and with checkpoint.keep_best the best "
        "checkpoint is named in summary.json. Needs evaluation data and eval_steps. None: train to the end.",
    )
    early_stopping_threshold: float = Field(
        0.0,
        ge=0,
        description="The least decrease of eval/loss that counts as an improvement for early_stopping_patience.",
    )
    schedule: list[ScheduleChange] = Field(
        default_factory=list,
        description="Hyperparameters that change during the run: [{after_step: N, set: {train.learning_rate: ..}}] "
        "(rayft_core.schedule); a PBT sweep's best_run.yaml records its winner's changes here.",
    )


class CheckpointConfig(Section):
    save_steps: int | None = Field(
        None,
        ge=1,
        description="Checkpoint every N optimizer steps into the run's directory in output.storage_path: "
        "model, optimizer and scheduler (each rank's ZeRO shard) and the data position. A run restarted after a worker "
        "failure (cluster.max_failures) or with `rayft train --resume` continues from the latest. None: no checkpoints.",
    )
    keep: int | None = Field(
        2, ge=1, description="Checkpoints kept: the latest N, or with keep_best the N of lowest eval/loss. None: all."
    )
    keep_best: bool = Field(
        False,
        description="Keep the checkpoints of lowest eval/loss instead of the latest; needs "
        "evaluation data and save_steps a multiple of train.eval_steps.",
    )


class OutputConfig(Section):
    storage_path: str = Field(
        "outputs",
        description="Where runs are written: a local or shared directory, or a URI "
        "that pyarrow reaches (s3://bucket/runs, gs://..., abfs://...). A multi-node cluster "
        "needs shared storage: every node writes checkpoints there.",
    )
    name: str = Field(
        "rayft-run",
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Run name: the output is storage_path/name. "
        "A plain name (letters, digits, '.', '_', '-'), never '.' or '..'.",
    )
    merge_adapter: bool = Field(False, description="Also write the base with the LoRA adapter merged into merged/.")
    max_shard_size: str = Field(
        "5GB",
        pattern=r"^[0-9]+(KB|MB|GB|KiB|MiB|GiB)$",
        description="The largest safetensors file of a full model's weights (more files and an index beyond it); "
        "under ZeRO-3 the model is gathered and written one such shard at a time, never whole.",
    )
    overwrite: bool = Field(
        False,
        description="Replace an earlier rayft run in storage_path/name: the files rayft wrote "
        "there are deleted first. A directory holding any file rayft did not write is refused "
        "either way: rayft never deletes a user's files.",
    )
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list,
        description="Trackers fed with every report besides metrics.jsonl: TensorBoard (tensorboard/), "
        "MLflow (a file store in mlruns/), Weights & Biases (offline, in wandb/; `wandb sync` uploads it).",
    )

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if set(name) == {"."}:  # '.' or '..' would make the run's directory storage_path itself or its parent
            raise ValueError("a run name is a plain directory name inside storage_path, not '.' or '..'")
        return name

    @property
    def dir(self) -> str:
        """The run's directory: storage_path/name (a path, or a URI when storage_path is one)."""
        if "://" in self.storage_path:
            return f"{self.storage_path.rstrip('/')}/{self.name}"
        return str(Path(self.storage_path).expanduser().absolute() / self.name)


# ----------------------------------------------------------------------------- the run


class RunConfig(Section):
    """One fine-tuning run."""

    model: ModelConfig
    # SerializeAsAny: a plug-in method (not in the union) is written out by its own schema.
    tuning: SerializeAsAny[TuningConfig] = Field(
        default_factory=LoraTuning, description="The tuning method and its options."
    )
    stage: StageConfig = Field(default_factory=SftStage, description="The training stage and its options.")
    data: DataConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    tune: SweepConfig | None = Field(
        None,
        description="A sweep for `rayft tune` (which may also take it from "
        "--space); `rayft train` trains the run as written and refuses a run with one.",
    )

    @field_validator("stage", "tuning", mode="before")
    @classmethod
    def _shorthand(cls, v: Any, info: Any) -> Any:
        """`stage: sft` means `stage: {name: sft}`; a section without its tag takes the default one;
        a tuning method's alias stands for it with some keys set (`tuning: qlora`: LoRA on a 4-bit base)."""
        tag, default = UNION_TAGS[info.field_name]
        if isinstance(v, str):
            v = {tag: v}
        if isinstance(v, dict):
            v = {tag: default, **v}
            if info.field_name == "tuning":
                v = expand_alias(v)
        return v

    @field_validator("tuning", mode="wrap")
    @classmethod
    def _plugin_method(cls, v: Any, handler: Any) -> Any:
        """`tuning: {method: my_methods.py:SparseMask, ...}`: a user's TuningSection subclass, its keys validated by
        its own schema (rayft_core.methods.plugin_method)."""
        if isinstance(v, TuningSection) and is_reference(getattr(v, "method", None)):
            return v  # validated by validate_config, whose errors name the keys' paths
        if isinstance(v, dict) and is_reference(v.get("method")):
            return plugin_method(v["method"]).model_validate(v)
        return handler(v)

    @model_validator(mode="after")
    def _zero_stage_for_the_workers(self) -> RunConfig:
        ds = self.deepspeed
        if ds.zero_stage is None:
            ds.zero_stage = 2 if self.cluster.num_workers > 1 or ds.offload_optimizer else 0
        return self

    def _token_loss_problems(self) -> list[str]:
        loss = self.train.token_loss
        if loss != "cross_entropy" and self.stage.name not in ("pt", "sft"):
            return [f"train.token_loss: a loss of stages pt and sft; stage {self.stage.name} has its own"]
        if loss == "asft" and self.stage.name != "sft":
            return ["train.token_loss: asft is a loss of stage sft (its KL anchors answers to the base)"]
        if loss == "asft" and self.cluster.sequence_parallel_size > 1:
            return ["train.token_loss: asft's reference reads whole sequences; drop sequence parallelism"]
        return []

    def check_combinations(self) -> list[str]:
        """Problems between sections, each as 'path: what to change'."""
        problems = self.tuning.problems(self)  # the method's own rules (GaLore: ZeRO 0; QLoRA: not ZeRO-3)
        problems += self.model.problems(self)
        problems += self._token_loss_problems()
        from rayft_core import schedule
        from rayft_core.train import optim, sequence_parallel

        problems += sequence_parallel.problems(self) + self.deepspeed.problems() + optim.problems(self)
        problems += schedule.problems(self)
        if not self.stage.trains_with_dropout and getattr(self.tuning, "dropout", 0):
            problems.append(
                f"tuning.dropout: stage {self.stage.name} trains without dropout (it compares the scores of two "
                "answers, or the policy with its reference, and dropout would add noise to both); set it to 0"
            )
        c = self.checkpoint
        if c.keep_best:
            if not (self.data.eval or self.data.val_size):
                problems.append(
                    "checkpoint.keep_best: ranking checkpoints by eval/loss needs evaluation data "
                    "(data.eval or data.val_size)"
                )
            if not (c.save_steps and self.train.eval_steps and c.save_steps % self.train.eval_steps == 0):
                problems.append(
                    f"checkpoint.keep_best: save_steps ({c.save_steps}) must be a multiple of "
                    f"train.eval_steps ({self.train.eval_steps}), so every checkpoint has an eval/loss"
                )
        if self.train.early_stopping_patience and not (
            self.train.eval_steps and (self.data.eval or self.data.val_size)
        ):
            problems.append(
                "train.early_stopping_patience: stopping on eval/loss needs evaluation data (data.eval or "
                "data.val_size) and train.eval_steps"
            )
        if self.train.eval_steps and not (self.data.eval or self.data.val_size) and self.stage.loop == "supervised":
            problems.append(
                f"train.eval_steps: evaluating every {self.train.eval_steps} steps needs evaluation data; "
                "name it in data.eval or hold some out with data.val_size, or remove eval_steps"
            )
        if self.data.packing and not self.stage.packs:
            problems.append(
                f"data.packing: stage {self.stage.name} scores whole answers and does not pack; set it to false"
            )
        problems += self.stage.problems(self)
        if self.data.streaming and not self.train.max_steps:
            problems.append("train.max_steps: a streamed dataset has no length known in advance; set max_steps")
        if self.data.streaming and self.data.val_size:
            problems.append("data.val_size: a streamed dataset cannot be split; name evaluation data in data.eval")
        if self.model.template is not None:
            from rayft_core.data.templates import TEMPLATES

            if self.model.template not in TEMPLATES:
                close = difflib.get_close_matches(self.model.template, list(TEMPLATES), n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                problems.append(
                    f"model.template: unknown template {self.model.template!r}; {hint}choose one of {', '.join(TEMPLATES)}"
                )
        return problems

    def with_absolute_paths(self) -> RunConfig:
        """Local relative paths made absolute on the driver: workers on other nodes or in other
        working directories must find the same files."""

        def absolute(p: str | None) -> str | None:
            return str(Path(p).expanduser().absolute()) if p and Path(p).expanduser().exists() else p

        run = self.model_copy(deep=True)
        run.model.name_or_path = absolute(run.model.name_or_path)
        run.deepspeed.config_file = absolute(run.deepspeed.config_file)
        for key in ("reference_model", "reward_model", "init_adapter"):
            if getattr(run.stage, key, None):
                setattr(run.stage, key, absolute(getattr(run.stage, key)))
        for fn in getattr(run.stage, "reward_functions", []):
            fn.function = absolute_reference(fn.function)
        if is_reference(run.tuning.method):
            run.tuning.method = absolute_reference(run.tuning.method)
        for key in ("optimizer", "token_loss"):
            setattr(run.train, key, absolute_reference(getattr(run.train, key)))
        if "://" not in run.output.storage_path:
            run.output.storage_path = str(Path(run.output.storage_path).expanduser().absolute())
        run.data.dataset_dir = absolute(run.data.dataset_dir) or run.data.dataset_dir
        run.data.cache_dir = (
            run.data.cache_dir
            if not run.data.cache_dir or "://" in run.data.cache_dir
            else str(Path(run.data.cache_dir).expanduser().absolute())
        )
        for spec in run.data.train + run.data.eval:
            if spec.path and "://" not in spec.path:
                spec.path = str(Path(spec.path).expanduser().absolute())
        return run

    @property
    def packing(self) -> bool:
        """data.packing, whose default is on for pre-training and off otherwise."""
        return self.data.packing if self.data.packing is not None else self.stage.packs_by_default

    @property
    def global_batch_size(self) -> int:
        return self.train.micro_batch_size * self.train.gradient_accumulation_steps * self.cluster.num_workers


# ----------------------------------------------------------------------------- loading


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, data: dict | None = None
) -> RunConfig:
    """Read YAML (or take ``data``), apply ``key.path=value`` overrides, validate once."""
    raw: dict = read_yaml(path) if path is not None else dict(data or {})
    for item in overrides or []:
        apply_override(raw, item, UNION_TAGS)
    return validate_config(raw)


def validate_config(raw: dict) -> RunConfig:
    tuning = raw.get("tuning") if isinstance(raw, dict) else None
    if isinstance(tuning, dict) and is_reference(tuning.get("method")):  # a plug-in method: its keys by its schema
        try:
            raw = {**raw, "tuning": validate_section(plugin_method(tuning["method"]), tuning)}
        except ConfigError as e:
            raise ConfigError([f"tuning.{p}" for p in e.problems]) from None
        except UserInputError as e:
            raise ConfigError([f"tuning.method: {e}"]) from None
    cfg = validate_section(RunConfig, raw)
    problems = cfg.check_combinations()
    if problems:
        raise ConfigError(problems)
    return cfg


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML, written next to every checkpoint."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
