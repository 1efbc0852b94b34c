"""`rayft infer`: generate for a whole dataset with Ray Data and vLLM (`ray.data.llm`), written as JSONL.

    summary = infer(run, model_dir=None, section="data.eval", output="predictions.jsonl")

The datasets are read and aligned exactly as training reads them (a run config's data section,
dataset_info.json names included); each row's prompt is every turn before its last answer, rendered
with the tokenizer saved beside the model (the training template, to the token) and handed to vLLM
as token ids; a LoRA output is applied per request on its base, never merged. Each output line:
``{"dataset", "row", "messages", "prediction", "reference"}``, ready for `rayft eval similarity`.
"""

from __future__ import annotations

import json
from typing import Any

from rayft_core.config import RunConfig
from rayft_core.data.formats import DataError, align_row
from rayft_core.errors import UserInputError
from rayft_core.infer import GenerationParams, ModelSource, cuda_available
from rayft_core.infer.vllm_engine import adapter_engine_kwargs, cpu_engine_env, engine_dtype, require_vllm
from rayft_core.ownership import staged_file
from rayft_core.stage_config import SftStage


def infer(
    run: RunConfig,
    model_dir: str | None,
    section: str,
    output: str,
    params: GenerationParams,
    batch_size: int = 16,
    engines: int = 1,
    progress: Any = None,
) -> dict:
    from rayft.data import resolve_datasets

    require_vllm()
    source = ModelSource.of(model_dir or run.output.dir)
    datasets = resolve_datasets(run, section)
    if not datasets:
        raise UserInputError(f"{section} is empty: name the datasets to generate for (or --split train)")
    rows = _prompt_rows(datasets, source, params)
    good = rows.filter(lambda r: r["error"] is None)
    processor = _processor(run, source, params, batch_size, engines)

    written = 0
    with staged_file(output) as staged, open(staged, "w", encoding="utf-8") as f:  # renamed into place at the end
        for row in processor(good).iter_rows():
            if row["reference"] is None:
                row.pop("reference")
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            written += 1
            if progress:
                progress(written)
    # A second pass over the prompts only (reading and templating are cheap beside generation): rows that
    # could not be used are reported, never dropped silently.
    errors = rows.filter(lambda r: r["error"] is not None).take(1000)
    return {
        "output": output,
        "rows": written,
        "model": source.weights,
        "adapter": source.adapter,
        "bad_rows": len(errors),
        "first_bad_rows": [e["error"] for e in errors[:5]],
    }


def _prompt_rows(datasets: list, source: ModelSource, params: GenerationParams) -> Any:
    """Every dataset's rows as prompts (a Ray dataset; unusable rows carry their error)."""
    from rayft.sources import read_raw

    rows = None
    for d in datasets:
        kwargs = dict(
            spec_json=d.spec.model_dump_json(),
            label=d.label,
            tokenizer_dir=source.tokenizer,
            adapter=source.adapter,
            params=params.__dict__,
        )
        part = read_raw(d.spec, d.key).map_batches(
            _Prompts, fn_constructor_kwargs=kwargs, batch_format="pyarrow", concurrency=1
        )
        if d.spec.num_samples:
            part = part.limit(d.spec.num_samples)
        rows = part if rows is None else rows.union(part)
    return rows


def _processor(run: RunConfig, source: ModelSource, params: GenerationParams, batch_size: int, engines: int) -> Any:
    """Ray Data's vLLM processor: ``engines`` engines answering tokenized prompts."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    on_gpu = cuda_available()
    engine_kwargs = {
        "dtype": engine_dtype(on_gpu),
        "max_model_len": run.data.max_seq_len + params.max_new_tokens,
        **adapter_engine_kwargs(source),
    }
    config = vLLMEngineProcessorConfig(
        model_source=source.weights,
        engine_kwargs=engine_kwargs,
        batch_size=batch_size,
        concurrency=engines,
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,  # prompts arrive as token ids
        placement_group_config=None if on_gpu else {"bundles": [{"CPU": 1}]},
        runtime_env=None if on_gpu else {"env_vars": cpu_engine_env()},
    )
    return build_processor(
        config,
        postprocess=lambda r: {
            "dataset": r["dataset"],
            "row": r["row"],
            "messages": json.loads(r["messages"]),
            "prediction": r["generated_text"],
            "reference": r["reference"],
        },
    )


class _Prompts:
    """Raw rows -> {dataset, row, messages, tokenized_prompt, sampling_params, model?, reference, error}."""

    def __init__(self, spec_json: str, label: str, tokenizer_dir: str, adapter: str | None, params: dict):
        from transformers import AutoTokenizer

        from rayft_core.config import DatasetSpec

        self.spec = DatasetSpec.model_validate_json(spec_json)
        self.label = label
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.adapter = adapter
        self.sampling = {
            "max_tokens": params["max_new_tokens"],
            "temperature": params["temperature"],
            "top_p": params["top_p"],
        }

    def __call__(self, batch: Any) -> dict:
        out: dict[str, list] = {k: [] for k in ("dataset", "row", "messages", "tokenized_prompt", "reference", "error")}
        for path, index, text, read_error in zip(*(batch[c].to_pylist() for c in ("path", "row", "json", "error"))):
            messages, reference, ids, error = None, None, [], read_error
            if error is None:
                try:
                    value = json.loads(text)
                    if not isinstance(value, dict):
                        raise ValueError(f"a row must be an object, got {type(value).__name__}")
                    raw = {**value, "path": path, "__row__": index}
                    messages = align_row(raw, self.spec, SftStage())["messages"]
                    if messages[-1]["role"] == "assistant":  # the dataset's answer is the reference, not the prompt
                        reference = messages.pop()["content"]
                    ids = self.tokenizer.apply_chat_template(
                        messages, add_generation_prompt=True, tokenize=True, return_dict=True
                    )["input_ids"]
                except DataError as e:  # names the file and row itself
                    error = str(e)
                except (ValueError, RecursionError) as e:  # not JSON, or a template that refuses the conversation
                    error = f"{path}: row {index}: {e or 'nested too deeply'}"
            out["dataset"].append(self.label)
            out["row"].append(index)
            out["messages"].append(json.dumps(messages, ensure_ascii=False))
            out["tokenized_prompt"].append(list(ids))
            out["reference"].append(reference)
            out["error"].append(error)
        n = len(out["row"])
        out["sampling_params"] = [self.sampling] * n
        if self.adapter:
            out["model"] = [self.adapter] * n  # ray.data.llm applies the adapter at this local path per request
        return out
