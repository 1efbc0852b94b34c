"""A LoRA adapter merged into its base one weight at a time, so that merging never loads the base whole: each
tensor of the base's safetensors files is read, gets its adapter's update W + s * B @ A (s = alpha / r, or
alpha / sqrt(r) with rsLoRA; transposed for GPT-2's Conv1D), and goes to the output shards
(rayft_core.model.shards.ShardWriter). Weights the adapter saved whole (modules_to_save: the embeddings and head
of a run that added tokens) replace the base's.

What this path does not reproduce is merged by PEFT on the whole model instead (rayft_core.export.merged_model);
``streaming_problem`` names the reason: DoRA's magnitudes, PiSSA's changed base, a quantized (QLoRA) base, adapted
3-D expert weights, per-module ranks, tied embeddings the adapter retrained, or a base without safetensors.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from rayft_core.model.shards import ShardWriter, copy_model_files, tensor_headers, weight_files

ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
# An adapter's weights that are not base weights saved whole: the LoRA matrices, and the copies PEFT also saves of
# modules_to_save (X.modules_to_save.weight, X.original_module.weight) beside X.weight, which holds the trained one.
NOT_WHOLE = (".lora_", ".modules_to_save.", ".original_module.")


def streaming_problem(run: Any, adapter_dir: Path) -> str | None:
    """None when the adapter in ``adapter_dir`` can be merged tensor by tensor into ``run``'s base, else why not."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    base = Path(run.model.name_or_path)
    base_config = json.loads((base / "config.json").read_text()) if (base / "config.json").is_file() else {}
    reasons = {
        "not a LoRA adapter": config.get("peft_type") != "LORA",
        "DoRA scales each weight by a learned magnitude": config.get("use_dora"),
        "PiSSA changed the base weights it trained against": str(config.get("init_lora_weights")).startswith("pissa"),
        "the base was quantized in training": getattr(run.tuning, "quantization_bit", None),
        "the adapter adapts 3-D expert weights": config.get("target_parameters"),
        "ranks or alphas differ per module": config.get("rank_pattern") or config.get("alpha_pattern"),
        "the base ties its head to the embeddings the adapter retrained": base_config.get("tie_word_embeddings")
        and config.get("modules_to_save"),
        "the run added tokens and the adapter does not carry the embeddings": run.model.adds_tokens
        and not config.get("modules_to_save"),
        "the base has no local safetensors files": not weight_files(base),
    }
    why = next((why for why, applies in reasons.items() if applies), None)
    if why is None and _unmatched(
        set(tensor_headers([adapter_dir / ADAPTER_WEIGHTS])), set(tensor_headers(weight_files(base)))
    ):
        why = "the base's checkpoint names its weights otherwise than the model does (transformers renames them)"
    return why


def _unmatched(adapter_keys: set[str], base_keys: set[str]) -> list[str]:
    """The base tensors an adapter's weights would update or replace that the base's files do not hold."""
    modules = {
        k.removeprefix(PREFIX).removesuffix(".lora_A.weight") for k in adapter_keys if k.endswith(".lora_A.weight")
    }
    whole = {k.removeprefix(PREFIX) for k in adapter_keys if not any(w in k for w in NOT_WHOLE)}
    return sorted(k for k in {f"{m}.weight" for m in modules} | whole if k not in base_keys)


class LoraUpdates:
    """A saved LoRA adapter read for merging: each adapted base weight's update s * B @ A (transposed for GPT-2's
    Conv1D), and the base weights it saved whole (``whole``: modules_to_save)."""

    def __init__(self, adapter_dir: Path):
        from safetensors.torch import load_file

        config = json.loads((adapter_dir / "adapter_config.json").read_text())
        self.scale = config["lora_alpha"] / (math.sqrt(config["r"]) if config.get("use_rslora") else config["r"])
        self.fan_in_fan_out = bool(config.get("fan_in_fan_out"))
        self.tensors = {k.removeprefix(PREFIX): v for k, v in load_file(str(adapter_dir / ADAPTER_WEIGHTS)).items()}
        self.pairs = {
            k.removesuffix(".lora_A.weight"): (v, self.tensors[k.replace("lora_A", "lora_B")])
            for k, v in self.tensors.items()
            if k.endswith(".lora_A.weight")
        }
        self.whole = {k: v for k, v in self.tensors.items() if not any(w in k for w in NOT_WHOLE)}

    def merged(self, key: str, weight: torch.Tensor) -> torch.Tensor:
        """The base weight ``key`` (in fp32) with its update added, where the adapter has one."""
        if (module := key.removesuffix(".weight")) not in self.pairs:
            return weight
        a, b = self.pairs[module]
        delta = self.scale * (b.float() @ a.float())
        return weight + (delta.T if self.fan_in_fan_out else delta)


def merge_streamed(run: Any, adapter_dir: Path, dest: Path, max_shard_size: str, dtype: torch.dtype) -> None:
    """The run's base with the adapter in ``adapter_dir`` merged, written to ``dest`` in ``dtype`` (see the module's
    docstring; check ``streaming_problem`` first). A ValueError names an adapter weight no base tensor matches."""
    from safetensors import safe_open

    lora = LoraUpdates(adapter_dir)
    base = Path(run.model.name_or_path)
    missing = _unmatched({PREFIX + k for k in lora.tensors}, set(tensor_headers(weight_files(base))))
    if missing:  # checked before anything is written (streaming_problem says so first)
        raise ValueError(f"the adapter's {missing[0]} matches no tensor of the base in {base}")
    writer, rows = ShardWriter(dest, max_shard_size), None
    for file in weight_files(base):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                weight = lora.whole[key] if key in lora.whole else f.get_tensor(key)
                if weight.is_floating_point():  # merged in float32
                    weight = lora.merged(key, weight.float())
                if key in lora.whole and weight.ndim == 2 and "embed" in key:
                    rows = weight.shape[0]  # the vocabulary the run trained with (added tokens)
                writer.add({key: weight.to(dtype) if weight.is_floating_point() else weight})
    writer.close()
    copy_model_files(base, dest, dtype, vocab_size=rows)
