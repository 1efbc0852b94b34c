"""`rayft train`, `rayft tune` and `rayft submit`: a training run here, a sweep on Ray Tune, a run as a Ray job."""

from __future__ import annotations

import sys

import click

from rayft.cli._common import load_run, run_config_arguments
from rayft_core.config import load_config
from rayft_core.errors import UserInputError
from rayft_core.schema import ConfigError


@click.command(context_settings={"ignore_unknown_options": True})
@run_config_arguments
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in output.storage_path/output.name from its latest "
    "checkpoint (checkpoint.save_steps), with the same model, tuning method, stage and workers.",
)
def train(config_path: str, overrides: tuple[str, ...], resume: bool) -> None:
    """Train with the run config CONFIG_PATH; OVERRIDES are key.path=value pairs.

    Example: rayft train examples/sft_lora.yaml tuning.rank=16 cluster.num_workers=2
    """
    from rayft.train import train as run_training

    run = load_run(config_path, overrides)
    if run.tune is not None:
        raise UserInputError(
            f"{config_path}: this run has a tune: section (a sweep); run it with `rayft tune "
            f"{config_path}`, or remove the section to train once"
        )
    out = run_training(run, resume=resume)
    click.echo(f"done: outputs in {out}")


@click.command("tune", context_settings={"ignore_unknown_options": True})
@run_config_arguments
@click.option(
    "--space",
    "space_path",
    type=click.Path(exists=True, dir_okay=False),
    help="A YAML with the sweep (the keys of a run's tune: section, or a tune: mapping); replaces the run's own.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the sweep in output.storage_path/output.name after its driver "
    "stopped: finished trials are kept, unfinished ones continue from their latest checkpoint.",
)
def tune_command(config_path: str, overrides: tuple[str, ...], space_path: str | None, resume: bool) -> None:
    """Sweep hyperparameters of the run CONFIG_PATH on Ray Tune; every trial is a rayft training run.

    \b
    The sweep (the run's tune: section or --space):
      space: {tuning.rank: {choice: [8, 16]}, train.learning_rate: {loguniform: [1e-5, 1e-3]}}
      num_samples: 4, search: random|grid|optuna, scheduler: asha|fifo, metric: eval/loss, mode: min
    Writes to output.storage_path/output.name: trials/<id>/ (each trial's run), results.csv,
    best_run.yaml (rerun it with `rayft train`), metric_vs_params.png. See `rayft config schema`.
    """
    from rayft.tune import sweep
    from rayft_core.schema import read_yaml

    run = load_run(config_path, overrides)
    raw = run.model_dump(mode="json", exclude={"tune"})
    if space_path:
        try:
            space = read_yaml(space_path, "sweep space")
            run = load_config(data={**raw, "tune": space.get("tune", space)})
        except ConfigError as e:
            raise UserInputError(f"{space_path}: {e}") from e
    if run.tune is None:
        raise UserInputError(f"{config_path}: no sweep to run; add a tune: section or give --space space.yaml")
    result = sweep(raw, run.tune, resume=resume)
    click.echo(f"done: sweep in {result.directory}")


@click.command(context_settings={"ignore_unknown_options": True})
@run_config_arguments
@click.option(
    "--address",
    envvar="RAY_API_SERVER_ADDRESS",
    required=True,
    help="The cluster's job server (its dashboard), e.g. http://HEAD:8265; or set RAY_API_SERVER_ADDRESS.",
)
@click.option(
    "--runtime-env",
    "runtime_env_path",
    type=click.Path(exists=True, dir_okay=False),
    help="runtime_env YAML: working_dir, excludes, py_modules, env_vars, pip [default: jobs/runtime_env.yaml "
    "when present].",
)
@click.option(
    "--working-dir",
    type=click.Path(exists=True, file_okay=False),
    help="The directory to upload; CONFIG_PATH must lie inside [default: the runtime_env's working_dir].",
)
@click.option(
    "--env",
    "env_vars",
    multiple=True,
    metavar="KEY=VALUE",
    help="An environment variable of the job (repeatable). The Ray dashboard shows it: give secrets to the "
    "cluster instead (a Kubernetes Secret, the nodes' environment); one that looks like a secret is "
    "warned about.",
)
@click.option(
    "--entrypoint-num-cpus", type=float, help="CPUs reserved for the driver (`rayft train`) [default: 0, on the head]."
)
@click.option("--entrypoint-num-gpus", type=float, help="GPUs reserved for the driver.")
@click.option(
    "--entrypoint-resources", metavar="JSON", help="Custom resources the driver needs, e.g. '{\"driver\": 1}'."
)
@click.option("--submission-id", help="The job's id [default: one Ray chooses, raysubmit_...].")
@click.option("--no-wait", is_flag=True, help="Return once the job is submitted instead of following its logs.")
def submit(
    config_path: str,
    overrides: tuple[str, ...],
    address: str,
    runtime_env_path: str | None,
    working_dir: str | None,
    env_vars: tuple[str, ...],
    entrypoint_num_cpus: float | None,
    entrypoint_num_gpus: float | None,
    entrypoint_resources: str | None,
    submission_id: str | None,
    no_wait: bool,
) -> None:
    """Run CONFIG_PATH (with OVERRIDES) as a Ray job on the cluster at --address, as `ray job submit` does:
    the working dir is uploaded (without .git, outputs, virtualenvs) and the job runs `rayft train CONFIG_PATH
    OVERRIDES` in it. Never uploaded, whatever the runtime_env says: .env*, *.pem, *.key, .aws/, .netrc,
    .git-credentials. Prints the job id and follows its logs. The cluster's token is sent (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token).

    Exit status: 0 the job succeeded, 1 it failed or was stopped, 2 nothing was submitted (config, paths, address,
    token).

    Example: rayft submit jobs/sft_lora.yaml tuning.rank=32 --address http://head:8265
    """
    from rayft.submit import Entrypoint, parse_env_vars, submit_run

    run = load_run(config_path, overrides)  # a bad config stops here, before anything is contacted
    succeeded = submit_run(
        run,
        config_path,
        overrides,
        address,
        runtime_env_path=runtime_env_path,
        working_dir=working_dir,
        env_vars=parse_env_vars(env_vars),
        submission_id=submission_id,
        wait=not no_wait,
        where=Entrypoint.parse(entrypoint_num_cpus, entrypoint_num_gpus, entrypoint_resources),
    )
    sys.exit(0 if succeeded else 1)
