"""`rayft submit` before it contacts anything, and the files it ships with: jobs/*.yaml, jobs/runtime_env.yaml,
the cluster-launcher YAMLs. The submission itself runs on a real 2-node cluster in test_multinode.py."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rayft.cli import main
from rayft.cluster import TRAIN_POLL
from rayft.submit import ALWAYS_EXCLUDED, SECRET_FILES, build_runtime_env, secret_looking

REPO = Path(__file__).resolve().parents[2]
JOBS = sorted(p for p in (REPO / "jobs").glob("*.yaml") if p.name != "runtime_env.yaml")


def _submit(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`rayft submit ...` as a user runs it: its own process, with no Ray imported before it decides."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'core'}"}
    return subprocess.run(
        [sys.executable, "-m", "rayft.cli", "submit", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_unreachable_address_fails_fast_with_one_line():
    address = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    proc = _submit("jobs/sft_lora.yaml", "--address", address)
    assert time.monotonic() - started < 20  # the interpreter's start; the connection attempt is refused at once
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: cannot reach the Ray job server at {address}: Connection refused "
        "(is the cluster up, and is this its dashboard address, port 8265 by default?)"
    ]


def test_what_cannot_run_on_a_cluster_is_refused_before_contacting_it(tmp_path):
    address = f"http://127.0.0.1:{_closed_port()}"  # never reached: each case stops before
    outside = tmp_path / "run.yaml"
    shutil.copy(REPO / "jobs" / "sft_lora.yaml", outside)
    cases = {
        (str(outside),): f"error: {outside} lies outside the working dir {REPO}, the only files the job gets",
        ("examples/sft_lora.yaml",): "error: output.storage_path: 'outputs' is relative; in a job it would land",
        ("jobs/sft_lora.yaml", "tuning.rnak=8"): "tuning.rnak: unknown key (did you mean 'rank'?)",
        ("jobs/sft_lora.yaml", "--env", "NOVALUE"): "error: --env NOVALUE: expected KEY=VALUE",
    }
    for args, message in cases.items():
        proc = _submit(*args, "--address", address)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
        assert "cannot reach" not in proc.stderr and "Traceback" not in proc.stderr
    # with --working-dir holding it, the same file is fine (and only then is the address tried)
    proc = _submit(
        str(outside),
        "--working-dir",
        str(tmp_path),
        "--runtime-env",
        str(REPO / "jobs" / "runtime_env.yaml"),
        "--address",
        address,
    )
    assert proc.returncode == 2 and "cannot reach the Ray job server" in proc.stderr, proc.stderr


def test_files_holding_credentials_are_never_uploaded(tmp_path):
    """What Ray itself would zip from a working dir holding the usual credential files, whatever the runtime_env says."""
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    work = tmp_path / "work"
    secrets = [
        ".env",
        ".env.production",
        "certs/server.pem",
        "deploy/id_rsa.key",
        "home/.aws/credentials",
        ".netrc",
        "sub/.git-credentials",
    ]
    kept = ["train.py", "jobs/run.yaml", "environment.md", "keys.txt"]
    for name in [*secrets, *kept, "debug.log"]:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text("x")
    # the user's own excludes stay; a negation of ours does not bring a secret back
    runtime_env = tmp_path / "runtime_env.yaml"
    runtime_env.write_text(yaml.safe_dump({"excludes": ["*.log", "!.env", "!*.pem"], "env_vars": {"A": "1"}}))
    env = build_runtime_env(str(runtime_env), str(work), {})
    assert env["excludes"][:2] == ["*.log", "!.env"] and env["excludes"][-len(SECRET_FILES) :] == SECRET_FILES
    create_package(env["working_dir"], tmp_path / "pkg.zip", include_gitignore=True, excludes=env["excludes"])
    files = {n for n in zipfile.ZipFile(tmp_path / "pkg.zip").namelist() if not n.endswith("/")}
    assert files == set(kept)

    result = CliRunner().invoke(main, ["submit", "--help"], terminal_width=200, max_content_width=200)
    assert all(pattern in result.output for pattern in SECRET_FILES), result.output


def test_env_vars_that_look_like_secrets_are_warned_about_by_name_only():
    hf, aws, gh = "hf_" + "a1B2" * 8, "AKIA" + "ABCDEFGH23456789", "ghp_" + "x9" * 18
    env = {
        "HF_TOKEN": "x",
        "WANDB_API_KEY": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "db_password": "x",
        "PGPASSWD": "x",
        "GOOGLE_APPLICATION_CREDENTIALS": "x",
        "SSH_PRIVATE_KEY": "x",
        "MY_ACCESS_KEY": "x",
        "HUB": hf,
        "AUTH": f"Bearer sk-{'q' * 40}",
        "AWS_ID": aws,
        "REPO": f"https://me:{gh}@github.com/me/x",
        "TOKENIZERS_PARALLELISM": "false",
        "MAX_TOKENS": "512",
        "HF_HOME": "/mnt/shared/hf",
        "DATA": "/data/task-abcdefghijklmnopqrstuvwxyz",
        "NAME": "hf_small",
    }
    assert secret_looking(env) == list(env)[:12]

    address = f"http://127.0.0.1:{_closed_port()}"
    proc = _submit(
        "jobs/sft_lora.yaml",
        "--env",
        f"HF_TOKEN={hf}",
        "--env",
        "TOKENIZERS_PARALLELISM=false",
        "--env",
        f"REPO_URL=https://me:{gh}@github.com/me/x",
        "--address",
        address,
    )
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert [w.split()[2] for w in warnings] == ["HF_TOKEN", "REPO_URL"], proc.stderr
    assert all("runtime_env" in w and "Ray dashboard" in w and "Kubernetes Secret" in w for w in warnings)
    assert hf not in proc.stderr + proc.stdout and gh not in proc.stderr + proc.stdout
    assert proc.returncode == 2 and "cannot reach the Ray job server" in proc.stderr  # a warning, not a refusal


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_every_job_config_validates(path):
    result = CliRunner().invoke(main, ["config", "validate", str(path), "--schema-only"])  # its paths are the cluster's
    assert result.exit_code == 0, result.output
    storage = yaml.safe_load(path.read_text())["output"]["storage_path"]
    assert Path(storage).is_absolute() or "://" in storage  # shared storage, as `rayft submit` requires


def test_runtime_env_ships_the_checkout_and_pins_what_the_tests_ran_with(tmp_path, monkeypatch):
    from ray.runtime_env import RuntimeEnv

    raw = yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text())
    RuntimeEnv(**raw)  # Ray's own validation of every field
    assert raw["env_vars"][TRAIN_POLL[0]] == TRAIN_POLL[1]
    # Every pin is a version rayft declares it works with (a fresh install may resolve newer patch releases,
    # so the pins are checked against pyproject's ranges, not against whatever this machine installed).
    from packaging.requirements import Requirement

    declared = {r.name: r.specifier for r in map(Requirement, importlib.metadata.requires("rayft")) if r.marker is None}
    pins = dict(p.split("==") for p in raw["pip"]["packages"])
    assert all(name in declared and version in declared[name] for name, version in pins.items()), (pins, declared)

    monkeypatch.chdir(REPO)  # relative paths are taken from where the job is submitted, as `ray job submit` does
    env = build_runtime_env("jobs/runtime_env.yaml", None, {"HF_HOME": "/mnt/shared/hf"})
    assert env["working_dir"] == str(REPO) and env["py_modules"] == [str(REPO / "core" / "rayft_core")]
    assert set(ALWAYS_EXCLUDED) <= set(env["excludes"])
    assert env["env_vars"] == {TRAIN_POLL[0]: TRAIN_POLL[1], "HF_HOME": "/mnt/shared/hf"}


@pytest.mark.parametrize("name", ["aws", "gcp"])
def test_cluster_launcher_yaml_passes_rays_validation(name):
    """What `ray up` checks before it contacts the cloud: defaults merged in, then Ray's JSON schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((REPO / "cluster" / f"{name}.yaml").read_text()))
    validate_config(config)
    gpu = config["available_node_types"]["gpu"]
    assert gpu["resources"]["GPU"] > 0 and 0 <= gpu["min_workers"] < gpu["max_workers"] <= config["max_workers"]
    assert "GPU" not in config["available_node_types"][config["head_node_type"]]["resources"]
    assert any("rayft" in c for c in config["worker_setup_commands"])
    assert all(
        "RAY_AUTH_MODE=token" in " ".join(config[k]) for k in ("head_start_ray_commands", "worker_start_ray_commands")
    )
