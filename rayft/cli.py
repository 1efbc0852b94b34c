"""The `rayft` command line.

    rayft train run.yaml [key.path=value ...]   train on the cluster in RAY_ADDRESS, or a local one
    rayft config validate run.yaml              check a run config without running it
    rayft config schema                         print the JSON schema of run configs
    rayft demo                                  pre-train a tiny model, teach it a task with LoRA, score it
"""

from __future__ import annotations

import json
import logging
import sys

import click

from rayft_core.config import ConfigError, RunConfig, load_config

EXIT_BAD_INPUT = 2


def _load(config_path: str, overrides: tuple[str, ...]) -> RunConfig:
    try:
        return load_config(config_path, list(overrides))
    except ConfigError as e:
        click.echo(f"error: {config_path}: {e}", err=True)
        sys.exit(EXIT_BAD_INPUT)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """rayft: fine-tune LLMs on a Ray cluster (Ray Data + Ray Train + DeepSpeed).

    Runs join the cluster named by RAY_ADDRESS, or start a local one.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("config_path", type=click.Path(exists=True, dir_okay=False))
@click.argument("overrides", nargs=-1)
def train(config_path: str, overrides: tuple[str, ...]) -> None:
    """Train with the run config CONFIG_PATH; OVERRIDES are key.path=value pairs.

    Example: rayft train examples/sft_lora.yaml tuning.rank=16 cluster.num_workers=2
    """
    from rayft.train import train as run_training
    from rayft_core.errors import UserInputError

    run = _load(config_path, overrides)
    try:
        out = run_training(run)
    except UserInputError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    click.echo(f"done: outputs in {out}")


@main.group()
def config() -> None:
    """Inspect and check run configs."""


@config.command("validate")
@click.argument("config_path", type=click.Path(exists=True, dir_okay=False))
@click.argument("overrides", nargs=-1)
def config_validate(config_path: str, overrides: tuple[str, ...]) -> None:
    """Check CONFIG_PATH (with OVERRIDES) against the schema without running anything."""
    run = _load(config_path, overrides)
    click.echo(f"{config_path}: valid ({run.stage.name}, {run.tuning.method}, {run.cluster.num_workers} worker(s), "
               f"ZeRO-{run.deepspeed.zero_stage})")


@config.command("schema")
def config_schema() -> None:
    """Print the JSON schema of run configs (every key, its type, default and description)."""
    click.echo(json.dumps(RunConfig.model_json_schema(), indent=2))


@main.command()
@click.option("--output", default="outputs/demo", show_default=True, help="Directory for the demo's models and data.")
@click.option("--workers", default=2, show_default=True, help="Ray Train workers for each run.")
def demo(output: str, workers: int) -> None:
    """Pre-train a tiny Llama on generated text, teach it arithmetic with LoRA SFT, score it before and after."""
    from rayft.demo import run_demo

    run_demo(output, workers)


if __name__ == "__main__":
    main()
