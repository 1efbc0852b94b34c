"""Align every input format to one standard row that each stage consumes:

    {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}  # ends with the assistant
    {"text": str}                                                                # pre-training

A malformed row raises ``DataError`` naming its source file and row, never dropped silently.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from rayft_core.errors import UserInputError


class DataError(UserInputError):
    """A row that cannot be used; the message names its file and row and what is wrong."""


_SOURCE_KEYS = ("path", "__row__")  # where a row came from, set by the reader; not data


def _where(row: dict, index: int) -> str:
    """'file: row N' when the reader recorded it, else the row itself, shortened."""
    if "__row__" in row:
        return f"{row.get('path', '<rows>')}: row {row['__row__']}"
    return f"row {index} {json.dumps(_data(row), ensure_ascii=False, default=str)[:160]}"


def _data(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in _SOURCE_KEYS}


def align_alpaca(row: dict, index: int = 0) -> dict:
    """instruction (+ input) -> user, output -> assistant; optional system and history [[q, a], ...]."""
    instruction, output = row.get("instruction"), row.get("output")
    if not isinstance(instruction, str) or not isinstance(output, str):
        raise DataError(f"{_where(row, index)}: alpaca rows need string 'instruction' and 'output' columns, "
                        f"got keys {sorted(_data(row))}")
    messages = []
    if row.get("system"):
        messages.append({"role": "system", "content": row["system"]})
    for turn in row.get("history") or []:
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2):
            raise DataError(f"{_where(row, index)}: 'history' must be a list of [query, response] pairs")
        messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    prompt = instruction + ("\n" + row["input"] if row.get("input") else "")
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return {"messages": messages}


_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def align_sharegpt(row: dict, index: int = 0) -> dict:
    """conversations: [{"from": human|gpt|system, "value": str}, ...] (also role/content keys)."""
    turns = row.get("conversations", row.get("messages"))
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{_where(row, index)}: sharegpt rows need a non-empty 'conversations' list")
    messages = []
    if row.get("system"):
        messages.append({"role": "system", "content": row["system"]})
    for t in turns:
        speaker = t.get("from", t.get("role"))
        content = t.get("value", t.get("content"))
        role = _SHAREGPT_ROLES.get(speaker)
        if role is None or not isinstance(content, str):
            raise DataError(f"{_where(row, index)}: turn {t!r} needs from in {sorted(_SHAREGPT_ROLES)} and a string value")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{_where(row, index)}: the conversation must end with an assistant (gpt) turn")
    return {"messages": messages}


def align_text(row: dict, index: int = 0, text_column: str = "text") -> dict:
    text = row.get(text_column)
    if not isinstance(text, str):
        raise DataError(f"{_where(row, index)}: text rows need a string {text_column!r} column")
    return {"text": text}


ALIGNERS: dict[str, Callable[..., dict]] = {"alpaca": align_alpaca, "sharegpt": align_sharegpt, "text": align_text}

