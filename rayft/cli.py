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
    rayft serve serve.yaml | --model DIR        OpenAI-compatible endpoints (Ray Serve + vLLM), LoRA adapters per request
    rayft infer run.yaml -o out.jsonl           generate for a run's datasets (Ray Data + vLLM), JSONL
    rayft chat OUTPUT_DIR [--engine hf|vllm]    a terminal chat with a trained model, streamed
    rayft eval mc|similarity ...                multiple-choice benchmarks, ROUGE/BLEU of predictions
    rayft k8s render run.yaml                   KubeRay manifests from the Helm chart
    rayft demo                                  pre-train a tiny model, teach it a task with LoRA, score it
"""

from __future__ import annotations

import json
import logging
import sys

import click

from rayft.cliutil import EXIT_BAD_INPUT, load_run, or_exit
from rayft.data_cli import data_group
from rayft.eval import eval_group
from rayft.k8s import k8s_group
from rayft_core.config import RunConfig, load_config
from rayft_core.schema import ConfigError


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
@click.option("--resume", is_flag=True, help="Continue the run in output.storage_path/output.name from its latest "
              "checkpoint (checkpoint.save_steps), with the same model, tuning method, stage and workers.")
def train(config_path: str, overrides: tuple[str, ...], resume: bool) -> None:
    """Train with the run config CONFIG_PATH; OVERRIDES are key.path=value pairs.

    Example: rayft train examples/sft_lora.yaml tuning.rank=16 cluster.num_workers=2
    """
    from rayft.train import train as run_training
    from rayft_core.errors import UserInputError

    run = load_run(config_path, overrides)
    if run.tune is not None:
        click.echo(f"error: {config_path}: this run has a tune: section (a sweep); run it with `rayft tune "
                   f"{config_path}`, or remove the section to train once", err=True)
        sys.exit(EXIT_BAD_INPUT)
    try:
        out = run_training(run, resume=resume)
    except UserInputError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    click.echo(f"done: outputs in {out}")


@main.command("tune", context_settings={"ignore_unknown_options": True})
@click.argument("config_path", type=click.Path(exists=True, dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--space", "space_path", type=click.Path(exists=True, dir_okay=False),
              help="A YAML with the sweep (the keys of a run's tune: section, or a tune: mapping); replaces the run's own.")
@click.option("--resume", is_flag=True, help="Continue the sweep in output.storage_path/output.name after its driver "
              "stopped: finished trials are kept, unfinished ones continue from their latest checkpoint.")
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
            click.echo(f"error: {space_path}: {e}", err=True)
            sys.exit(EXIT_BAD_INPUT)
    if run.tune is None:
        click.echo(f"error: {config_path}: no sweep to run; add a tune: section or give --space space.yaml", err=True)
        sys.exit(EXIT_BAD_INPUT)
    result = or_exit(lambda: sweep(raw, run.tune, resume=resume))
    click.echo(f"done: sweep in {result.directory}")


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("config_path", type=click.Path(exists=True, dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--address", envvar="RAY_API_SERVER_ADDRESS", required=True,
              help="The cluster's job server (its dashboard), e.g. http://HEAD:8265; or set RAY_API_SERVER_ADDRESS.")
@click.option("--runtime-env", "runtime_env_path", type=click.Path(exists=True, dir_okay=False),
              help="runtime_env YAML: working_dir, excludes, py_modules, env_vars, pip [default: jobs/runtime_env.yaml when present].")
@click.option("--working-dir", type=click.Path(exists=True, file_okay=False),
              help="The directory to upload; CONFIG_PATH must lie inside [default: the runtime_env's working_dir].")
@click.option("--env", "env_vars", multiple=True, metavar="KEY=VALUE",
              help="An environment variable of the job (repeatable). The Ray dashboard shows it: give secrets to the "
                   "cluster instead (a Kubernetes Secret, the nodes' environment); one that looks like a secret is warned about.")
@click.option("--entrypoint-num-cpus", type=float, help="CPUs reserved for the driver (`rayft train`) [default: 0, on the head].")
@click.option("--entrypoint-num-gpus", type=float, help="GPUs reserved for the driver.")
@click.option("--entrypoint-resources", metavar="JSON", help='Custom resources the driver needs, e.g. \'{"driver": 1}\'.')
@click.option("--submission-id", help="The job's id [default: one Ray chooses, raysubmit_...].")
@click.option("--no-wait", is_flag=True, help="Return once the job is submitted instead of following its logs.")
def submit(config_path: str, overrides: tuple[str, ...], address: str, runtime_env_path: str | None, working_dir: str | None,
           env_vars: tuple[str, ...], entrypoint_num_cpus: float | None, entrypoint_num_gpus: float | None,
           entrypoint_resources: str | None, submission_id: str | None, no_wait: bool) -> None:
    """Run CONFIG_PATH (with OVERRIDES) as a Ray job on the cluster at --address, as `ray job submit` does:
    the working dir is uploaded (without .git, outputs, virtualenvs) and the job runs `rayft train CONFIG_PATH
    OVERRIDES` in it. Never uploaded, whatever the runtime_env says: .env*, *.pem, *.key, .aws/, .netrc,
    .git-credentials. Prints the job id and follows its logs. The cluster's token is sent (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token).

    Exit status: 0 the job succeeded, 1 it failed or was stopped, 2 nothing was submitted (config, paths, address, token).

    Example: rayft submit jobs/sft_lora.yaml tuning.rank=32 --address http://head:8265
    """
    from rayft.submit import Entrypoint, parse_env_vars, submit_run

    run = load_run(config_path, overrides)  # a bad config stops here, before anything is contacted
    succeeded = or_exit(lambda: submit_run(
        run, config_path, overrides, address, runtime_env_path=runtime_env_path, working_dir=working_dir,
        env_vars=parse_env_vars(env_vars), where=Entrypoint.parse(entrypoint_num_cpus, entrypoint_num_gpus, entrypoint_resources),
        submission_id=submission_id, wait=not no_wait))
    sys.exit(0 if succeeded else 1)


@main.command("export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Directory for the exported model.")
@click.option("--max-shard-size", default="5GB", show_default=True, help="Largest safetensors shard (e.g. 2GB, 500MB).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), help="Cast the weights (default: as trained; merged adapters are float32).")
@click.option("--ollama", is_flag=True, help="Also write an Ollama Modelfile.")
@click.option("--trust-remote-code", is_flag=True, help="Run the base model's own Python code from its directory "
              "(models that need it); off unless given here, whatever the run directory says.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier export in OUTPUT (a directory holding files "
              "rayft did not write is refused either way).")
def export(run_dir: str, output: str, max_shard_size: str, dtype: str | None, ollama: bool, trust_remote_code: bool,
           overwrite: bool) -> None:
    """Write the rayft run RUN_DIR as one standalone model: an adapter merged into its base (a QLoRA
    base dequantized first), safetensors shards, tokenizer, chat_template.jinja, a reward model's value head.
    OUTPUT must be new or empty (or an earlier export, with --overwrite); it appears whole or not at all.

    Example: rayft export outputs/sft-lora -o exported/sft --dtype bfloat16 --ollama
    """
    from rayft_core.export import export_model

    dest = or_exit(lambda: export_model(run_dir, output, max_shard_size=max_shard_size, dtype=dtype, ollama=ollama,
                                        trust_remote_code=trust_remote_code, overwrite=overwrite))
    click.echo(f"exported: {dest}")


main.add_command(eval_group)
main.add_command(data_group)


@main.group()
def config() -> None:
    """Inspect and check run configs."""


@config.command("validate")
@click.argument("config_path", type=click.Path(exists=True, dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--schema-only", is_flag=True, help="Check the config's keys and values only: for a config meant for "
              "another machine (a cluster), whose model, data and storage paths exist only there.")
def config_validate(config_path: str, overrides: tuple[str, ...], schema_only: bool) -> None:
    """Check CONFIG_PATH (with OVERRIDES) without running anything: the schema, and all that `rayft train`
    checks before it starts a cluster: the model and tokenizer, LoRA targets, the datasets (names, files, the
    columns the stage needs), sizes, optional packages, and that the output directory is free."""
    from rayft.checks import check_config
    from rayft_core import ownership

    run = load_run(config_path, overrides)
    if not schema_only:
        or_exit(lambda: check_config(run.with_absolute_paths(), output=ownership.SWEEP if run.tune else ownership.RUN))
    click.echo(f"{config_path}: valid ({run.stage.name}, {run.tuning.method}, {run.cluster.num_workers} worker(s), "
               f"ZeRO-{run.deepspeed.zero_stage})")


@config.command("schema")
def config_schema() -> None:
    """Print the JSON schema of run configs (every key, its type, default and description)."""
    click.echo(json.dumps(RunConfig.model_json_schema(), indent=2))


@config.command("import-llamafactory")
@click.argument("lf_path", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the rayft YAML here instead of printing it "
              "(a new file, or an existing one with --overwrite; never LF_PATH itself).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT when it exists.")
def config_import_llamafactory(lf_path: str, output: str | None, overwrite: bool) -> None:
    """Translate the LLaMA-Factory 0.9.5 training YAML LF_PATH into a rayft run config.

    The keys rayft cannot honour are listed, with the reason, as comments at its top.
    Example: rayft config import-llamafactory llama3_lora_sft.yaml -o run.yaml
    """
    from pathlib import Path

    from rayft_core.config import validate_config
    from rayft_core.llamafactory import dump_translation, is_error, looks_like_llamafactory, translate
    from rayft_core.schema import read_yaml
    from rayft_core.ownership import check_new_file, write_file_atomically

    def fail(message: str) -> None:
        click.echo(f"error: {lf_path}: {message}", err=True)
        sys.exit(EXIT_BAD_INPUT)

    if output:
        or_exit(lambda: check_new_file(output, overwrite, inputs=(lf_path,)))

    raw = or_exit(lambda: read_yaml(lf_path, "LLaMA-Factory YAML"))
    if not looks_like_llamafactory(raw):
        fail("not a LLaMA-Factory training YAML (no model_name_or_path, dataset, finetuning_type... at the top level)")
    translated, notes = translate(raw)
    errors = [n for n in notes if is_error(n)]
    if errors:
        fail("cannot run in rayft as written:\n" + "\n".join(f"  - {n}" for n in errors))
    try:
        validate_config(translated)
    except ConfigError as e:
        fail(f"translated, but {e}")
    text = dump_translation(translated, notes, Path(lf_path).name)
    if output:
        write_file_atomically(output, text)
        click.echo(f"wrote {output}: {len(notes)} key(s) not honoured, listed at its top", err=True)
    else:
        click.echo(text, nl=False)


@main.command("serve", context_settings={"ignore_unknown_options": True})
@click.argument("config_path", required=False)
@click.argument("overrides", nargs=-1)
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False),
              help="Serve one `rayft train` output instead of a config: its merged/ model, its full model, or its "
              "LoRA adapter on the base it was trained from.")
def serve_command(config_path: str | None, model_dir: str | None, overrides: tuple[str, ...]) -> None:
    """Serve models over the OpenAI API (Ray Serve + vLLM) until Ctrl-C.

    CONFIG_PATH is a serving config (examples/serve.yaml); OVERRIDES are key.path=value pairs.
    Clients send 'Authorization: Bearer $RAYFT_API_KEY'; adapters are chosen per request as model="<id>:<adapter>".

    Example: RAYFT_API_KEY=... rayft serve --model outputs/sft-lora http.port=8001
    """
    from pathlib import Path

    from rayft.serve import serve_until_interrupted

    if model_dir and config_path and "=" in config_path:  # `--model DIR key=value ...`: no config, only overrides
        config_path, overrides = None, (config_path, *overrides)
    if config_path and not Path(config_path).is_file():
        click.echo(f"error: {config_path}: no such serving config", err=True)
        sys.exit(EXIT_BAD_INPUT)
    if bool(config_path) == bool(model_dir):
        click.echo("error: give a serving config or --model OUTPUT_DIR (one of them)", err=True)
        sys.exit(EXIT_BAD_INPUT)
    or_exit(lambda: serve_until_interrupted(config_path, model_dir, list(overrides), echo=click.echo))


@main.command("infer", context_settings={"ignore_unknown_options": True})
@click.argument("config_path", type=click.Path(exists=True, dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("-o", "--output", required=True, help="The JSONL file to write, one line per row (a new file, or an "
              "existing one with --overwrite).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT when it exists.")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False),
              help="The model to generate with (default: the run's output, output.storage_path/output.name).")
@click.option("--split", type=click.Choice(["eval", "train"]), default="eval", show_default=True,
              help="Which datasets of the run: data.eval or data.train.")
@click.option("--max-new-tokens", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(min=0), help="0: greedy.")
@click.option("--top-p", default=1.0, show_default=True, type=click.FloatRange(0, 1, min_open=True))
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1), help="Rows per vLLM batch.")
@click.option("--engines", default=1, show_default=True, type=click.IntRange(min=1),
              help="vLLM engines (Ray Data actors) generating at once.")
def infer_command(config_path: str, overrides: tuple[str, ...], output: str, overwrite: bool, model_dir: str | None, split: str,
                  max_new_tokens: int, temperature: float, top_p: float, batch_size: int, engines: int) -> None:
    """Generate for every row of a run's datasets with Ray Data + vLLM; write JSONL.

    Each line: {"dataset", "row", "messages", "prediction", "reference"} (reference: the row's own answer, when
    it has one), ready for `rayft eval similarity`. Rows that cannot be used are counted and shown, not written.

    Example: rayft infer examples/sft_lora.yaml --split eval -o predictions.jsonl --max-new-tokens 128
    """
    from tqdm import tqdm

    from rayft.checks import check_data_inputs
    from rayft.cluster import connect
    from rayft.infer import infer
    from rayft_core.infer import GenerationParams
    from rayft_core.ownership import check_new_file

    run = load_run(config_path, overrides).with_absolute_paths()
    or_exit(lambda: check_new_file(output, overwrite, inputs=(config_path,)))  # before any work
    or_exit(lambda: check_data_inputs(run, (f"data.{split}",), model=False))  # the model is the run's output
    connect()
    with tqdm(desc="generated", unit="row") as bar:
        summary = or_exit(lambda: infer(run, model_dir, f"data.{split}", output,
                                         GenerationParams(max_new_tokens, temperature, top_p), batch_size, engines,
                                         progress=lambda n: bar.update(n - bar.n)))
    click.echo(f"wrote {summary['rows']} rows to {summary['output']}")
    if summary["bad_rows"]:
        click.echo(f"{summary['bad_rows']} rows could not be used, e.g.:\n  " + "\n  ".join(summary["first_bad_rows"]),
                   err=True)


@main.command("chat")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--engine", type=click.Choice(["auto", "hf", "vllm"]), default="auto", show_default=True,
              help="auto: vLLM on CUDA when installed, else transformers (on CPU it answers before vLLM has started).")
@click.option("--system", help="A system prompt for the whole conversation.")
@click.option("--max-new-tokens", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--temperature", default=0.7, show_default=True, type=click.FloatRange(min=0), help="0: greedy.")
@click.option("--top-p", default=0.9, show_default=True, type=click.FloatRange(0, 1, min_open=True))
def chat_command(model_dir: str, engine: str, system: str | None, max_new_tokens: int, temperature: float, top_p: float) -> None:
    """Chat with MODEL_DIR (a `rayft train` output, its merged/ folder or a model) in the terminal.

    Replies stream as they are generated, rendered with the chat template the model was trained with.
    /reset clears the history, /exit or Ctrl-D quits.
    """
    from rayft_core.infer import GenerationParams, chat_loop, load_engine

    loaded = or_exit(lambda: load_engine(model_dir, engine))
    chat_loop(loaded, GenerationParams(max_new_tokens, temperature, top_p), system, write=_echo)


def _echo(text: str = "", end: str = "\n", flush: bool = False) -> None:
    click.echo(text, nl=end == "\n")


@main.command()
@click.option("--output", default="outputs/demo", show_default=True, help="Directory for the demo's models and data.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Ray Train workers for each run.")
def demo(output: str, workers: int) -> None:
    """Pre-train a tiny Llama on generated text, teach it arithmetic with LoRA SFT, score it before and after."""
    from rayft.demo import run_demo

    or_exit(lambda: run_demo(output, workers))


main.add_command(k8s_group)

if __name__ == "__main__":
    main()
