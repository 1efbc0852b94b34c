"""Tiny models of real architectures with a tokenizer trained here: for the demo, tests and benchmarks.

build_tokenizer(texts, "tok/")                 # byte-level BPE + ChatML chat template
build_tiny_model("llama", tokenizer, "model/") # random init, 2 layers, saved with save_pretrained

Any model type transformers builds as a causal LM works (rayft_core.model.families shrinks its config).
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
MAX_TINY_PARAMETERS = 50_000_000


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


def build_tiny_model(
    arch: str, tokenizer: Any, save_dir: str | Path, seed: int = 0, tied: bool | None = False, **config_overrides: Any
) -> Path:
    """A random ``arch`` model (any causal-LM model type) saved with the tokenizer. ``tied``: whether the head
    shares the embedding matrix (None: the family's default)."""
    import torch
    from transformers import AutoModelForCausalLM

    from rayft_core.model.families import tiny_config

    torch.manual_seed(seed)
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    tie = {} if tied is None else {"tie_word_embeddings": tied}
    config = tiny_config(arch, len(tokenizer), **{**tie, **ids, **config_overrides})
    with torch.device("meta"):  # a config the shrinking missed would allocate gigabytes: refuse it first
        size = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    if size > MAX_TINY_PARAMETERS:
        raise ValueError(f"{arch}: the shrunk config still has {size / 1e6:.0f}M parameters; give its sizes")
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(save_dir, safe_serialization=True)
    tokenizer.save_pretrained(save_dir)
    return Path(save_dir)
