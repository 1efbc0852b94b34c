"""The one typed schema of a rayft run: YAML + dotted ``key=value`` overrides -> RunConfig.

    cfg = load_config("run.yaml", ["train.learning_rate=1e-4", "tuning.rank=16"])

Defaults live only here; derived values are properties. Every error is reported at once with
its YAML path, the value received and the fix (see ``ConfigError``).
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rayft_core.errors import UserInputError


class ConfigError(UserInputError):
    """A run config that cannot run: one line per problem, each naming its YAML path."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid run config:\n" + "\n".join(f"  - {p}" for p in problems))


# Sections that are tagged unions: section -> (tag key, default tag). Read shorthand (`stage: pt`),
# fill a missing tag, and hide the tag from error paths.
UNION_TAGS = {"stage": ("name", "sft"), "tuning": ("method", "lora")}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


# ----------------------------------------------------------------------------- model


class ModelConfig(_Section):
    name_or_path: str = Field(description="Local directory (or hub id, when online) of a causal LM that transformers' Auto classes load.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Compute dtype. auto: bfloat16 on CUDA with compute capability >= 8, float16 below, float32 on CPU.")
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="auto: flash_attention_2 when installed and on CUDA, else sdpa.")
    rope_scaling: Literal["linear", "dynamic", "yarn"] | None = Field(
        None, description="RoPE scaling type used when data.max_seq_len exceeds the model's max_position_embeddings; "
        "factor = max_seq_len / max_position_embeddings.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward: less memory, ~30% more compute.")
    trust_remote_code: bool = Field(False, description="Run modelling code shipped with the checkpoint. Off unless you trust it.")
    add_special_tokens: list[str] = Field(
        default_factory=list, description="Extra special tokens; the embeddings are resized and new rows set to the noisy mean of the old ones.")
    chat_template: str | None = Field(None, description="A Jinja chat template that replaces the tokenizer's own.")


# ----------------------------------------------------------------------------- tuning methods


class FullTuning(_Section):
    method: Literal["full"] = "full"


class FreezeTuning(_Section):
    method: Literal["freeze"] = "freeze"
    trainable_layers: int = Field(2, ge=1, description="Train the last N decoder layers (the rest is frozen).")
    trainable_modules: list[str] = Field(
        default_factory=list, description="Also train parameters whose name contains one of these strings (e.g. embed_tokens, lm_head).")


class LoraTuning(_Section):
    method: Literal["lora"] = "lora"
    rank: int = Field(8, ge=1, description="LoRA rank r: higher = more capacity and memory.")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha; default 2 * rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target: Union[Literal["all"], list[str]] = Field(
        "all", description="'all' = every nn.Linear except the output head, or a list of module names (q_proj, v_proj, ...).")
    use_rslora: bool = Field(False, description="rsLoRA: scale by alpha / sqrt(rank) instead of alpha / rank.")
    use_dora: bool = Field(False, description="DoRA: weight-decomposed LoRA (magnitude + direction).")
    init: Literal["default", "pissa", "gaussian"] = Field(
        "default", description="pissa: initialise A and B from the principal singular vectors of the weight (fast SVD).")
    loraplus_lr_ratio: float | None = Field(
        None, gt=0, description="LoRA+: the B matrices learn at learning_rate * ratio (the paper suggests 16).")
    quantization_bit: Literal[4, 8] | None = Field(
        None, description="QLoRA: load the base in 4-bit NF4 (double quantisation) or 8-bit with bitsandbytes. "
        "`tuning: qlora` is shorthand for method lora with quantization_bit 4.")

    @property
    def lora_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.rank


class GaloreTuning(_Section):
    method: Literal["galore"] = "galore"
    rank: int = Field(16, ge=1, description="Rank of the gradient projection.")
    update_proj_gap: int = Field(200, ge=1, description="Recompute the projection every N optimizer steps.")
    scale: float = Field(0.25, gt=0, description="GaLore scale applied to the projected update.")
    target: Union[Literal["all"], list[str]] = Field(
        "all", description="2-D weights to project: 'all' linear layers except the head, or module names.")


TuningConfig = Annotated[Union[FullTuning, FreezeTuning, LoraTuning, GaloreTuning], Field(discriminator="method")]


# ----------------------------------------------------------------------------- data


class DatasetSpec(_Section):
    path: str = Field(description="A file, directory or glob of json/jsonl (chat formats) or txt/json/jsonl (text).")
    format: Literal["alpaca", "sharegpt", "text"] = Field(
        description="alpaca: instruction/input/output(/system/history); sharegpt: conversations of from/value turns; "
        "text: raw text for pre-training.")
    text_column: str = Field("text", description="Column holding the text for format 'text' in json/jsonl files.")
    num_samples: int | None = Field(None, ge=1, description="Use at most this many rows of this dataset.")


class DataConfig(_Section):
    train: list[DatasetSpec] = Field(min_length=1, description="Training datasets, read and concatenated in order.")
    max_seq_len: int = Field(1024, ge=8, description="Tokens per example after the chat template; longer ones are truncated.")
    shuffle: bool = Field(True, description="Shuffle rows each epoch (seeded).")


# ----------------------------------------------------------------------------- stages


class PretrainStage(_Section):
    name: Literal["pt"] = "pt"


class SftStage(_Section):
    name: Literal["sft"] = "sft"
    train_on_prompt: bool = Field(False, description="Also compute the loss on prompt tokens (default: assistant tokens only).")


StageConfig = Annotated[Union[PretrainStage, SftStage], Field(discriminator="name")]


# ----------------------------------------------------------------------------- optimisation


class TrainConfig(_Section):
    num_epochs: float = Field(1.0, gt=0, description="Passes over the data (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    micro_batch_size: int = Field(4, ge=1, description="Examples per worker per forward pass.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate.")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warmup.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of the optimizer steps spent warming up linearly.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Clip the global gradient norm (0 = off).")
    seed: int = Field(42, description="Seeds model init of new parameters, dropout and data order.")
    logging_steps: int = Field(10, ge=1, description="Report metrics every N optimizer steps.")


class DeepSpeedConfig(_Section):
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="ZeRO stage: 0 = data parallel, 1 = optimizer, 2 = + gradients, 3 = + parameters sharded.")
    offload_optimizer: bool = Field(False, description="Keep optimizer states in CPU memory (ZeRO >= 1, GPU runs).")
    offload_params: bool = Field(False, description="Keep parameters in CPU memory (ZeRO-3, GPU runs).")
    config_file: str | None = Field(None, description="A DeepSpeed JSON of your own; rayft fills its 'auto' values from the run.")


class ClusterConfig(_Section):
    num_workers: int = Field(1, ge=1, description="Ray Train workers (one process each, one GPU each when use_gpu).")
    use_gpu: bool | Literal["auto"] = Field("auto", description="auto: use GPUs when the cluster has any.")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs reserved per worker.")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="How workers are placed on nodes.")


class OutputConfig(_Section):
    storage_path: str = Field("outputs", description="Where runs are written (a local or shared directory).")
    name: str = Field("rayft-run", pattern=r"^[A-Za-z0-9._-]+$", description="Run name: the output is storage_path/name.")
    merge_adapter: bool = Field(False, description="Also write the base with the LoRA adapter merged into merged/.")
    overwrite: bool = Field(False, description="Replace an existing output directory instead of refusing to start.")

    @property
    def dir(self) -> str:
        return str(Path(self.storage_path).expanduser().absolute() / self.name)


# ----------------------------------------------------------------------------- the run


class RunConfig(_Section):
    """One fine-tuning run."""

    model: ModelConfig
    tuning: TuningConfig = Field(default_factory=LoraTuning, description="The tuning method and its options.")
    stage: StageConfig = Field(default_factory=SftStage, description="The training stage and its options.")
    data: DataConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @field_validator("stage", "tuning", mode="before")
    @classmethod
    def _shorthand(cls, v: Any, info: Any) -> Any:
        """`stage: sft` means `stage: {name: sft}`; a section without its tag takes the default one;
        `tuning: qlora` means LoRA on a 4-bit base."""
        tag, default = UNION_TAGS[info.field_name]
        if isinstance(v, str):
            v = {tag: v}
        if isinstance(v, dict):
            v = {tag: default, **v}
            if info.field_name == "tuning" and v[tag] == "qlora":
                v = {**v, tag: "lora", "quantization_bit": v.get("quantization_bit", 4)}
        return v

    def check_combinations(self) -> list[str]:
        """Problems between sections, each as 'path: what to change'."""
        problems = []
        zero = self.deepspeed.zero_stage
        if self.tuning.method == "galore" and zero != 0:
            # ZeRO-1/2 flatten parameters into 1-D partitions and ZeRO-3 shards them: GaLore's
            # low-rank projection needs each 2-D weight whole, so it would silently do nothing.
            problems.append(f"deepspeed.zero_stage: GaLore needs whole 2-D weights; set it to 0, got {zero}")
        if self.deepspeed.offload_params and zero != 3:
            problems.append(f"deepspeed.offload_params: parameter offload needs zero_stage 3, got {zero}")
        if self.deepspeed.offload_optimizer and zero == 0:
            problems.append("deepspeed.offload_optimizer: optimizer offload needs zero_stage >= 1, got 0")
        if self.tuning.method == "lora" and self.tuning.quantization_bit and zero == 3:
            problems.append("deepspeed.zero_stage: a bitsandbytes-quantized base cannot be sharded by ZeRO-3; use 0-2")
        for i, d in enumerate(self.data.train):
            if self.stage.name == "pt" and d.format != "text":
                problems.append(f"data.train[{i}].format: stage 'pt' trains on raw text; use format: text, got {d.format!r}")
            if self.stage.name != "pt" and d.format == "text":
                problems.append(f"data.train[{i}].format: stage {self.stage.name!r} needs conversations "
                                f"(alpaca or sharegpt), got 'text'")
        return problems

    def with_absolute_paths(self) -> "RunConfig":
        """Local relative paths made absolute on the driver: workers on other nodes or in other
        working directories must find the same files."""
        def absolute(p: str | None) -> str | None:
            return str(Path(p).expanduser().absolute()) if p and Path(p).expanduser().exists() else p

        run = self.model_copy(deep=True)
        run.model.name_or_path = absolute(run.model.name_or_path)
        run.deepspeed.config_file = absolute(run.deepspeed.config_file)
        run.output.storage_path = str(Path(run.output.storage_path).expanduser().absolute())
        for spec in run.data.train:
            if "://" not in spec.path:
                spec.path = str(Path(spec.path).expanduser().absolute())
        return run

    @property
    def global_batch_size(self) -> int:
        return self.train.micro_batch_size * self.train.gradient_accumulation_steps * self.cluster.num_workers


# ----------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, data: dict | None = None) -> RunConfig:
    """Read YAML (or take ``data``), apply ``key.path=value`` overrides, validate once."""
    raw: dict = dict(data or {})
    if path is not None:
        text = Path(path).read_text()
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError([f"{path}: not valid YAML: {e}"]) from None
        if not isinstance(raw, dict):
            raise ConfigError([f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}"])
    for item in overrides or []:
        apply_override(raw, item)
    return validate_config(raw)


def apply_override(raw: dict, item: str) -> None:
    """``train.learning_rate=1e-4`` -> raw["train"]["learning_rate"] = 1e-4 (value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError([f"override {item!r}: expected key.path=value"])
    key, value = item.split("=", 1)
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None or isinstance(child, str):  # a shorthand such as `stage: sft` grows into a mapping
            child = {UNION_TAGS[part][0]: child} if isinstance(child, str) and part in UNION_TAGS else {}
            node[part] = child
        if not isinstance(child, dict):
            raise ConfigError([f"override {item!r}: {part} is not a section"])
        node = child
    node[parts[-1]] = yaml.safe_load(value) if value != "" else None


def validate_config(raw: dict) -> RunConfig:
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError([_describe(err) for err in e.errors()]) from None
    problems = cfg.check_combinations()
    if problems:
        raise ConfigError(problems)
    return cfg




def _describe(err: dict) -> str:
    path, model = _walk(err["loc"])
    where = path or "(top level)"
    if err["type"] == "extra_forbidden":
        key = path.rsplit(".", 1)[-1]
        valid = list(model.model_fields) if model else []
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"valid keys here: {', '.join(valid)}"
        return f"{where}: unknown key ({hint})"
    if err["type"] == "missing":
        return f"{where}: required, missing"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "union_tag_invalid":
        tags = err["ctx"]["expected_tags"]
        close = difflib.get_close_matches(str(err["ctx"]["tag"]), [t.strip(" '") for t in tags.split(",")], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{where}: unknown {err['ctx']['discriminator'].strip(chr(39))} {err['ctx']['tag']!r}{hint}; choose one of {tags}"
    if err["type"] in ("literal_error", "enum"):
        return f"{where}: {msg}, got {err.get('input')!r}"
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f", got {got!r}"
    return f"{where}: {msg}{shown}"


def _walk(loc: tuple) -> tuple[str, type[BaseModel] | None]:
    """Pydantic's error location -> the YAML path (union tags dropped) and the model owning the last key."""
    node: Any = RunConfig  # a model class, the members of a tagged union, or None
    owner = None
    shown: list[str] = []
    for part in loc:
        if isinstance(part, int):  # an index into a list
            if shown:
                shown[-1] += f"[{part}]"
            continue
        if isinstance(node, list):  # this part is the union's tag: continue in the member it names
            node = next((m for m in node if _tag_value(m) == part), None)
            continue
        shown.append(str(part))
        owner = node if isinstance(node, type) else None
        field = owner.model_fields.get(part) if owner else None
        node = _models_in(field.annotation) if field else None
    return ".".join(shown), owner


def _models_in(annotation: Any) -> Any:
    """The BaseModel inside an annotation: one class, a list of union members, or None."""
    args = typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is Annotated:
        return _models_in(args[0])
    members = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    if typing.get_origin(annotation) is list and members:
        return members[0]
    if len(members) == 1:
        return members[0]
    if members:
        return members
    for a in args:  # list[Model] | None and similar
        found = _models_in(a)
        if found is not None:
            return found
    return None


def _tag_value(model: type[BaseModel]) -> str | None:
    for key, _ in UNION_TAGS.values():
        f = model.model_fields.get(key)
        if f is not None and typing.get_origin(f.annotation) is Literal:
            return typing.get_args(f.annotation)[0]
    return None


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML, written next to every checkpoint."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
