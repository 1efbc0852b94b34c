"""Tokenize aligned rows: chat conversations with the loss on assistant tokens, or text in blocks.

Chat rows are rendered with the tokenizer's own chat template, turn by turn: the text a template
produces for messages[:k] + generation prompt is a prefix of the text for messages[:k+1], so the
difference is exactly the assistant's turn. Each piece is tokenized separately (one batched call)
and the prompt pieces get IGNORE_INDEX labels.
"""

from __future__ import annotations

import os
from typing import Any

from rayft_core.data import IGNORE_INDEX
from rayft_core.data.formats import DataError


def _render(tokenizer: Any, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def split_turns(tokenizer: Any, messages: list[dict]) -> list[tuple[str, str]]:
    """[(prompt_text, response_text), ...], one pair per assistant turn; the pieces join to the full render.

    Turn k's prompt ends where the render of messages[:k] with a generation prompt ends; its
    response runs to where the render of messages[:k+1] stops agreeing with the full render
    (some templates, Phi-3's among them, append an end token only after the final message).
    """
    full = _render(tokenizer, messages, generation_prompt=False)
    pairs, pos = [], 0
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:k], generation_prompt=True)
        answer = _render(tokenizer, messages[: k + 1], generation_prompt=False)
        prompt_end, end = len(prompt), len(os.path.commonprefix([answer, full]))
        if prompt_end < pos or not full.startswith(prompt) or end <= prompt_end:
            raise DataError("the chat template does not render conversations incrementally (a later turn "
                            "changes earlier text); set model.chat_template to one that does")
        pairs.append((full[pos:prompt_end], full[prompt_end:end]))
        pos = end
    if pairs and pos < len(full):  # text after the last turn's own render (an end token): learn it too
        pairs[-1] = (pairs[-1][0], pairs[-1][1] + full[pos:])
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
    """Conversations -> input_ids and labels (prompt tokens masked), truncated to max_seq_len.

    Each conversation is tokenized whole, exactly as at inference (tokenizing pieces apart would
    add spurious prefix spaces with SentencePiece vocabularies); the character offsets of each
    token then say which turn it belongs to and whether it is the assistant's.
    """
    turns = [split_turns(tokenizer, messages) for messages in batch_messages]
    texts = ["".join(p + r for p, r in pairs) for pairs in turns]
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True) if texts else {"input_ids": []}
    out: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
    for pairs, ids, offsets in zip(turns, enc["input_ids"], enc.get("offset_mapping", [])):
        segments = _segments(pairs, ids, offsets)  # per turn: (prompt ids, response ids)
        input_ids: list[int] = []
        labels: list[int] = []
        for prompt, response in segments:
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


def _segments(pairs: list[tuple[str, str]], ids: list[int], offsets: list[tuple[int, int]]) -> list[tuple[list[int], list[int]]]:
    """Assign each token, by the character where it starts, to its turn's prompt or response."""
    bounds, pos = [], 0  # per turn: (response start, turn end) in characters
    for prompt, response in pairs:
        bounds.append((pos + len(prompt), pos + len(prompt) + len(response)))
        pos += len(prompt) + len(response)
    segments: list[tuple[list[int], list[int]]] = [([], []) for _ in pairs]
    turn = 0
    for token, (start, _) in zip(ids, offsets):
        while turn < len(bounds) - 1 and start >= bounds[turn][1]:
            turn += 1
        segments[turn][1 if start >= bounds[turn][0] else 0].append(token)
    return segments


def encode_text_batch(tokenizer: Any, texts: list[str], max_seq_len: int) -> dict[str, list[list[int]]]:
    """Pre-training: each text + EOS, concatenated and cut into max_seq_len blocks (the last may be shorter)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream += ids + eos
    blocks = [stream[i : i + max_seq_len] for i in range(0, len(stream), max_seq_len)]
    return {"input_ids": blocks, "labels": [list(b) for b in blocks]}
