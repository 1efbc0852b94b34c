"""Weights written as Hugging Face safetensors shards a group of tensors at a time, so that writing a model never
needs it whole in one process's memory.

    save_partitioned(engine.module, out, rank, "5GB")   # every rank calls it under ZeRO-3; rank 0 writes
    reshard(run_dir, dest, "2GB", torch.bfloat16)        # a saved model re-cut (and cast) file by file

Under ZeRO-3 each rank holds a partition of every parameter. ``save_partitioned`` gathers one module's
parameters at a time (a collective), rank 0 copies them out and ``ShardWriter`` writes a shard whenever the
next tensors would make it bigger than ``max_shard_size``: rank 0's extra memory is one shard and one module,
not the model. The files are those of ``save_pretrained`` (model.safetensors, or model-0000i-of-0000N.safetensors
with model.safetensors.index.json, config.json, generation_config.json), in the checkpoint's own key names:
transformers' load-time conversions (fused MoE experts...) are reverted module by module, as it does itself
when it saves offloaded weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rayft_core.model.zero3 import gathered

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
WEIGHT_FILE_NAME = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors")  # save_pretrained's, and ShardWriter's


def weight_files(model_dir: str | Path) -> list[Path]:
    """A saved model's safetensors weight files, by save_pretrained's names, in order."""
    return sorted(p for p in Path(model_dir).glob("model*.safetensors") if WEIGHT_FILE_NAME.fullmatch(p.name))


def tensor_headers(files: list[Path]) -> dict[str, tuple[list[int], str]]:
    """Each tensor's shape and safetensors dtype name (F32, BF16...), read from the files' headers alone."""
    from safetensors import safe_open

    headers = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                tensor = f.get_slice(key)
                headers[key] = (tensor.get_shape(), tensor.get_dtype())
    return headers


class SavedTensors:
    """A saved model's tensors by name, each read from its safetensors file when asked, so the model is never loaded
    whole; which file holds which name is read from the headers at the first request. ``what`` starts every error
    (the use the tensors are read for)."""

    def __init__(self, model_dir: str | Path, what: str):
        self.model_dir, self.what = Path(model_dir), what
        self._where: dict[str, Path] | None = None

    @property
    def where(self) -> dict[str, Path]:
        if self._where is None:
            self._where = {key: file for file in weight_files(self.model_dir) for key in tensor_headers([file])}
        return self._where

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str, shape: torch.Size | None = None) -> torch.Tensor:
        from safetensors import safe_open

        from rayft_core.errors import UserInputError

        if name not in self.where:
            raise UserInputError(f"{self.what}: {self.model_dir} has no safetensors weight {name}")
        with safe_open(str(self.where[name]), framework="pt") as f:
            tensor = f.get_tensor(name)
        if shape is not None and tensor.shape != shape:
            raise UserInputError(
                f"{self.what}: {name} is {tuple(tensor.shape)} in {self.model_dir}, where {tuple(shape)} is needed"
            )
        return tensor


def copy_model_files(src: Path, dest: Path, dtype: torch.dtype | None = None, vocab_size: int | None = None) -> None:
    """What a model directory holds besides its weights and tokenizer, from ``src`` to ``dest``: config.json (with
    the weights' new ``dtype`` and ``vocab_size`` where they changed), generation_config.json, and a remote-code
    model's Python files."""
    config = json.loads((src / "config.json").read_text())
    if dtype is not None:
        config["dtype"] = str(dtype).removeprefix("torch.")
    if vocab_size:
        config["vocab_size"] = vocab_size
    (dest / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for extra in ["generation_config.json", *(p.name for p in src.glob("*.py"))]:
        if (src / extra).is_file():
            (dest / extra).write_bytes((src / extra).read_bytes())


UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def size_in_bytes(size: int | str) -> int:
    """'5GB' (or KB, MB, KiB, MiB, GiB, as save_pretrained's max_shard_size) in bytes; an int is bytes already."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"([0-9]+)\s*([KMG]i?B)", size.strip())
    if match is None:
        raise ValueError(f"a size such as 5GB, 500MB or 2GiB, got {size!r}")
    return int(match[1]) * UNITS[match[2]]


class ShardWriter:
    """Tensors in, safetensors shards of at most ``max_shard_size`` out (a tensor bigger than that gets a shard of
    its own). Shards are written under temporary names and named model-0000i-of-0000N on ``close``."""

    def __init__(self, out: str | Path, max_shard_size: int | str):
        self.out, self.limit = Path(out), size_in_bytes(max_shard_size)
        self.out.mkdir(parents=True, exist_ok=True)
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = self.total_bytes = self.total_parameters = 0
        self.written: list[tuple[Path, list[str]]] = []  # (temporary file, its tensors' names)

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, tensor in tensors.items():
            size = tensor.numel() * tensor.element_size()
            if self.pending and self.pending_bytes + size > self.limit:
                self._flush()
            self.pending[name] = tensor.contiguous()
            self.pending_bytes += size
            self.total_bytes += size
            self.total_parameters += tensor.numel()

    def _flush(self) -> None:
        from safetensors.torch import save_file

        path = self.out / f".rayft-shard-{len(self.written):05d}.tmp"
        save_file(self.pending, str(path), metadata={"format": "pt"})
        self.written.append((path, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> list[str]:
        """Name the shards, write the index when there are several, remove weight files of an earlier save that
        the new ones do not replace; returns the shard file names.

        ``out`` is always a directory rayft owns (a run directory the driver claimed, an export's staged
        directory: rayft_core.ownership), and what is removed is only files by the names a save writes there
        (WEIGHT_FILE_NAME, the index): an earlier attempt's, which from_pretrained would otherwise read first."""
        if self.pending or not self.written:
            self._flush()
        n = len(self.written)
        names = [WEIGHTS_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for stale in [*weight_files(self.out), self.out / INDEX_FILE]:
            if stale.name not in names and stale.is_file():
                stale.unlink()
        for (path, _), name in zip(self.written, names):
            path.replace(self.out / name)
        if n > 1:
            index = {
                "metadata": {"total_size": self.total_bytes, "total_parameters": self.total_parameters},
                "weight_map": {key: name for (_, keys), name in zip(self.written, names) for key in keys},
            }
            (self.out / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        return names


def module_groups(model: nn.Module) -> list[tuple[list[tuple[str, nn.Parameter]], list[tuple[str, torch.Tensor]]]]:
    """Each module's own parameters and persistent buffers with their state-dict names, module by module; a
    parameter shared by two modules (tied embeddings) is listed once, under its first name, as save_pretrained
    writes it."""
    seen: set[int] = set()
    groups = []
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        params = [(dot + n, p) for n, p in module.named_parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for _, p in params)
        buffers = [
            (dot + n, b)
            for n, b in module.named_buffers(recurse=False)
            if b is not None and n not in module._non_persistent_buffers_set
        ]
        if params or buffers:
            groups.append((params, buffers))
    return groups


def write_partitioned_model(model: Any, out: str | Path | None, rank: int, max_shard_size: int | str) -> None:
    """A transformers model partitioned by ZeRO-3 as HF shards in ``out`` (rank 0's; every rank joins the
    gathering). The config and generation config are written beside them, as save_pretrained does."""
    from transformers.core_model_loading import revert_weight_conversion

    writer = ShardWriter(out, max_shard_size) if rank == 0 else None
    for params, buffers in module_groups(model):
        with gathered([p for _, p in params]):
            if writer is None:
                continue
            tensors = {n: t.detach().to("cpu", copy=True) for n, t in [*params, *buffers]}
        writer.add(revert_weight_conversion(model, tensors))
    if writer is None:
        return
    writer.close()
    write_model_config(model, out)


def write_model_config(model: Any, out: str | Path) -> None:
    """config.json (with the weights' dtype and the class), generation_config.json, and a remote-code model's
    Python files: what save_pretrained writes besides the weights."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    model.config.dtype = str(dtype).removeprefix("torch.")
    model.config.architectures = [type(model).__name__]
    if getattr(model, "_auto_class", None) is not None:
        from transformers.dynamic_module_utils import custom_object_save

        custom_object_save(model, str(out), config=model.config)
    model.config.save_pretrained(out)
    if model.can_generate():
        model.generation_config.save_pretrained(out)


def trains_adapter(module: nn.Module) -> bool:
    """Whether the trained model is an adapter (PEFT) on a frozen base, alone or under a value head."""
    return hasattr(getattr(module, "lm", module), "peft_config")


def save_partitioned(module: nn.Module, out: str | Path | None, rank: int, max_shard_size: int | str) -> None:
    """The trained model of a ZeRO-3 run (every rank calls it; rank 0 writes ``out``):

    - an adapter (PEFT, alone or under a value head): only what trained is gathered and saved, as save_pretrained
      does (the frozen base is the input model, never rewritten);
    - a full model: its shards as ``write_partitioned_model`` writes them, and a value head beside them."""
    lm = getattr(module, "lm", module)  # a reward or RL model wraps the causal LM
    if trains_adapter(module):
        trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        with gathered([p for _, p in trainable]):
            state = {n: p.detach().to("cpu", copy=True) for n, p in trainable} if rank == 0 else None
        if state is not None:
            module.save_pretrained(out, state_dict=state, safe_serialization=True)
        return
    write_partitioned_model(lm, out, rank, max_shard_size)
    if lm is module or not hasattr(module, "save_head"):  # an RL model's other roles are not its output
        return
    head = [(n, p) for n, p in module.named_parameters() if not n.startswith("lm.")]
    with gathered([p for _, p in head]):
        state = {n: p.detach().to("cpu", copy=True) for n, p in head} if rank == 0 else None
    if state is not None:
        module.save_head(out, state)


def reshard(src: str | Path, dest: str | Path, max_shard_size: int | str, dtype: torch.dtype | None = None) -> None:
    """The safetensors weights of the model in ``src`` re-cut into shards of ``max_shard_size`` in ``dest`` (cast
    to ``dtype``'s floating point when given), one tensor at a time: the model is never loaded whole."""
    from safetensors import safe_open

    files = weight_files(src)
    if not files:
        raise FileNotFoundError(f"{src} holds no model*.safetensors weights")
    writer = ShardWriter(dest, max_shard_size)
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                tensor = f.get_tensor(key)
                if dtype is not None and tensor.is_floating_point():
                    tensor = tensor.to(dtype)
                writer.add({key: tensor})
    writer.close()
