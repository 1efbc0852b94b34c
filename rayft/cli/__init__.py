"""The `rayft` command line.

    rayft train run.yaml [key.path=value ...]   train on the cluster in RAY_ADDRESS, or a local one
    rayft submit run.yaml --address URL         the same run as a Ray job on a running cluster (`ray job submit`)
    rayft config validate run.yaml              check a run config without running it
    rayft config schema                         print the JSON schema of run configs
    rayft config import-llamafactory old.yaml   translate a LLaMA-Factory YAML (train/validate also take one)
    rayft data preview run.yaml                 rendered rows, counts, lengths, packing fill, bad rows
    rayft data prepare run.yaml -o DIR          tokenize once into Parquet that later runs train from
    rayft data templates                        the named chat templates
    rayft tune run.yaml [--space space.yaml]    a hyperparameter sweep on Ray Tune, each trial a training run
    rayft serve serve.yaml | --model DIR        OpenAI API endpoints (Ray Serve + vLLM), LoRA adapters per request
    rayft infer run.yaml -o out.jsonl           generate for a run's datasets (Ray Data + vLLM), JSONL
    rayft chat OUTPUT_DIR [--engine hf|vllm]    a terminal chat with a trained model, streamed
    rayft eval mc|similarity ...                multiple-choice benchmarks, ROUGE/BLEU of predictions
    rayft k8s render run.yaml                   KubeRay manifests from the Helm chart
    rayft demo                                  pre-train a tiny model, teach it a task with LoRA, score it
    rayft models [MODEL_TYPE]                   the model families rayft is proven to train, and how
    rayft ui [--host H --auth U:P]              the web app: configure, preview, launch, watch, chat, export

One module per command group (train.py: train, tune, submit; data.py; config.py; serve.py: serve, chat, infer;
eval.py; k8s.py; export.py; demo.py; models.py; ui.py), what they share in _common.py. Bad input is a UserInputError wherever it
is found; RayftGroup (this group's class) prints it as one "error: ..." line and exits 2. Nothing outside
rayft.cli imports it (an import-linter contract).
"""

from __future__ import annotations

import logging

import click

from rayft.cli._common import RayftGroup
from rayft.cli.config import config as config_group
from rayft.cli.data import data_group
from rayft.cli.demo import demo as demo_command
from rayft.cli.eval import eval_group
from rayft.cli.export import export as export_command
from rayft.cli.k8s import k8s_group
from rayft.cli.models import models as models_command
from rayft.cli.serve import chat_command, infer_command, serve_command
from rayft.cli.train import submit as submit_command
from rayft.cli.train import train as train_command
from rayft.cli.train import tune_command
from rayft.cli.ui import ui_command


@click.group(cls=RayftGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """rayft: fine-tune LLMs on a Ray cluster (Ray Data + Ray Train + DeepSpeed).

    Runs join the cluster named by RAY_ADDRESS, or start a local one.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


for _command in (
    train_command,
    tune_command,
    submit_command,
    export_command,
    eval_group,
    data_group,
    config_group,
    serve_command,
    infer_command,
    chat_command,
    demo_command,
    k8s_group,
    models_command,
    ui_command,
):
    main.add_command(_command)
