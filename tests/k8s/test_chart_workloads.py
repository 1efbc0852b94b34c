"""What the Helm chart's workloads say (RayJob, Ray Tune jobs, RayService, RayCluster), from manifests rendered and
validated as in tests/k8s/test_chart.py, whose helpers these tests share.

    .venv/bin/python -m pytest tests/k8s -q
"""

from __future__ import annotations

import json

import yaml

from rayft_core.schema import validate_section
from rayft_core.serve_config import ServeConfig
from tests.k8s.test_chart import CHART, EXAMPLES, SECRET_ENV, env, example, manifests, one, ray_containers

# ----------------------------------------------------------------------------- RayJob


def test_job_runs_the_mounted_run_config_with_token_auth_and_secrets_by_name():
    values = example("job-gpu")
    docs = manifests(values)
    job, config_map = one(docs, "RayJob"), one(docs, "ConfigMap")
    spec = job["spec"]
    assert spec["entrypoint"] == (
        "rayft train /config/run.yaml 'output.storage_path=s3://my-bucket/runs' 'train.learning_rate=2.0e-5'"
    )
    # the run config travels as written (comments and number spelling included), into every pod
    assert config_map["data"]["run.yaml"] == values["run"]["config"]
    assert config_map["metadata"]["name"] == "demo-config"
    for c in ray_containers(job):
        assert {"name": "run-config", "mountPath": "/config", "readOnly": True} in c["volumeMounts"]
    # token auth: KubeRay's own, and the two variables in every Ray container, the submitter and the autoscaler
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token", "secretName": "rayft-ray-auth"}
    token = {"secretKeyRef": {"name": "rayft-ray-auth", "key": "auth_token"}}
    for c in [*ray_containers(job), *spec["submitterPodTemplate"]["spec"]["containers"]]:
        assert env(c)["RAY_AUTH_MODE"]["value"] == "token" and env(c)["RAY_AUTH_TOKEN"]["valueFrom"] == token
    autoscaler_env = {e["name"]: e for e in cluster["autoscalerOptions"]["env"]}
    assert autoscaler_env["RAY_AUTH_TOKEN"]["valueFrom"] == token
    for c in ray_containers(job):
        assert c["envFrom"] == [{"secretRef": {"name": "rayft-s3"}}]
        assert env(c)["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}
    # cleanup: the shutdown mode, with no deletion rules beside it (KubeRay refuses both)
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] == 600
    assert "deletionStrategy" not in spec and spec["activeDeadlineSeconds"] == 86400
    assert yaml.safe_load(spec["runtimeEnvYAML"]) == {"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}}


def test_gpu_groups_get_gpus_node_selector_tolerations_and_the_cuda_image():
    job = one(manifests(example("job-gpu")), "RayJob")
    cluster = job["spec"]["rayClusterSpec"]
    (group,) = cluster["workerGroupSpecs"]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (4, 4, 4)
    pod = group["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "5", "memory": "48Gi", "nvidia.com/gpu": 1}
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert "nodeSelector" not in head and "tolerations" not in head  # the head needs no GPU node
    assert {c["image"] for c in ray_containers(job)} == {"ghcr.io/rayft/rayft:0.1.0-cuda"}
    assert cluster["enableInTreeAutoscaling"] is True and cluster["autoscalerOptions"]["idleTimeoutSeconds"] == 60


def test_cpu_job_deletes_by_rules_on_the_cpu_image():
    values = example("job-cpu")
    job = one(manifests(values), "RayJob")
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is False  # KubeRay refuses it together with deletionRules
    assert (
        spec["deletionStrategy"]["deletionRules"]
        == yaml.safe_load((CHART / "values.yaml").read_text())["job"]["deletion"]["rules"]
    )
    assert {c["image"] for c in ray_containers(job)} == {"ghcr.io/rayft/rayft:0.1.0-cpu"}
    assert "nvidia.com/gpu" not in json.dumps(job)
    assert all(env(c)["AWS_ENDPOINT_URL"]["value"] == "http://minio.storage.svc:9000" for c in ray_containers(job))


def test_tune_runs_rayft_tune_and_may_grow():
    job = one(manifests(example("tune")), "RayJob")
    assert job["spec"]["entrypoint"].startswith("rayft tune /config/run.yaml ")
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert (group["minReplicas"], group["maxReplicas"]) == (1, 3)


# ----------------------------------------------------------------------------- RayService and RayCluster


def test_service_serves_the_serving_config_through_build_app():
    from ray.serve.schema import ServeDeploySchema

    values = example("service-cpu")
    service = one(manifests(values), "RayService")
    assert service["spec"]["upgradeStrategy"] == {"type": "NewCluster"}
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve)  # what Ray Serve itself accepts
    (app,) = serve["applications"]
    assert app["import_path"] == "rayft.serve:build_app" and app["route_prefix"] == "/" and app["name"] == "chat"
    assert app["args"] == yaml.safe_load(values["serve"]["config"])  # the serving config as a mapping
    assert validate_section(ServeConfig, app["args"]).models[0].adapters["sql"] == "s3://rayft/runs/sft-lora-sql"
    assert serve["http_options"] == {"host": "0.0.0.0", "port": 8000}
    for c in ray_containers(service):  # the proxy on every pod, where KubeRay checks its health
        assert {"name": "serve", "containerPort": 8000} in c["ports"]
    for c in ray_containers(service):  # the key where the app is built (the head), and on workers
        assert env(c)["RAYFT_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "rayft-api-key", "key": "api_key"}}


def test_service_api_key_as_a_file_or_under_another_name():
    service = one(manifests(example("service-gpu")), "RayService")
    assert yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["route_prefix"] == "/llm"
    for c in ray_containers(service):
        assert "RAYFT_API_KEY" not in env(c)
        assert {"name": "api-key", "mountPath": "/etc/rayft/api-key", "subPath": "api_key", "readOnly": True} in c[
            "volumeMounts"
        ]
    volumes = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["volumes"]
    assert {"name": "api-key", "secret": {"secretName": "llm-api-key", "defaultMode": 0o400}} in volumes

    values = example("service-cpu")
    values["serve"]["config"] += "auth: {api_key_env: CHAT_KEY}\n"
    service = one(manifests(values), "RayService")
    assert all("CHAT_KEY" in env(c) and "RAYFT_API_KEY" not in env(c) for c in ray_containers(service))


def test_no_secret_is_inlined():
    for name in EXAMPLES:
        docs = manifests(example(name))
        assert "Secret" not in {d["kind"] for d in docs}
        for doc in docs:
            if doc["apiVersion"] == "ray.io/v1":
                for c in ray_containers(doc):
                    for e in c.get("env", []):
                        if e["name"] in SECRET_ENV:
                            assert "value" not in e and "secretKeyRef" in e["valueFrom"], (name, e)


def test_cluster_from_defaults_and_with_a_run_config():
    (cluster,) = manifests(None)
    assert cluster["kind"] == "RayCluster" and cluster["spec"]["workerGroupSpecs"][0]["groupName"] == "cpu"
    assert all("run-config" not in json.dumps(c) for c in ray_containers(cluster))
    docs = manifests(example("cluster"))
    groups = one(docs, "RayCluster")["spec"]["workerGroupSpecs"]
    assert [(g["groupName"], g["minReplicas"], g["maxReplicas"]) for g in groups] == [("gpu", 0, 8), ("cpu", 1, 4)]
    assert one(docs, "RayCluster")["spec"]["autoscalerOptions"]["upscalingMode"] == "Aggressive"
