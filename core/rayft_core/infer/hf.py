"""The transformers engine: works wherever training works, no vLLM needed."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from rayft_core.infer import GenerationParams, Messages, ModelSource


class HFEngine:
    def __init__(self, source: ModelSource):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(source.tokenizer)
        model = AutoModelForCausalLM.from_pretrained(source.weights, dtype=dtype)
        if source.adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, source.adapter)
        self.model = model.to(self.device).eval()

    def stream(self, messages: Messages, params: GenerationParams) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling = (
            dict(do_sample=True, temperature=params.temperature, top_p=params.top_p)
            if params.temperature > 0
            else dict(do_sample=False)
        )
        kwargs = dict(
            **inputs,
            streamer=streamer,
            max_new_tokens=params.max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            **sampling,
        )
        worker = threading.Thread(target=self.model.generate, kwargs=kwargs, daemon=True)
        worker.start()
        yield from (piece for piece in streamer if piece)
        worker.join()
