"""Tokenize aligned rows: chat conversations with the loss on assistant tokens, or text in blocks.

Chat rows are rendered with the tokenizer's own chat template, turn by turn: the text a template
produces for messages[:k] + generation prompt is a prefix of the text for messages[:k+1], so the
difference is exactly the assistant's turn. Each piece is tokenized separately (one batched call)
and the prompt pieces get IGNORE_INDEX labels.
"""

from __future__ import annotations

from typing import Any

from rayft_core.data import IGNORE_INDEX
from rayft_core.data.formats import DataError


def _render(tokenizer: Any, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def split_turns(tokenizer: Any, messages: list[dict]) -> list[tuple[str, str]]:
    """[(prompt_text, response_text), ...], one pair per assistant turn, concatenating to the full render."""
    pairs, done = [], ""
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        with_prompt = _render(tokenizer, messages[:k], generation_prompt=True)
        with_answer = _render(tokenizer, messages[: k + 1], generation_prompt=False)
        if not with_prompt.startswith(done) or not with_answer.startswith(with_prompt):
            raise DataError("the chat template does not render conversations incrementally (a later turn "
                            "changes earlier text); set model.chat_template to one that does")
        pairs.append((with_prompt[len(done):], with_answer[len(with_prompt):]))
        done = with_answer
    return pairs


def _budget(prompt_len: int, response_len: int, max_len: int) -> tuple[int, int]:
    """How many prompt and response tokens to keep when a turn does not fit (LLaMA-Factory's rule)."""
    if response_len * 2 < max_len:
        max_response = max_len
    elif prompt_len * 2 < max_len:
        max_response = max_len - prompt_len
    else:
        max_response = int(max_len * response_len / (prompt_len + response_len))
    keep_response = min(max_response, response_len)
    keep_prompt = min(max(max_len - keep_response, 0), prompt_len)
    return keep_prompt, keep_response


def encode_chat_batch(tokenizer: Any, batch_messages: list[list[dict]], max_seq_len: int,
                      train_on_prompt: bool = False) -> dict[str, list[list[int]]]:
    """Conversations -> input_ids and labels (prompt tokens masked), truncated to max_seq_len."""
    turns = [split_turns(tokenizer, messages) for messages in batch_messages]
    flat = [text for pairs in turns for pair in pairs for text in pair]
    ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    out: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
    pos = 0
    for pairs in turns:
        input_ids: list[int] = []
        labels: list[int] = []
        for _ in pairs:
            prompt, response = ids[pos], ids[pos + 1]
            pos += 2
            room = max_seq_len - len(input_ids)
            if room <= 0:
                break
            keep_p, keep_r = _budget(len(prompt), len(response), room)
            prompt, response = prompt[:keep_p], response[:keep_r]
            input_ids += prompt + response
            labels += (prompt if train_on_prompt else [IGNORE_INDEX] * len(prompt)) + response
        out["input_ids"].append(input_ids)
        out["labels"].append(labels)
    return out


def encode_text_batch(tokenizer: Any, texts: list[str], max_seq_len: int) -> dict[str, list[list[int]]]:
    """Pre-training: each text + EOS, concatenated and cut into max_seq_len blocks (the last may be shorter)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream += ids + eos
    blocks = [stream[i : i + max_seq_len] for i in range(0, len(stream), max_seq_len)]
    return {"input_ids": blocks, "labels": [list(b) for b in blocks]}
