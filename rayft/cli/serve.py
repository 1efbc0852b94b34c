"""`rayft serve`, `rayft chat` and `rayft infer`: a trained model behind the OpenAI API, in a terminal chat,
or generating for a run's datasets."""

from __future__ import annotations

import click

from rayft.cli._common import load_run, run_config_arguments
from rayft_core.errors import UserInputError


@click.command("serve", context_settings={"ignore_unknown_options": True})
@click.argument("config_path", required=False)
@click.argument("overrides", nargs=-1)
@click.option(
    "--model",
    "model_dir",
    type=click.Path(exists=True, file_okay=False),
    help="Serve one `rayft train` output instead of a config: its merged/ model, its full model, or its "
    "LoRA adapter on the base it was trained from.",
)
@click.option(
    "--add-adapter",
    "adapter",
    metavar="RUN_DIR",
    help="Add this LoRA run's adapter to the running application, on the base it was trained on, without "
    "restarting it; then exit.",
)
@click.option(
    "--best-of",
    "sweep_dir",
    metavar="SWEEP_DIR",
    help="Add the best trial of this `rayft tune` sweep (its results.csv) to the running application; then exit.",
)
@click.option("--name", help="The adapter's name for --add-adapter/--best-of (default: the run's or sweep's name).")
@click.option("--app", default="rayft", show_default=True, help="The Serve application to add to (serving `name`).")
def serve_command(
    config_path: str | None,
    model_dir: str | None,
    overrides: tuple[str, ...],
    adapter: str | None,
    sweep_dir: str | None,
    name: str | None,
    app: str,
) -> None:
    """Serve models over the OpenAI API (Ray Serve + vLLM) until Ctrl-C.

    CONFIG_PATH is a serving config (examples/serve.yaml); OVERRIDES are key.path=value pairs.
    Clients send 'Authorization: Bearer $RAYFT_API_KEY'; adapters are chosen per request as model="<id>:<adapter>".
    With --add-adapter or --best-of, add an adapter to a running application (RAY_ADDRESS: its cluster) instead.

    Example: RAYFT_API_KEY=... rayft serve --model outputs/sft-lora http.port=8001
    """
    from pathlib import Path

    from rayft.serve import serve_until_interrupted

    if adapter or sweep_dir:
        from rayft.serve import promote

        if adapter and sweep_dir:
            raise UserInputError("give --add-adapter RUN_DIR or --best-of SWEEP_DIR (one of them)")
        model = promote(app, adapter=adapter, sweep_dir=sweep_dir, name=name)
        click.echo(f'serving it now: model="{model}"')
        return
    if model_dir and config_path and "=" in config_path:  # `--model DIR key=value ...`: no config, only overrides
        config_path, overrides = None, (config_path, *overrides)
    if config_path and not Path(config_path).is_file():
        raise UserInputError(f"{config_path}: no such serving config")
    if bool(config_path) == bool(model_dir):
        raise UserInputError("give a serving config or --model OUTPUT_DIR (one of them)")
    serve_until_interrupted(config_path, model_dir, list(overrides), echo=click.echo)


@click.command("infer", context_settings={"ignore_unknown_options": True})
@run_config_arguments
@click.option(
    "-o",
    "--output",
    required=True,
    help="The JSONL file to write, one line per row (a new file, or an existing one with --overwrite).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT when it exists.")
@click.option(
    "--model",
    "model_dir",
    type=click.Path(exists=True, file_okay=False),
    help="The model to generate with (default: the run's output, output.storage_path/output.name).",
)
@click.option(
    "--split",
    type=click.Choice(["eval", "train"]),
    default="eval",
    show_default=True,
    help="Which datasets of the run: data.eval or data.train.",
)
@click.option("--max-new-tokens", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(min=0), help="0: greedy.")
@click.option("--top-p", default=1.0, show_default=True, type=click.FloatRange(0, 1, min_open=True))
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1), help="Rows per vLLM batch.")
@click.option(
    "--engines",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="vLLM engines (Ray Data actors) generating at once.",
)
def infer_command(
    config_path: str,
    overrides: tuple[str, ...],
    output: str,
    overwrite: bool,
    model_dir: str | None,
    split: str,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    batch_size: int,
    engines: int,
) -> None:
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
    check_new_file(output, overwrite, inputs=(config_path,))  # before any work
    check_data_inputs(run, (f"data.{split}",), model=False)  # the model is the run's output
    connect()
    with tqdm(desc="generated", unit="row") as bar:
        summary = infer(
            run,
            model_dir,
            f"data.{split}",
            output,
            GenerationParams(max_new_tokens, temperature, top_p),
            batch_size,
            engines,
            progress=lambda n: bar.update(n - bar.n),
        )
    click.echo(f"wrote {summary['rows']} rows to {summary['output']}")
    if summary["bad_rows"]:
        click.echo(
            f"{summary['bad_rows']} rows could not be used, e.g.:\n  " + "\n  ".join(summary["first_bad_rows"]),
            err=True,
        )


@click.command("chat")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--engine",
    type=click.Choice(["auto", "hf", "vllm"]),
    default="auto",
    show_default=True,
    help="auto: vLLM on CUDA when installed, else transformers (on CPU it answers before vLLM has started).",
)
@click.option("--system", help="A system prompt for the whole conversation.")
@click.option("--max-new-tokens", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--temperature", default=0.7, show_default=True, type=click.FloatRange(min=0), help="0: greedy.")
@click.option("--top-p", default=0.9, show_default=True, type=click.FloatRange(0, 1, min_open=True))
def chat_command(
    model_dir: str, engine: str, system: str | None, max_new_tokens: int, temperature: float, top_p: float
) -> None:
    """Chat with MODEL_DIR (a `rayft train` output, its merged/ folder or a model) in the terminal.

    Replies stream as they are generated, rendered with the chat template the model was trained with.
    /reset clears the history, /exit or Ctrl-D quits.
    """
    from rayft_core.infer import GenerationParams, chat_loop, load_engine

    loaded = load_engine(model_dir, engine)
    chat_loop(loaded, GenerationParams(max_new_tokens, temperature, top_p), system, write=_echo)


def _echo(text: str = "", end: str = "\n", flush: bool = False) -> None:
    click.echo(text, nl=end == "\n")
