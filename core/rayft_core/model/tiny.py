"""Tiny models of real architectures with a tokenizer trained here: for the demo, tests and benchmarks.

build_tokenizer(texts, "tok/")                 # byte-level BPE + ChatML chat template
build_tiny_model("llama", tokenizer, "model/") # random init, 2 layers, saved with save_pretrained
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512, save_dir: str | Path | None = None) -> Any:
    """Train a byte-level BPE on ``texts`` and wrap it as a transformers fast tokenizer with ChatML."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None, unk_token=None
    )
    fast.chat_template = CHATML_TEMPLATE
    if save_dir is not None:
        fast.save_pretrained(save_dir)
    return fast


def tiny_config(arch: str, vocab_size: int, hidden_size: int = 64, num_layers: int = 2, **overrides: Any) -> Any:
    """A small config of a real architecture; head_dim 16 unless overridden."""
    import transformers

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=max(hidden_size // 16, 1),
        num_key_value_heads=max(hidden_size // 32, 1),
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    classes = {
        "llama": transformers.LlamaConfig,
        "qwen2": transformers.Qwen2Config,
        "mistral": transformers.MistralConfig,
        "gemma2": transformers.Gemma2Config,
        "phi3": transformers.Phi3Config,
    }
    if arch not in classes:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {sorted(classes)}")
    extra: dict[str, Any] = (
        {"head_dim": hidden_size // common["num_attention_heads"]} if arch in ("gemma2", "mistral") else {}
    )
    if arch == "phi3":
        common.pop("num_key_value_heads")
    return classes[arch](**{**common, **extra, **overrides})


def build_tiny_model(arch: str, tokenizer: Any, save_dir: str | Path, seed: int = 0, **config_overrides: Any) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    config = tiny_config(arch, len(tokenizer), **{**ids, **config_overrides})
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(save_dir, safe_serialization=True)
    tokenizer.save_pretrained(save_dir)
    return Path(save_dir)
