"""`rayft export`: a run's output as one standalone model directory that plain transformers, vLLM or
llama.cpp/Ollama converters load without PEFT or rayft.

    export_model("outputs/sft-lora", "exported/sft-lora", max_shard_size="2GB", ollama=True)

- an adapter (LoRA, DoRA, PiSSA...) is merged into its base in float32: a plain LoRA weight by weight, never
  loading the base whole (rayft_core.model.merge), the others by PEFT on the whole model. A QLoRA adapter was trained
  against the quantized base, so that base is loaded quantized as in training and dequantized before
  the merge: the merged weights are the ones the adapter saw, not the original higher-precision ones;
- a full-parameter output is re-cut into shards (and cast when asked) tensor by tensor, never loaded whole;
- a checkpoint (RUN_DIR/checkpoint_...) of a full-parameter run is written from its ZeRO partitions weight by
  weight, never holding the model or the optimizer's state whole; an adapter run's checkpoint gives its adapter,
  merged as a finished run's is (rayft_core.model.from_checkpoint);
- weights as safetensors shards of at most max_shard_size, the tokenizer, its chat template as
  chat_template.jinja, a reward model's value_head.safetensors, and optionally an Ollama Modelfile.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from rayft_core import ownership
from rayft_core.config import RunConfig, load_config
from rayft_core.errors import UserInputError
from rayft_core.model.from_checkpoint import write_checkpoint_adapter, write_checkpoint_model
from rayft_core.model.loader import load_tokenizer, quantization_config, resize_embeddings, resolve_dtype
from rayft_core.model.merge import merge_streamed, streaming_problem
from rayft_core.model.shards import copy_model_files, reshard
from rayft_core.model.value_head import VALUE_HEAD_FILE
from rayft_core.train.checkpoint import TRAINER_STATE
from rayft_core.train.outputs import CONFIG_FILE

logger = logging.getLogger(__name__)

ADAPTER_FILE = "adapter_config.json"
TEMPLATE_FILE = "chat_template.jinja"
MODELFILE = "Modelfile"
EXPORT_MARKER = ownership.EXPORT.markers[0]  # what the export was made from; proves the directory is rayft's
DTYPES = ("float32", "bfloat16", "float16")


class ExportError(UserInputError):
    """The run directory cannot be exported as asked."""


def read_run(run_dir: str | Path) -> RunConfig:
    """The run config of a finished run; a directory that is not a run, or a run without its model
    (stopped or failed before the end), is an ExportError."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise ExportError(
            f"{run_dir} holds no {CONFIG_FILE}: it is not a finished rayft run (give a run's output "
            "directory, output.storage_path/output.name)"
        )
    weights = [p for p in run_dir.glob("*.safetensors") if p.name != VALUE_HEAD_FILE]
    if not weights or not ((run_dir / ADAPTER_FILE).is_file() or (run_dir / "config.json").is_file()):
        raise ExportError(
            f"{run_dir} holds no trained model (an adapter or model config with its .safetensors "
            "weights): the run did not finish. Continue it with `rayft train CONFIG --resume`, or "
            "export a finished run"
        )
    return load_config(path)


def read_checkpoint_run(checkpoint: Path) -> RunConfig:
    """The run config of a checkpoint: written into it, or (a checkpoint of an older rayft) in its run directory."""
    for path in (checkpoint / CONFIG_FILE, checkpoint.parent / CONFIG_FILE):
        if path.is_file():
            run = load_config(path)
            break
    else:
        raise ExportError(f"checkpoint {checkpoint} has no {CONFIG_FILE} in it or beside it: its run is unknown")
    return run


def merged_model(
    run: RunConfig, run_dir: str | Path, tokenizer: Any, trust_remote_code: bool = False
) -> torch.nn.Module:
    """The base with the run's adapter merged in, in float32."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    bits = getattr(run.tuning, "quantization_bit", None)  # a method that trains on a quantized base
    base = AutoModelForCausalLM.from_pretrained(
        run.model.name_or_path,
        dtype=torch.float32,
        quantization_config=quantization_config(run, torch.float32),
        trust_remote_code=trust_remote_code,
    )
    if bits:
        base = base.dequantize()  # the weights the adapter was trained against
    resize_embeddings(base, len(tokenizer), seed=run.train.seed)  # the adapter's saved embeddings then replace them
    return PeftModel.from_pretrained(base, str(run_dir)).merge_and_unload()


def export_model(
    run_dir: str | Path,
    dest: str | Path,
    max_shard_size: str = "5GB",
    dtype: str | None = None,
    ollama: bool = False,
    trust_remote_code: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write the run in ``run_dir`` as a standalone model in ``dest``; return ``dest``.

    ``dest`` is new, empty, or (with ``overwrite``) an earlier export (rayft_core.ownership); the model is
    written beside it and renamed into place, so it appears whole or not at all. ``trust_remote_code`` is
    the caller's decision: a run directory (perhaps someone else's) never turns it on.
    """
    from transformers import AutoTokenizer

    run_dir, dest = Path(run_dir), Path(dest)
    if dest.resolve() == run_dir.resolve():
        raise ExportError("export writes a new directory; give a destination other than the run directory")
    if dtype is not None and dtype not in DTYPES:
        raise ExportError(f"dtype: choose one of {', '.join(DTYPES)}, got {dtype!r}")
    checkpoint = (run_dir / TRAINER_STATE).is_file()
    run = read_checkpoint_run(run_dir) if checkpoint else read_run(run_dir)
    ownership.claim(str(dest), ownership.EXPORT, overwrite, "--overwrite")  # before the model is loaded
    if checkpoint:  # the run's tokenizer, as its workers load it (the run directory has none before the end)
        tokenizer = load_tokenizer(run.model.model_copy(update={"trust_remote_code": trust_remote_code}))
    else:
        tokenizer = AutoTokenizer.from_pretrained(run_dir)
    with _weights_source(run, run_dir, checkpoint) as source, ownership.staged_dir(dest) as staged:
        if checkpoint and source == run_dir:  # a full-parameter checkpoint: weight by weight from its partitions
            cast = resolve_dtype(dtype) if dtype else None
            write_checkpoint_model(run, run_dir, staged, max_shard_size, cast, trust_remote_code)
        else:
            _write_weights(run, source, staged, tokenizer, max_shard_size, dtype, trust_remote_code)
        _write_beside_weights(staged, source, tokenizer, ollama)
        record = {"exported_from": str(run_dir.absolute()), "dtype": dtype, "max_shard_size": max_shard_size}
        (staged / EXPORT_MARKER).write_text(json.dumps(record, indent=2) + "\n")
    return dest


def export_merged(
    run_dirs: list[str | Path],
    dest: str | Path,
    method: str = "ties",
    weights: list[float] | None = None,
    density: float = 0.5,
    max_shard_size: str = "5GB",
    dtype: str | None = None,
    overwrite: bool = False,
    seed: int = 0,
) -> Path:
    """Several finished runs of one base merged into one model in ``dest`` (rayft_core.model.merge_models): each a
    LoRA adapter that merges weight by weight, or a full-parameter model. ``weights``: one per run (default 1)."""
    from transformers import AutoTokenizer

    from rayft_core.model.merge_models import METHODS, merge_runs

    run_dirs, dest = [Path(d) for d in run_dirs], Path(dest)
    weights = weights if weights is not None else [1.0] * len(run_dirs)
    if method not in METHODS:
        raise ExportError(f"--merge-method: choose one of {', '.join(METHODS)}, got {method!r}")
    if len(weights) != len(run_dirs):
        raise ExportError(f"--merge-weights: one per run ({len(run_dirs)}), got {len(weights)}")
    if not 0 < density <= 1:
        raise ExportError(f"--density: the share of each task vector kept, in (0, 1], got {density}")
    runs = [read_run(d) for d in run_dirs]
    bases = {str(Path(r.model.name_or_path).resolve()) for r in runs}
    if len(bases) > 1:
        raise ExportError(
            f"--merge-with: the runs fine-tuned different bases ({', '.join(sorted(bases))}); merge runs of one base"
        )
    for run, run_dir in zip(runs, run_dirs):
        why = streaming_problem(run, run_dir) if (run_dir / ADAPTER_FILE).is_file() else None
        why = why or ("it added tokens" if run.model.adds_tokens else None)
        if why:
            raise ExportError(
                f"--merge-with: {run_dir} cannot be merged weight by weight: {why}; export it alone first"
            )
    ownership.claim(str(dest), ownership.EXPORT, overwrite, "--overwrite")
    tokenizer = AutoTokenizer.from_pretrained(run_dirs[0])
    cast = resolve_dtype(dtype or "float32")
    with ownership.staged_dir(dest) as staged:
        record = merge_runs(
            Path(runs[0].model.name_or_path), run_dirs, staged, method, weights, density, max_shard_size, cast, seed
        )
        _write_beside_weights(staged, run_dirs[0], tokenizer, ollama=False)
        record = {"exported_from": [str(d.absolute()) for d in run_dirs], "dtype": dtype, **record}
        (staged / EXPORT_MARKER).write_text(json.dumps(record, indent=2) + "\n")
    return dest


@contextlib.contextmanager
def _weights_source(run: RunConfig, run_dir: Path, checkpoint: bool) -> Iterator[Path]:
    """Where the trained weights are read: the run directory (or checkpoint), or for an adapter run's checkpoint a
    temporary directory of rayft's holding that adapter as PEFT saves it."""
    if not (checkpoint and run.tuning.trains_adapter):
        yield run_dir
        return
    with tempfile.TemporaryDirectory(prefix="rayft-adapter-") as tmp:
        write_checkpoint_adapter(run, run_dir, Path(tmp))
        yield Path(tmp)


def _write_weights(
    run: RunConfig,
    source: Path,
    staged: Path,
    tokenizer: Any,
    max_shard_size: str,
    dtype: str | None,
    trust_remote_code: bool,
) -> None:
    """A finished run's model (or an adapter) from ``source`` as shards in ``staged``."""
    adapter = (source / ADAPTER_FILE).is_file()
    why_whole = streaming_problem(run, source) if adapter else None
    if why_whole:
        logger.info("merging on the whole model (%s)", why_whole)
        model = merged_model(run, source, tokenizer, trust_remote_code)
        model = model.to(resolve_dtype(dtype)) if dtype is not None else model
        model.save_pretrained(staged, max_shard_size=max_shard_size, safe_serialization=True)
    elif adapter:  # merged weight by weight: the base is never loaded whole
        merge_streamed(run, source, staged, max_shard_size, resolve_dtype(dtype or "float32"))
    else:  # a full model is re-cut tensor by tensor, never loaded whole
        cast = resolve_dtype(dtype) if dtype else None
        reshard(source, staged, max_shard_size, cast)
        copy_model_files(source, staged, cast)


def _write_beside_weights(staged: Path, run_dir: Path, tokenizer: Any, ollama: bool) -> None:
    """The tokenizer, its chat template, a reward model's head and an Ollama Modelfile."""
    tokenizer.save_pretrained(staged)
    if isinstance(tokenizer.chat_template, str) and not (staged / TEMPLATE_FILE).is_file():
        (staged / TEMPLATE_FILE).write_text(tokenizer.chat_template)
    if (run_dir / VALUE_HEAD_FILE).is_file():  # a reward model: its head goes with the weights
        shutil.copy2(run_dir / VALUE_HEAD_FILE, staged / VALUE_HEAD_FILE)
    if ollama:
        (staged / MODELFILE).write_text(modelfile(tokenizer))


def modelfile(tokenizer: Any) -> str:
    """An Ollama Modelfile for the exported directory (`ollama create NAME -f Modelfile` inside it).

    Ollama writes prompt templates in Go's template language, not Jinja; when it imports safetensors
    it derives the template from the tokenizer's chat template for the families it knows. So no
    TEMPLATE is written here: a guessed translation would be worse than Ollama's own. The stop
    tokens are the tokenizer's end-of-turn tokens.
    """
    stops = [
        t
        for t in dict.fromkeys([tokenizer.eos_token, "<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"])
        if t and t in tokenizer.get_vocab()
    ]
    lines = [
        "# Ollama: `ollama create my-model -f Modelfile` in this directory.",
        "# The prompt template comes from chat_template.jinja / tokenizer_config.json when Ollama recognises it;",
        "# otherwise add a TEMPLATE in Go template syntax (https://github.com/ollama/ollama/blob/main/docs/template.md).",
        "FROM .",
    ]
    lines += [f'PARAMETER stop "{t}"' for t in stops]
    return "\n".join(lines) + "\n"
