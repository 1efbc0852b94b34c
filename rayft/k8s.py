"""`rayft k8s`: KubeRay manifests for a run or serving config, rendered by the Helm chart helm/rayft.

    rayft k8s render run.yaml --set storage.uri=s3://bucket/rayft -o sft.yaml && kubectl apply -f sft.yaml
    rayft k8s values serve.yaml --set secrets.apiKey.name=chat-key > chat.yaml && helm install chat helm/rayft -f chat.yaml

The chart is the one source of truth: this module only builds its values (the config's text, its kind,
worker groups sized from the config) and renders the chart with Helm's own Go SDK (helm-python-sdk), so
`helm install -f` the same values gives the same objects. Values precedence, lowest first: the chart's
defaults, what the config implies, --values files in order, --set.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import yaml

from rayft_core.config import RunConfig, validate_config
from rayft_core.errors import UserInputError
from rayft_core.schema import ConfigError, read_yaml, validate_section
from rayft_core.serve_config import ServeConfig

KINDS = ("job", "tune", "service", "cluster")
CHART_ENV = "RAYFT_CHART_DIR"
INSTALL_HINT = "pip install 'rayft[k8s]'"
# A worker pod's CPUs (and the worker's threads) where cluster.cpus_per_worker is auto: a pod needs a number before
# any node exists; give cpus_per_worker for another size.
AUTO_POD_CPUS = 4


class K8sError(UserInputError):
    """Nothing was rendered: the message names the key or file to change."""


# ----------------------------------------------------------------------------- the chart


def find_chart() -> Path:
    """helm/rayft: $RAYFT_CHART_DIR, else rayft/chart (a link to ../helm/rayft in a checkout, the chart's
    own files in an installed wheel)."""
    candidates = [Path(os.environ[CHART_ENV])] if os.environ.get(CHART_ENV) else []
    candidates.append(Path(__file__).resolve().parent / "chart")
    for path in candidates:
        if (path / "Chart.yaml").is_file():
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise K8sError(
        f"the Helm chart is not where rayft looks ({looked}); reinstall rayft, or set {CHART_ENV} to a "
        f"checkout's helm/rayft"
    )


def _helm():
    try:
        import helm_python
    except ImportError:
        raise K8sError(f"rayft k8s renders the chart with Helm's Go SDK: {INSTALL_HINT}") from None
    return helm_python


# ----------------------------------------------------------------------------- values from a config


def detect_kind(raw: dict, path: str) -> str:
    """service for a serving config (top-level models:), tune for a run config with a tune: section, else job."""
    if "models" in raw:
        return "service"
    if "model" in raw or "data" in raw:
        return "tune" if raw.get("tune") else "job"
    raise K8sError(
        f"{path}: neither a run config (model:, data:) nor a serving config (models:) at the top level; "
        f"found {', '.join(sorted(raw)) or 'nothing'}"
    )


def values_for(config_path: str, kind: str | None = None) -> dict[str, Any]:
    """The chart values a config implies: kind, the config's text, storage.uri and worker groups."""
    raw = read_yaml(config_path, "config")  # a missing, binary, non-YAML or non-mapping file is a ConfigError
    text = Path(config_path).read_text(encoding="utf-8")
    detected = detect_kind(raw, config_path)
    kind = kind or detected
    if (kind == "service") != (detected == "service"):
        given = "a serving config" if detected == "service" else "a run config"
        raise K8sError(
            f"{config_path}: --kind {kind} needs {'a serving' if kind == 'service' else 'a run'} config; "
            f"this is {given}"
        )
    try:
        if kind == "service":
            return _serve_values(validate_section(ServeConfig, raw, "serving config"), text)
        return _run_values(validate_config(raw), text, kind)
    except ConfigError as e:
        raise K8sError(f"{config_path}: {e}") from None


def _run_values(run: RunConfig, text: str, kind: str) -> dict[str, Any]:
    if kind == "job" and run.tune is not None:
        raise K8sError("this run has a tune: section (a sweep); render it with --kind tune, or remove the section")
    if kind == "tune" and run.tune is None:
        raise K8sError("--kind tune needs a tune: section in the run config (the sweep)")
    _raise_problems(_pod_path_problems(_run_paths(run)))
    c = run.cluster
    # One Ray Train worker per pod, plus a CPU for Ray Data's reading and tokenizing, which the workers' own
    # CPUs would starve (docs/environment.md). rayft checks the cluster holds num_workers workers before it starts, so
    # they are all there from the start; a sweep may grow to max_concurrent_trials groups of them.
    trials = (run.tune.max_concurrent_trials or 1) if run.tune else 1
    group: dict[str, Any] = {
        "name": "gpu" if c.use_gpu is True else "cpu",
        "type": "gpu" if c.use_gpu is True else "cpu",
        "replicas": c.num_workers,
        "minReplicas": c.num_workers,
        "maxReplicas": c.num_workers * trials,
        "cpu": (AUTO_POD_CPUS if c.cpus_per_worker == "auto" else math.ceil(c.cpus_per_worker)) + 1,
    }
    if c.use_gpu is True:
        group["gpu"] = 1
    values: dict[str, Any] = {"kind": kind, "run": {"config": text}, "workers": [group]}
    if "://" in run.output.storage_path:
        values["storage"] = {"uri": run.output.storage_path}
    return values


def _serve_values(cfg: ServeConfig, text: str) -> dict[str, Any]:
    problems = []
    for i, m in enumerate(cfg.models):
        problems += _pod_path_problems(
            {f"models[{i}].path": m.path, **{f"models[{i}].adapters.{k}": v for k, v in m.adapters.items()}}
        )
    _raise_problems(problems)
    # One pod per Serve replica, sized for the largest, up to every model's most replicas at once.
    groups = []
    for kind in ("gpu", "cpu"):
        models = [m for m in cfg.models if (m.resources.gpu_count > 0) == (kind == "gpu")]
        if not models:
            continue
        group = {
            "name": kind,
            "type": kind,
            "replicas": sum(m.replicas.initial if m.replicas.initial is not None else m.replicas.min for m in models),
            "minReplicas": sum(m.replicas.min for m in models),
            "maxReplicas": sum(m.replicas.max for m in models),
            "cpu": math.ceil(max(m.resources.cpus for m in models)) + 1,
        }
        if kind == "gpu":
            group["gpu"] = max(m.resources.gpu_count for m in models)
        groups.append(group)
    return {"kind": "service", "serve": {"config": text}, "workers": groups}


def _run_paths(run: RunConfig) -> dict[str, str | None]:
    paths = {
        "model.name_or_path": run.model.name_or_path,
        "deepspeed.config_file": run.deepspeed.config_file,
        "data.cache_dir": run.data.cache_dir,
    }
    for section in ("train", "eval"):
        for i, spec in enumerate(getattr(run.data, section)):
            paths[f"data.{section}[{i}].path"] = spec.path
    if any(spec.dataset for spec in run.data.train + run.data.eval):
        paths["data.dataset_dir"] = run.data.dataset_dir
    return paths


def _pod_path_problems(paths: dict[str, str | None]) -> list[str]:
    """Paths a pod cannot read: relative ones. A model may be a hub id (org/name): only one that exists here is a path."""
    problems = []
    for key, p in paths.items():
        if not p or "://" in p or Path(p).is_absolute():
            continue
        if key.startswith(("data.", "deepspeed.")) or ".adapters." in key or Path(p).expanduser().exists():
            problems.append(
                f"{key}: {p!r} is a path on this machine, which the pods cannot read; upload it "
                f"(s3://..., gs://...) or mount a volume (extraVolumes) and give its absolute path"
            )
    return problems


def _raise_problems(problems: list[str]) -> None:
    if problems:
        raise K8sError("not renderable for Kubernetes:\n" + "\n".join(f"  - {p}" for p in problems))


# ----------------------------------------------------------------------------- merging and rendering


def merge_values(base: Any, override: Any, merge_lists: bool = False) -> Any:
    """override onto base, mappings key by key. Lists are replaced, as Helm replaces them for a values file,
    or with merge_lists (a --set) merged item by item: workers[0].memory=32Gi changes that one key."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge_values(base[key], value, merge_lists) if key in base else value
        return out
    if merge_lists and isinstance(base, list) and isinstance(override, list):
        merged = [b if o is None else merge_values(b, o, True) for b, o in zip(base, override)]
        return merged + base[len(override) :] + override[len(base) :]
    return override


def build_values(
    config_path: str, kind: str | None = None, values_files: tuple[str, ...] = (), sets: tuple[str, ...] = ()
) -> dict[str, Any]:
    values = values_for(config_path, kind)
    for path in values_files:
        extra = read_yaml(path, "chart values file")
        values = merge_values(values, extra)
    helm = _helm() if sets else None
    for item in sets:
        try:
            values = merge_values(values, helm.parse_set_string(item), merge_lists=True)
        except helm.HelmError as e:
            raise K8sError(f"--set {item}: {e}") from None
    return values


def release_name(config_path: str, values: dict[str, Any]) -> str:
    """The run's output.name or the serving config's name, as a DNS-1035 label (what KubeRay accepts)."""
    raw = yaml.safe_load(values.get("serve", values.get("run", {})).get("config") or "") or {}
    name = (raw.get("output") or {}).get("name") or raw.get("name") or Path(config_path).stem
    name = re.sub(r"[^a-z0-9-]+", "-", str(name).lower()).strip("-")
    name = name if name[:1].isalpha() else f"rayft-{name}"
    return name[:47].rstrip("-")


def render(
    values: dict[str, Any], name: str, namespace: str = "default", chart_dir: Path | None = None
) -> dict[str, str]:
    """Template path -> manifest text, as `helm template` renders them; NOTES.txt and empty ones left out."""
    helm = _helm()
    with helm.Chart.load(chart_dir or find_chart()) as chart:
        try:
            rendered = chart.render(values, name=name, namespace=namespace)
        except helm.HelmValuesError as e:
            problems = describe_schema_errors(str(e), chart.schema)
            raise K8sError("invalid chart values:\n" + "\n".join(f"  - {p}" for p in problems)) from None
        except helm.HelmRenderError as e:
            message = str(e).split("): ", 1)[-1] if "execution error at" in str(e) else str(e)
            raise K8sError(f"invalid chart values: {message}") from None
    # ConfigMap first: `kubectl apply -f` creates objects in file order, and the pods mount it.
    order = sorted(
        (p for p, text in rendered.items() if text.strip() and not p.endswith("NOTES.txt")),
        key=lambda p: (not p.endswith("configmap.yaml"), p),
    )
    return {p: rendered[p] for p in order}


def describe_schema_errors(message: str, schema: dict | None) -> list[str]:
    """Helm's "- at '/workers/0/gpu': maximum: got 2, want 0" lines as "workers[0].gpu: ..." with the key's meaning."""
    problems = []
    for pointer, error in re.findall(r"- at '([^']*)': (.*)", message):
        if error in ("validation failed", "'allOf' failed"):
            continue  # a parent of the errors that follow
        parts = [p for p in pointer.split("/") if p]
        missing = re.fullmatch(r"missing propert(?:y|ies) '([^']+)'.*", error)
        if missing:
            parts, error = parts + [missing.group(1)], "required, missing"
        path = ".".join(parts)
        path = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", path) or "(top level)"
        error = re.sub(r"^('.*') does not match pattern .*", r"invalid, got \1", error)
        about = _description(schema or {}, parts).rstrip(".")
        problems.append(f"{path}: {error}" + (f" ({about})" if about else ""))
    return problems or [message.strip()]


def _description(schema: dict, parts: list[str]) -> str:
    node, defs = schema, schema.get("$defs", {})
    for part in parts:
        if "$ref" in node:
            node = defs.get(node["$ref"].rsplit("/", 1)[-1], {})
        node = node.get("items", {}) if part.isdigit() else node.get("properties", {}).get(part, {})
    return node.get("description", "")


def to_yaml_stream(manifests: dict[str, str]) -> str:
    return "".join(f"---\n# Source: {path}\n{text.strip()}\n" for path, text in manifests.items())


def dump_values(values: dict[str, Any]) -> str:
    """Chart values as a values file: YAML with each config's text as a block (`config: |`)."""
    return yaml.dump(values, Dumper=_BlockDumper, sort_keys=False)


class _BlockDumper(yaml.SafeDumper):
    """The config's text as a block (`config: |`), as a person would write it in a values file."""


_BlockDumper.add_representer(
    str, lambda dumper, s: dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)
)
