"""Tokenize aligned conversations with the loss on the assistant tokens.

Chat rows are rendered with the tokenizer's chat template, turn by turn: the text a template produces
for messages[:k] + generation prompt is a prefix of the text for messages[:k+1], so the difference is
exactly the assistant's turn. The loss covers every assistant turn, tool-call turns included (the model
learns to call tools); user turns and tool results are prompt. Tools (OpenAI's {"type": "function",
"function": {...}} shape) go to every render; a template that cannot show them is an error, never a
silent drop, since the model would learn to call tools it was never shown.
"""

from __future__ import annotations

import bisect
import json
import re
import weakref
from typing import Any

from jinja2 import TemplateError
from transformers.utils.chat_template_utils import render_jinja_template

from rayft_core.data import IGNORE_INDEX
from rayft_core.data.formats import DataError
from rayft_core.data.templates import TEMPLATES, TOOL_TEMPLATES

_TOOLS_HINT = f"set model.template to one that does ({' or '.join(TOOL_TEMPLATES)}, e.g. `model.template: qwen`)"


def render(
    tokenizer: Any,
    messages: list[dict],
    tools: list[dict] | None,
    generation_prompt: bool,
    template_kwargs: dict | None = None,
) -> str:
    """The text the tokenizer's chat template (its tool-use variant when tools are given) makes of ``messages``."""
    try:
        template, special = _template_of(tokenizer, bool(tools))
        # what apply_chat_template(tokenize=False) does, minus rebuilding its arguments on every call
        return render_jinja_template(
            conversations=[messages],
            tools=tools,
            chat_template=template,
            add_generation_prompt=generation_prompt,
            **{**special, **(template_kwargs or {})},
        )[0][0]
    except (TemplateError, TypeError) as e:  # raise_exception in the template, or a type it cannot join
        raise DataError(
            f"the chat template cannot render this conversation ({e}); set model.template to one "
            f"that can (one of {', '.join(TEMPLATES)}; gemma folds a system prompt into the first "
            f"user turn, {' and '.join(TOOL_TEMPLATES)} render tool calls)"
        ) from e


_TEMPLATES_OF: weakref.WeakKeyDictionary[Any, dict] = weakref.WeakKeyDictionary()


def _template_of(tokenizer: Any, with_tools: bool) -> tuple[str, dict]:
    """The tokenizer's chat template (its tool-use variant when tools are given) and special tokens, read once."""
    cache = _TEMPLATES_OF.setdefault(tokenizer, {})
    key = (with_tools, tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None)
    if key not in cache:
        cache[key] = (
            tokenizer.get_chat_template(None, [{}] if with_tools else None),
            dict(tokenizer.special_tokens_map),
        )
    return cache[key]


def _check_tools_shown(tokenizer: Any, tools: list[dict] | None) -> None:
    """Fail before rendering when tools are given and the template never reads them."""
    if tools and not re.search(r"\btools\b", tokenizer.get_chat_template(None, tools)):
        raise DataError(
            f"this row has tools but the chat template has no tool support (it never uses `tools`); {_TOOLS_HINT}"
        )


def split_turns(
    tokenizer: Any, messages: list[dict], tools: list[dict] | None = None, template_kwargs: dict | None = None
) -> list[tuple[str, str]]:
    """[(prompt_text, response_text), ...], one pair per assistant turn; the pieces join to the full render.

    Turn k's prompt ends where the render of messages[:k] with a generation prompt ends; its
    response runs to where the render of messages[:k+1] stops agreeing with the full render
    (some templates, Phi-3's among them, append an end token only after the final message).
    """
    # Arrow rows carry null for absent keys; templates test `'tool_calls' in message`, so drop them
    messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
    tools = (json.loads(tools) if isinstance(tools, str) else tools) or None
    kwargs = template_kwargs or {}
    _check_tools_shown(tokenizer, tools)
    full = render(tokenizer, messages, tools, False, kwargs)
    if tools and full == render(tokenizer, messages, None, False, kwargs):
        raise DataError(f"this row has tools but the chat template dropped them from the text; {_TOOLS_HINT}")
    pairs, pos = [], 0
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:k], tools, True, kwargs)
        answer = full if k == len(messages) - 1 else render(tokenizer, messages[: k + 1], tools, False, kwargs)
        prompt_end, end = len(prompt), _common_prefix_len(answer, full)
        if prompt_end < pos or not full.startswith(prompt) or end <= prompt_end:
            raise DataError(
                "the chat template does not render conversations incrementally (a later turn "
                "changes earlier text); set model.chat_template to one that does"
            )
        missing = [
            c.get("function", c)["name"]
            for c in message.get("tool_calls") or []
            if c.get("function", c)["name"] not in full[prompt_end:end]
        ]
        if missing:
            raise DataError(
                f"the chat template dropped the tool call(s) {', '.join(missing)} from the assistant "
                f"turn; {_TOOLS_HINT}"
            )
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


def encode_chat_batch(
    tokenizer: Any,
    batch_messages: list[list[dict]],
    max_seq_len: int,
    train_on_prompt: bool = False,
    mask_history: bool = False,
    batch_tools: list[list[dict] | None] | None = None,
    template_kwargs: dict | None = None,
) -> dict[str, list[list[int]]]:
    """Conversations -> input_ids and labels (prompt tokens masked), truncated to max_seq_len.

    Each conversation is tokenized whole, exactly as at inference (tokenizing pieces apart would
    add spurious prefix spaces with SentencePiece vocabularies); the character offsets of each
    token then say which turn it belongs to and whether it is the assistant's. mask_history keeps
    the loss on the last assistant turn only; that turn then also gets the first claim on
    max_seq_len, and earlier turns are kept newest first (LLaMA-Factory's order).
    template_kwargs go to the template (e.g. date_string for Llama 3's own).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "conversations are rendered with a chat template, and this tokenizer has none; "
            "set model.template (e.g. default) or model.chat_template"
        )
    batch_tools = batch_tools or [None] * len(batch_messages)
    turns = [
        split_turns(tokenizer, messages, tools, template_kwargs) for messages, tools in zip(batch_messages, batch_tools)
    ]
    texts = ["".join(p + r for p, r in pairs) for pairs in turns]
    out: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
    for pairs, tokens in zip(turns, _tokens(tokenizer, texts)):
        segments = _segments(pairs, tokens)  # per turn: (prompt ids, response ids)
        if mask_history:
            segments = segments[::-1]
        pieces: list[tuple[list[int], list[int]]] = []  # per kept turn: (ids, labels)
        used = 0
        for i, (prompt, response) in enumerate(segments):
            if used >= max_seq_len:
                break
            keep_p, keep_r = _budget(len(prompt), len(response), max_seq_len - used)
            prompt, response = prompt[:keep_p], response[:keep_r]
            learned = response if not mask_history or i == 0 else [IGNORE_INDEX] * len(response)
            pieces.append((prompt + response, (prompt if train_on_prompt else [IGNORE_INDEX] * len(prompt)) + learned))
            used += len(prompt) + len(response)
        if mask_history:
            pieces.reverse()
        out["input_ids"].append([t for piece_ids, _ in pieces for t in piece_ids])
        out["labels"].append([y for _, piece_labels in pieces for y in piece_labels])
    return out


def encode_prompts(
    tokenizer: Any, batch_messages: list[list[dict]], max_len: int, batch_tools: list[list[dict] | None] | None = None
) -> list[list[int]]:
    """Conversations that end before the assistant's turn -> the ids a model continues from
    (the template's generation prompt included), as apply_chat_template(add_generation_prompt=True) gives them.

    A prompt longer than max_len is an error, not cut: cutting it would drop the question or the
    template's own markers, and the model would answer something else.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "prompts are rendered with a chat template, and this tokenizer has none; "
            "set model.template (e.g. default) or model.chat_template"
        )
    texts = []
    for messages, tools in zip(batch_messages, batch_tools or [None] * len(batch_messages)):
        messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
        tools = (json.loads(tools) if isinstance(tools, str) else tools) or None
        _check_tools_shown(tokenizer, tools)
        texts.append(render(tokenizer, messages, tools, True, {}))
    ids = [t.ids for t in _tokens(tokenizer, texts)]
    for prompt in ids:
        if len(prompt) > max_len:
            raise DataError(
                f"the prompt has {len(prompt)} tokens, more than the {max_len} that data.max_seq_len "
                "leaves after stage.max_new_tokens; raise max_seq_len or shorten the prompt"
            )
    return ids


class _Tokens:
    """One text's token ids, and which token a character position starts.

    A fast tokenizer's Rust encoding is asked for the few turn boundaries directly: converting every
    token's offsets into Python tuples to search them cost a tenth of the tokenizing time.
    """

    def __init__(
        self, ids: list[int], text_len: int, encoding: Any = None, offsets: list[tuple[int, int]] | None = None
    ):
        self.ids, self._len, self._encoding = ids, text_len, encoding
        self._starts = [start for start, _ in offsets] if offsets is not None else None

    def first_at(self, pos: int, lo: int = 0) -> int:
        """The index of the first token that starts at or after character `pos` (len(ids) when none)."""
        if self._starts is not None:
            return bisect.bisect_left(self._starts, pos, lo=lo)
        for p in range(pos, self._len):  # a character no token covers (a normalizer dropped it): look further on
            t = self._encoding.char_to_token(p)  # the first token covering p
            if t is not None:
                return t + 1 if self._encoding.token_to_chars(t)[0] < pos else t
        return len(self.ids)


def _tokens(tokenizer: Any, texts: list[str]) -> list[_Tokens]:
    """Each text tokenized whole, without special tokens added.

    A fast tokenizer's Rust backend is called directly: transformers' own wrapper would convert every
    encoding into Python lists once more, a third of the cost of tokenizing here.
    """
    if not texts:
        return []
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch"):
        return [
            _Tokens(e.ids, len(t), encoding=e)
            for t, e in zip(texts, backend.encode_batch(texts, add_special_tokens=False))
        ]
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return [
        _Tokens(ids, len(t), offsets=offsets) for t, ids, offsets in zip(texts, enc["input_ids"], enc["offset_mapping"])
    ]


def _segments(pairs: list[tuple[str, str]], tokens: _Tokens) -> list[tuple[list[int], list[int]]]:
    """Assign each token, by the character where it starts, to its turn's prompt or response."""
    ids = tokens.ids
    segments, pos, i = [], 0, 0
    for n, (prompt, response) in enumerate(pairs):
        r = tokens.first_at(pos + len(prompt), lo=i)
        pos += len(prompt) + len(response)
        j = len(ids) if n == len(pairs) - 1 else tokens.first_at(pos, lo=r)
        segments.append((ids[i:r], ids[r:j]))
        i = j
    return segments


def _common_prefix_len(a: str, b: str) -> int:
    """len(os.path.commonprefix([a, b])) at C speed: usually a is a prefix of b outright."""
    if b.startswith(a):
        return len(a)
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo
