"""The Helm chart helm/rayft, rendered by Helm's own Go SDK (helm-python-sdk: no helm binary, no cluster) and
checked for real: `helm lint`, the values against values.schema.json, every manifest against KubeRay v1.7's CRD
schemas (tests/k8s/crds, unknown fields refused) and the core Kubernetes schemas (kubernetes-validate, strict),
then what the manifests say.

    .venv/bin/python -m pytest tests/k8s -q
"""

from __future__ import annotations

import json
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from rayft.k8s import K8sError, render
from rayft_core.config import validate_config
from rayft_core.schema import validate_section
from rayft_core.serve_config import ServeConfig

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "rayft"
EXAMPLES = {p.stem: p for p in sorted((CHART / "examples").glob("*.yaml"))}
K8S_VERSION = latest_version()  # the newest Kubernetes whose schemas kubernetes-validate ships
SECRET_ENV = {"RAY_AUTH_TOKEN", "HF_TOKEN", "RAYFT_API_KEY"}


def example(name: str) -> dict:
    return yaml.safe_load(EXAMPLES[name].read_text())


def manifests(values: dict | None) -> list[dict]:
    return [
        doc for text in render(values or {}, "demo", "ml", CHART).values() for doc in yaml.safe_load_all(text) if doc
    ]


def one(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def cluster_spec(doc: dict) -> dict:
    return {
        "RayJob": lambda: doc["spec"]["rayClusterSpec"],
        "RayService": lambda: doc["spec"]["rayClusterConfig"],
        "RayCluster": lambda: doc["spec"],
    }[doc["kind"]]()


def ray_containers(doc: dict) -> list[dict]:
    spec = cluster_spec(doc)
    groups = [spec["headGroupSpec"]] + spec.get("workerGroupSpecs", [])
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def pod_specs(node, path: str = "") -> dict[str, dict]:
    """Every pod spec anywhere in a manifest (a mapping with containers), by its path: found, not listed, so
    that a pod template added later is checked too."""
    if isinstance(node, dict):
        found = {path: node} if "containers" in node else {}
        for key, value in node.items():
            found.update(pod_specs(value, f"{path}/{key}"))
        return found
    if isinstance(node, list):
        return {p: s for i, item in enumerate(node) for p, s in pod_specs(item, f"{path}/{i}").items()}
    return {}


def notes(values: dict) -> str:
    """NOTES.txt as `helm install` prints it (rayft.k8s.render leaves it out)."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name="demo", namespace="ml")["rayft/templates/NOTES.txt"]


# ----------------------------------------------------------------------------- validators


def _strict(schema):
    """A CRD schema that refuses unknown fields: the API server would silently prune a misspelled one."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    return [_strict(s) for s in schema] if isinstance(schema, list) else schema


@pytest.fixture(scope="module")
def crd_validators() -> dict[str, jsonschema.Draft7Validator]:
    validators = {}
    for path in (Path(__file__).parent / "crds").glob("*.v1.json"):
        crd = json.loads(path.read_text())
        validators[crd["kind"]] = jsonschema.Draft7Validator(_strict(crd["openAPIV3Schema"]))
    assert sorted(validators) == ["RayCluster", "RayJob", "RayService"]
    return validators


def problems_of(doc: dict, crd_validators) -> list[str]:
    """Every schema problem of one manifest: a KubeRay object against its CRD and each pod template against
    the core PodTemplateSpec; anything else against its core schema."""
    if doc["apiVersion"] != "ray.io/v1":
        return _core_problems(doc)
    problems = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in crd_validators[doc["kind"]].iter_errors(doc)
    ]
    spec = cluster_spec(doc)
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec.get("workerGroupSpecs", [])]
    if doc["kind"] == "RayJob":
        templates.append(doc["spec"]["submitterPodTemplate"])
    for t in templates:
        problems += _core_problems(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": t}
        )
    return problems


def _core_problems(doc: dict) -> list[str]:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{doc['kind']} {'/'.join(map(str, e.absolute_path))}: {e.message}"]
    return []


# ----------------------------------------------------------------------------- the chart as a whole


@pytest.mark.parametrize("name", [None, *EXAMPLES])
def test_lint_and_schema_accept_defaults_and_every_example(name):
    values = example(name) if name else None
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{K8S_VERSION}")
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == []
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)


@pytest.mark.parametrize("name", [None, *EXAMPLES])
def test_every_manifest_validates_against_kuberay_and_kubernetes_schemas(name, crd_validators):
    values = example(name) if name else {}
    docs = manifests(values)
    expected = {
        "job": {"ConfigMap", "RayJob"},
        "tune": {"ConfigMap", "RayJob"},
        "service": {"RayService"},
        "cluster": {"RayCluster"} | ({"ConfigMap"} if values.get("run") else set()),
    }
    assert {d["kind"] for d in docs} == expected[values.get("kind", "cluster")]
    for doc in docs:
        assert doc["metadata"]["name"].startswith("demo") and doc["metadata"]["namespace"] == "ml"
        assert problems_of(doc, crd_validators) == []


def test_the_validators_refuse_what_kuberay_and_kubernetes_would(crd_validators):
    job = one(manifests(example("job-cpu")), "RayJob")
    group = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    group["minReplica"] = group.pop("minReplicas")  # a misspelled KubeRay field
    job["spec"]["shutdownAfterJobFinishes"] = "no"  # a wrong type
    group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "2 cores"  # not a quantity
    problems = problems_of(job, crd_validators)
    assert any("minReplica" in p for p in problems) and any("'no' is not of type 'boolean'" in p for p in problems)
    assert any("2 cores" in p for p in problems)


def test_every_example_holds_a_valid_rayft_config():
    for name in EXAMPLES:
        values = example(name)
        if values["kind"] == "service":
            validate_section(ServeConfig, yaml.safe_load(values["serve"]["config"]))
        else:
            validate_config(yaml.safe_load(values["run"]["config"]))


# ----------------------------------------------------------------------------- security


NON_ROOT = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
NO_PRIVILEGES = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


@pytest.mark.parametrize("name", [None, *EXAMPLES])
def test_every_pod_runs_as_non_root_without_privileges(name):
    docs = manifests(example(name) if name else None)
    found = {}
    for doc in docs:
        for path, pod in pod_specs(doc).items():
            found[f"{doc['kind']}{path}"] = pod
            assert pod.get("securityContext") == NON_ROOT, (doc["kind"], path)
            for c in pod["containers"] + pod.get("initContainers", []):
                assert c.get("securityContext") == NO_PRIVILEGES, (doc["kind"], path, c["name"])
        options = cluster_spec(doc).get("autoscalerOptions") if doc["apiVersion"] == "ray.io/v1" else None
        if options:  # the autoscaler: a container KubeRay adds to the head pod
            assert options.get("securityContext") == NO_PRIVILEGES
    # the search found what each kind has: the head, every worker group, a RayJob's submitter
    (doc,) = [d for d in docs if d["apiVersion"] == "ray.io/v1"]
    spec = cluster_spec(doc)
    root = {"RayJob": "/spec/rayClusterSpec", "RayService": "/spec/rayClusterConfig", "RayCluster": "/spec"}[
        doc["kind"]
    ]
    expected = {f"{root}/headGroupSpec/template/spec"} | {
        f"{root}/workerGroupSpecs/{i}/template/spec" for i in range(len(spec["workerGroupSpecs"]))
    }
    if doc["kind"] == "RayJob":
        expected.add("/spec/submitterPodTemplate/spec")
    assert set(found) == {doc["kind"] + p for p in expected}


def test_the_pods_user_is_configurable_and_is_the_images_user():
    values = example("job-cpu")
    values["securityContext"] = {"runAsUser": 2000, "runAsGroup": None}  # null: left to the platform
    expected = {**NON_ROOT, "runAsUser": 2000}
    del expected["runAsGroup"]
    assert all(pod["securityContext"] == expected for pod in pod_specs(one(manifests(values), "RayJob")).values())
    with pytest.raises(K8sError, match="securityContext.runAsUser: minimum: got 0, want 1"):
        render({**example("job-cpu"), "securityContext": {"runAsUser": 0}}, "demo", "ml", CHART)
    # the image's user is the default one, and every target runs as it
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert "groupadd --gid 1000 ray && useradd --create-home --uid 1000 --gid 1000" in dockerfile
    targets = dockerfile.split("\nFROM ")[2:]  # cpu and cuda, after base
    assert len(targets) == 2 and all("\nUSER ray\n" in t for t in targets)


def test_notes_warn_about_a_service_without_auth():
    values = example("service-cpu")
    assert "WARNING" not in notes(values)
    values["serve"]["config"] += "auth: {required: false}\n"
    assert "WARNING" not in notes(values)  # not required, but the key is given: requests are still checked
    values["secrets"]["apiKey"]["name"] = ""
    assert "WARNING: the API has no authentication (serve.config's auth.required: false" in notes(values)
    for name in EXAMPLES:
        assert "WARNING" not in notes(example(name)), name


# ----------------------------------------------------------------------------- bad values


BAD = [
    (
        "job-cpu",
        {"workers": [{"name": "cpu", "type": "cpu", "replicas": -1, "minReplicas": 0, "maxReplicas": 2}]},
        "workers[0].replicas: minimum: got -1, want 0",
    ),
    (
        "job-cpu",
        {"workers": [{"name": "cpu", "type": "cpu", "gpu": 2, "replicas": 1, "minReplicas": 1, "maxReplicas": 1}]},
        "workers[0].gpu: maximum: got 2, want 0 (GPUs per pod, in gpu groups only: a cpu group has none)",
    ),
    (
        "job-cpu",
        {"workers": [{"name": "g", "type": "gpu", "replicas": 1, "minReplicas": 1, "maxReplicas": 1}]},
        "workers[0].gpu: required, missing",
    ),
    ("job-cpu", {"storage": {"uri": "/mnt/shared"}}, "storage.uri: invalid, got '/mnt/shared'"),
    (
        "job-cpu",
        {"workers": [{"name": "cpu", "type": "cpu", "replicas": 3, "minReplicas": 3, "maxReplicas": 2}]},
        "workers[0].minReplicas (3) must not exceed maxReplicas (2)",
    ),
    ("job-cpu", {"workerz": []}, "(top level): additional properties 'workerz' not allowed"),
    ("job-cpu", {"run": {"config": "model: [\n"}}, "run.config: not valid YAML"),
    ("job-cpu", {"run": {"config": "model: {name_or_path: x}\n"}}, "run.config: a run config needs model: and data:"),
    (
        "job-cpu",
        {
            "job": {
                "deletion": {
                    "mode": "rules",
                    "rules": [{"policy": "DeleteWorkers", "condition": {"jobStatus": "FAILED"}}],
                }
            }
        },
        "job.deletion.rules[0].policy: KubeRay refuses DeleteWorkers with autoscaling.enabled",
    ),
    (
        "service-cpu",
        {"secrets": {"apiKey": {"name": ""}}},
        "secrets.apiKey.name: the serving config requires an API key",
    ),
    ("service-cpu", {"serve": {"upgradeStrategy": "BlueGreen"}}, "serve.upgradeStrategy: value must be one of"),
]


@pytest.mark.parametrize("name,change,message", BAD, ids=[m.split(":")[0] for _, _, m in BAD])
def test_bad_values_are_refused_naming_the_key(name, change, message):
    from rayft.k8s import merge_values

    with pytest.raises(K8sError) as e:
        render(merge_values(example(name), change), "demo", "ml", CHART)
    assert message in str(e.value)


def test_a_job_without_storage_uri_is_refused():
    values = example("job-cpu")
    values["storage"] = {"credentialsSecret": "rayft-s3"}
    with pytest.raises(K8sError) as e:
        render(values, "demo", "ml", CHART)
    assert "storage.uri: required, missing (Where runs are written: s3://bucket/prefix" in str(e.value)


def test_bad_release_name():
    with pytest.raises(K8sError, match='release name "Sft_1": KubeRay needs lowercase'):
        render(example("job-cpu"), "Sft_1", "ml", CHART)
