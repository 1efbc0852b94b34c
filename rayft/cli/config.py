"""`rayft config`: check a run config, print the schema, translate a LLaMA-Factory YAML."""

from __future__ import annotations

import json
from typing import Any

import click

from rayft.cli._common import load_run, run_config_arguments


@click.group("config")
def config() -> None:
    """Inspect and check run configs."""


@config.command("validate")
@run_config_arguments
@click.option(
    "--schema-only",
    is_flag=True,
    help="Check the config's keys and values only: for a config meant for "
    "another machine (a cluster), whose model, data and storage paths exist only there.",
)
def config_validate(config_path: str, overrides: tuple[str, ...], schema_only: bool) -> None:
    """Check CONFIG_PATH (with OVERRIDES) without running anything: the schema, and all that `rayft train`
    checks before it starts a cluster: the model and tokenizer, LoRA targets, the datasets (names, files, the
    columns the stage needs), sizes, optional packages, and that the output directory is free."""
    from rayft.checks import check_config
    from rayft_core import ownership
    from rayft_core.model.loader import ModelFacts

    run = load_run(config_path, overrides)
    facts = None if schema_only else ModelFacts(run.with_absolute_paths())
    if facts is not None:
        check_config(facts.run, output=ownership.SWEEP if run.tune else ownership.RUN, model=facts)
    click.echo(
        f"{config_path}: valid ({run.stage.name}, {run.tuning.method}, {run.cluster.num_workers} worker(s), "
        f"ZeRO-{run.deepspeed.zero_stage})"
    )
    target = getattr(run.tuning, "target", None)
    if facts is not None and target is not None:
        from rayft_core.methods.layers import resolve_targets
        from rayft_core.model.moe import expert_count

        names = ", ".join(resolve_targets(facts.meta_model, target, "tuning.target"))
        click.echo(f"tuning.target{' (all)' if target == 'all' else ''}: {names}")
        if experts := expert_count(facts.config):
            click.echo(f"mixture of {experts} experts: the routers stay frozen")
    if facts is not None:
        for line in memory_report(facts):
            click.echo(line)


def memory_report(facts: Any) -> list[str]:
    """The estimate of rayft_core.train.memory for the run, and a warning when this machine's memory (or its
    GPU's) would not hold the workers placed on it (a local run places them all here)."""
    import os

    import torch

    from rayft_core.train.memory import GB, decide_checkpointing, estimate_memory, this_machine_per_worker, value_bytes

    run = facts.run
    gpu = run.cluster.use_gpu is True or (run.cluster.use_gpu == "auto" and torch.cuda.is_available())
    decided = []
    if run.model.gradient_checkpointing == "auto":  # as rayft train decides it for this machine's workers
        budget = this_machine_per_worker(run.cluster.num_workers, gpu)
        on, why = decide_checkpointing(run, facts.tuned_meta_model, facts.config, gpu, budget)
        run = run.model_copy(deep=True)
        run.model.gradient_checkpointing = on
        decided = [f"gradient checkpointing (auto): {'on' if on else 'off'} on this machine: {why}"]
    estimate = estimate_memory(run, facts.tuned_meta_model, facts.config, value_bytes(run, gpu))
    lines = [*decided, *estimate.lines("GPU memory" if gpu else "host memory")]
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    need_host = estimate.total("host") + (0 if gpu else estimate.total("device"))
    if need_host * run.cluster.num_workers > host:
        lines.append(
            f"warning: {run.cluster.num_workers} worker(s) need about {need_host * run.cluster.num_workers / GB:.1f} GB "
            f"of host memory; this machine has {host / GB:.1f} GB. On one machine: raise deepspeed.zero_stage, "
            + ("" if run.model.checkpoints_activations else "turn on model.gradient_checkpointing, ")
            + "lower train.micro_batch_size or data.max_seq_len, or use LoRA"
        )
    if gpu and torch.cuda.is_available():
        device = torch.cuda.get_device_properties(0).total_memory
        if estimate.total("device") > device:
            lines.append(
                f"warning: a worker needs about {estimate.total('device') / GB:.1f} GB of GPU memory; this machine's "
                f"GPU has {device / GB:.1f} GB. Shard more (zero_stage 3, more workers), offload, or checkpoint"
            )
    return lines


@config.command("schema")
def config_schema() -> None:
    """Print the JSON schema of run configs (every key, its type, default and description)."""
    from rayft_core.config import RunConfig

    click.echo(json.dumps(RunConfig.model_json_schema(), indent=2))


@config.command("import-llamafactory")
@click.argument("lf_path", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Write the rayft YAML here instead of printing it (a new file, or an existing one with "
    "--overwrite; never LF_PATH itself).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT when it exists.")
def config_import_llamafactory(lf_path: str, output: str | None, overwrite: bool) -> None:
    """Translate the LLaMA-Factory 0.9.5 training YAML LF_PATH into a rayft run config.

    The keys rayft cannot honour are listed, with the reason, as comments at its top.
    Example: rayft config import-llamafactory llama3_lora_sft.yaml -o run.yaml
    """
    from pathlib import Path

    from rayft_core.llamafactory import dump_translation, translate_runnable
    from rayft_core.ownership import check_new_file, write_file_atomically
    from rayft_core.schema import read_yaml

    if output:
        check_new_file(output, overwrite, inputs=(lf_path,))
    translated, notes = translate_runnable(read_yaml(lf_path, "LLaMA-Factory YAML"), lf_path)
    text = dump_translation(translated, notes, Path(lf_path).name)
    if output:
        write_file_atomically(output, text)
        click.echo(f"wrote {output}: {len(notes)} key(s) not honoured, listed at its top", err=True)
    else:
        click.echo(text, nl=False)
