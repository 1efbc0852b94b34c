"""`rayft submit`: a run as a Ray job on a running cluster, as `ray job submit` does it, the run checked first.

    rayft submit jobs/sft_lora.yaml model.name_or_path=/mnt/shared/models/qwen --address http://HEAD:8265

The working directory (this checkout, without .git, outputs, virtualenvs and files that usually hold
credentials) is uploaded and becomes the job's working directory on every node; the job runs `rayft train
RUN.yaml OVERRIDES` there and its logs are followed here. Nothing is contacted before the run config, its
paths and the address have passed. An --env that looks like a secret is warned about: it would be shown on the
Ray dashboard.

Token authentication stays on: Ray's clients send the cluster's token (RAY_AUTH_TOKEN, else the file
RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token) when RAY_AUTH_MODE=token, which is set here unless the
environment sets a mode itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from rayft_core.config import RunConfig
from rayft_core.errors import UserInputError
from rayft_core.schema import read_yaml

# Left out of every upload, whatever the runtime_env file says: each is large or machine-specific
# (gitignore patterns, matched at any depth; Ray also honours the checkout's .gitignore).
ALWAYS_EXCLUDED = [".git", ".venv", "venv", "outputs", "__pycache__", "*.egg-info"]
# ... and files that usually hold credentials: the upload is kept on the cluster, readable by every job
# and by everyone who can submit one.
SECRET_FILES = [".env*", "*.pem", "*.key", ".aws/", ".netrc", ".git-credentials"]
# --env variables that look like credentials: by name (TOKEN at a word's end: HF_TOKEN, not TOKENIZERS_PARALLELISM
# or MAX_TOKENS), or by a known token format anywhere in the value (Bearer hf_..., https://x:ghp_...@github.com).
SECRET_NAME = re.compile(
    r"PASSWORD|PASSWD|SECRET|CREDENTIAL|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|TOKEN(?:_|$)", re.IGNORECASE
)
SECRET_VALUE = re.compile(
    r"(?<![A-Za-z0-9])(?:hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,}|(?:AKIA|ASIA)[A-Z0-9]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})"
)
DEFAULT_RUNTIME_ENV = "jobs/runtime_env.yaml"
CONNECT_TIMEOUT_S = 10.0


class SubmitError(UserInputError):
    """Nothing was submitted: the message says what to change."""


@dataclass
class Entrypoint:
    """Where the job's driver (`rayft train`) runs: Ray places it on a node with these free (default: the head, 0 CPUs)."""

    num_cpus: float | None = None
    num_gpus: float | None = None
    resources: dict[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, num_cpus: float | None, num_gpus: float | None, resources_json: str | None) -> Entrypoint:
        try:
            resources = json.loads(resources_json) if resources_json else {}
        except json.JSONDecodeError:
            resources = None
        if not isinstance(resources, dict):
            raise SubmitError(
                f"--entrypoint-resources {resources_json}: expected a JSON object, e.g. '{{\"driver\": 1}}'"
            )
        return cls(num_cpus, num_gpus, resources)


def parse_env_vars(items: tuple[str, ...]) -> dict[str, str]:
    """--env KEY=VALUE options as a dict."""
    bad = [item for item in items if "=" not in item]
    if bad:
        raise SubmitError(f"--env {bad[0]}: expected KEY=VALUE")
    return dict(item.split("=", 1) for item in items)


def secret_looking(env_vars: dict[str, str]) -> list[str]:
    """The names of env_vars whose name or value looks like a credential."""
    return [k for k, v in env_vars.items() if SECRET_NAME.search(k) or SECRET_VALUE.search(v)]


def warn_about_secrets(env_vars: dict[str, str]) -> None:
    """One line on stderr per --env that looks like a credential, naming it, never printing its value."""
    for name in secret_looking(env_vars):
        click.echo(
            f"warning: --env {name} looks like a secret; it goes into the job's runtime_env, which the Ray "
            f"dashboard shows to anyone who can reach it. Give it to the cluster instead (a Kubernetes Secret, "
            f"or the nodes' own environment).",
            err=True,
        )


def build_runtime_env(path: str | None, working_dir: str | None, env_vars: dict[str, str]) -> dict[str, Any]:
    """The job's runtime_env: the file's (default jobs/runtime_env.yaml when present), with its working_dir
    (or the given one) and relative py_modules made absolute from the current directory, as `ray job
    submit` reads them, ALWAYS_EXCLUDED and SECRET_FILES added to the excludes and env_vars merged in."""
    if path is None and Path(DEFAULT_RUNTIME_ENV).is_file():
        path = DEFAULT_RUNTIME_ENV
    env: dict[str, Any] = {}
    if path is not None:
        env = read_yaml(path, "runtime_env")  # a missing, binary, non-YAML or non-mapping file is a ConfigError
    directory = Path(working_dir or env.get("working_dir") or ".").expanduser().absolute()
    if not directory.is_dir():
        raise SubmitError(f"working dir {directory} is not a directory")
    env["working_dir"] = str(directory)
    if env.get("py_modules"):
        env["py_modules"] = [m if "://" in m else str(Path(m).expanduser().absolute()) for m in env["py_modules"]]
    # SECRET_FILES last: in gitignore patterns the last match wins, so a user's "!.env" cannot bring one back.
    user_excludes = [e for e in env.get("excludes", []) if e not in SECRET_FILES]
    env["excludes"] = list(dict.fromkeys([*user_excludes, *ALWAYS_EXCLUDED])) + SECRET_FILES
    env["env_vars"] = {k: str(v) for k, v in {**env.get("env_vars", {}), **env_vars}.items()}  # Ray takes strings only
    return env


def build_entrypoint(config_path: str, overrides: tuple[str, ...], working_dir: str) -> str:
    """`rayft train RUN.yaml OVERRIDES` with RUN.yaml relative to the working dir, where the job starts."""
    config, root = Path(config_path).absolute().resolve(), Path(working_dir).resolve()
    if not config.is_relative_to(root):
        raise SubmitError(
            f"{config_path} lies outside the working dir {root}, the only files the job gets: "
            f"move it inside, or pass --working-dir with a directory that holds it"
        )
    return shlex.join(["rayft", "train", config.relative_to(root).as_posix(), *overrides])


def check_run_for_cluster(run: RunConfig) -> None:
    """What a run on a cluster needs beyond a valid config."""
    storage = run.output.storage_path
    if "://" not in storage and not Path(storage).expanduser().is_absolute():
        raise SubmitError(
            f"output.storage_path: {storage!r} is relative; in a job it would land in the job's temporary "
            f"working dir on one node. Give shared storage every node mounts, e.g. "
            f"output.storage_path=/mnt/shared/rayft"
        )


def check_reachable(address: str) -> None:
    """A TCP connection to the job server within CONNECT_TIMEOUT_S, so a wrong address fails at once
    (Ray's client has no timeout: an address that drops packets would hang for minutes)."""
    parts = urlsplit(address if "://" in address else f"http://{address}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SubmitError(f"--address {address}: expected the job server's URL, e.g. http://HEAD:8265")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise SubmitError(
            f"cannot reach the Ray job server at {address}: {e.strerror or e} "
            f"(is the cluster up, and is this its dashboard address, port 8265 by default?)"
        ) from None


def connect(address: str):
    """A JobSubmissionClient for address that sends the cluster's token."""
    # Ray decides once, when it is imported, whether its clients send the token (RAY_AUTH_MODE=token).
    # A cluster without authentication ignores the header, so sending it is always safe.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except AuthenticationError as e:  # Ray's message says "required" when no token came (401), else it was wrong (403)
        problem = "needs a token and none was found" if "required" in str(e) else "rejected the token sent"
        raise SubmitError(
            f"the Ray cluster at {address} {problem}: put the cluster's token (`ray get-auth-token` on "
            f"its head prints it) in ~/.ray/auth_token, or point RAY_AUTH_TOKEN_PATH at a file holding it "
            f"(RAY_AUTH_TOKEN, when set, comes first)"
        ) from None
    except ConnectionError as e:
        raise SubmitError(f"cannot reach the Ray job server at {address}: {e}") from None
    except RuntimeError as e:  # something answers there, but not Ray's job server
        raise SubmitError(f"{address} is not a Ray job server (the dashboard, port 8265 by default): {e}") from None


def submit_run(
    run: RunConfig,
    config_path: str,
    overrides: tuple[str, ...],
    address: str,
    *,
    runtime_env_path: str | None = None,
    working_dir: str | None = None,
    env_vars: dict[str, str] | None = None,
    where: Entrypoint | None = None,
    submission_id: str | None = None,
    wait: bool = True,
) -> bool:
    """Check the run for a cluster, submit it, and with wait follow its logs to the end.
    True when the job succeeded (with wait=False: once it is submitted). SubmitError: nothing was submitted."""
    check_run_for_cluster(run)
    runtime_env = build_runtime_env(runtime_env_path, working_dir, env_vars or {})
    warn_about_secrets(env_vars or {})
    entrypoint = build_entrypoint(config_path, overrides, runtime_env["working_dir"])
    check_reachable(address)
    client = connect(address)
    where = where or Entrypoint()
    try:  # uploads the working dir (and py_modules) first, unless the cluster holds the same zip already
        job_id = client.submit_job(
            entrypoint=entrypoint,
            runtime_env=runtime_env,
            submission_id=submission_id,
            entrypoint_num_cpus=where.num_cpus,
            entrypoint_num_gpus=where.num_gpus,
            entrypoint_resources=where.resources or None,
        )
    except (RuntimeError, ValueError) as e:  # the job server's refusal, or a runtime_env Ray cannot package
        raise SubmitError(f"the job was not submitted to {address}: {e}") from None
    click.echo(f"submitted job {job_id} to {address}: {entrypoint}")
    if not wait:
        click.echo(f"follow it with: ray job logs --follow {job_id} --address {address}")
        return True
    try:
        info = follow(client, job_id)
    except KeyboardInterrupt:
        click.echo(
            f"\nstopped following; the job runs on (stop it: ray job stop {job_id} --address {address})", err=True
        )
        raise
    click.echo(outcome(job_id, info), err=info.status != "SUCCEEDED")
    return info.status == "SUCCEEDED"


def outcome(job_id: str, info: Any) -> str:
    """One line on how the job ended. Not info.message for a failed driver: it repeats the end of the logs."""
    if info.status == "SUCCEEDED":
        return f"job {job_id} SUCCEEDED"
    if info.driver_exit_code is not None:
        return f"job {job_id} {info.status}: `rayft train` exited with {info.driver_exit_code} (its error is above)"
    return f"job {job_id} {info.status}: {(info.message or 'no message').splitlines()[0]}"


def follow(client: Any, job_id: str) -> Any:
    """Print the job's logs as they come until it ends; its final JobInfo."""

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            click.echo(lines, nl=False)

    asyncio.run(tail())
    return client.get_job_info(job_id)
