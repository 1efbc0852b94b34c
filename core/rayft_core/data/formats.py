"""Align every input format to one standard row that every stage consumes:

    {"text": str}                                                    # text (pre-training)
    {"messages": [...], "tools": [...] | None}                       # conversation: the last message is the assistant's
    {"messages": [...], "tools": ..., "chosen": msg, "rejected": msg}  # pair (preference stages)
    {"messages": [...], "tools": ..., "kto_tag": bool}               # tagged (KTO): the last message is judged
    {"messages": [...], "tools": ...}                                # prompt (RL): may end with the user's turn

Which one a run gets is its stage's data shape (rayft_core.stage_config).

Messages are Hugging Face chat messages: {"role": "system"|"user"|"assistant"|"tool", "content": str},
an assistant tool call carrying "tool_calls" [{"type": "function", "function": {"name", "arguments"}}].
Tools are OpenAI-style function descriptions, as chat templates take them.

Formats and their column/tag names follow LLaMA-Factory's data spec (alpaca, sharegpt, openai), so a
dataset_info.json written for it reads unchanged. The openai format also reads OpenAI's own shapes: the
"developer" role (the system role's successor), assistant messages carrying "tool_calls" (content null),
and one tool message per call of a parallel tool call. A row that cannot be used raises ``RowError``
with a reason (counted per reason in the run's report) and a message naming its file and row.
"""

from __future__ import annotations

import json
from typing import Any

from rayft_core.config import DatasetSpec
from rayft_core.data.text import surrogate_path
from rayft_core.errors import UserInputError
from rayft_core.stage_base import PROMPT, TEXT, StageSection


class DataError(UserInputError):
    """Data that cannot be used; the message names the file (and row) and what is wrong."""


class RowError(DataError):
    """One unusable row. ``reason`` is a short category for the bad-row report."""

    def __init__(self, where: str, reason: str, detail: str):
        self.reason = reason
        # The message goes into an Arrow column of errors, which takes only valid UTF-8: a lone
        # surrogate quoted from the row (a column name, say) is written as its escape instead.
        message = f"{where}: {reason}: {detail}".encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(message)


SOURCE_KEYS = ("path", "__row__")  # where a row came from, set by the reader; not data

_TAG_DEFAULTS = {  # format -> LLaMA-Factory's default tags
    "sharegpt": {
        "role_tag": "from",
        "content_tag": "value",
        "user_tag": "human",
        "assistant_tag": "gpt",
        "observation_tag": "observation",
        "function_tag": "function_call",
        "system_tag": "system",
    },
    "openai": {
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
        "observation_tag": "tool",
        "function_tag": "function_call",
        "system_tag": "system",
    },
}


def where(row: dict) -> str:
    """'file: row N' when the reader recorded it, else the row itself, shortened."""
    if "__row__" in row:
        return f"{row.get('path', '<rows>')}: row {row['__row__']}"
    data = {k: v for k, v in row.items() if k not in SOURCE_KEYS}
    return f"row {json.dumps(data, ensure_ascii=False, default=str)[:160]}"


def align_row(row: dict, spec: DatasetSpec, stage: StageSection) -> dict:
    """One raw row of ``spec``'s dataset -> the standard row of ``stage``'s data shape."""
    aligned = _align(row, spec, stage)
    _check_text(row, aligned)
    return aligned


def _align(row: dict, spec: DatasetSpec, stage: StageSection) -> dict:
    fmt = spec.format or "alpaca"
    if fmt == "text":
        return {"text": _text(row, spec.columns.prompt or "text")}
    if fmt == "alpaca":
        if stage.data == TEXT:  # LLaMA-Factory pre-trains on the prompt column of alpaca-shaped rows
            return {"text": _text(row, spec.columns.prompt or "instruction", row.get(spec.columns.query))}
        return _align_alpaca(row, spec, prompt_only_ok=stage.data == PROMPT)
    if stage.data == TEXT:
        raise RowError(
            where(row), "wrong format", f"stage {stage.name} trains on text; {fmt} conversations need a chat stage"
        )
    return _align_sharegpt(row, spec, fmt, prompt_only_ok=stage.data == PROMPT)


def _check_text(row: dict, aligned: dict) -> None:
    """Every string of the aligned row must encode as UTF-8. JSON can spell a lone surrogate (half of a
    UTF-16 pair, "\\ud800"), which Python decodes into a str that is not text: the tokenizer raises
    TypeError on it and Arrow refuses it, either of which would end the Ray task and the run."""
    found = surrogate_path(aligned)
    if found is None:
        return
    # Name the raw field; a surrogate spelled inside JSON text (a tools column, a function_call turn)
    # appears only once parsed, so then its place in the aligned row is named.
    keys = surrogate_path({k: v for k, v in row.items() if k not in SOURCE_KEYS}) or found
    field = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys).removeprefix(".")
    raise RowError(
        where(row),
        "invalid text",
        f'{field} holds a lone surrogate (such as JSON "\\ud800"), '
        "which is not a character and cannot be encoded as UTF-8",
    )


def _text(row: dict, column: str, extra: Any = None) -> str:
    text = row.get(column)
    if column not in row:
        raise RowError(where(row), "missing column", f"no {column!r} column (columns: {_columns(row)})")
    if not isinstance(text, str):
        raise RowError(where(row), "wrong type", f"{column!r} must be a string, got {type(text).__name__}")
    if isinstance(extra, str) and extra:
        text += "\n" + extra
    if not text.strip():
        raise RowError(where(row), "empty turn", f"{column!r} is empty")
    return text


def _columns(row: dict) -> str:
    return ", ".join(sorted(k for k in row if k not in SOURCE_KEYS)) or "none"


def _string(row: dict, column: str, what: str, required: bool = True) -> str | None:
    value = row.get(column)
    if value is None:
        if required:
            raise RowError(where(row), "missing column", f"no {what} column {column!r} (columns: {_columns(row)})")
        return None
    if not isinstance(value, str):
        raise RowError(
            where(row), "wrong type", f"{what} column {column!r} must be a string, got {type(value).__name__}"
        )
    return value


def _nonempty(row: dict, text: str, what: str) -> str:
    if not text.strip():
        raise RowError(where(row), "empty turn", f"the {what} is empty")
    return text


def _common(row: dict, spec: DatasetSpec) -> tuple[list[dict], list[dict] | None]:
    """The system message (as a list of 0 or 1 messages) and the tools of a row."""
    system = _string(row, spec.columns.system, "system", required=False)
    return ([{"role": "system", "content": system}] if system else []), _tools(row, spec.columns.tools)


def _tools(row: dict, column: str) -> list[dict] | None:
    value = row.get(column)
    if value in (None, "", "[]", []):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError) as e:
            raise RowError(where(row), "invalid JSON", f"tools column {column!r} is not valid JSON ({e})") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise RowError(where(row), "wrong type", f"tools column {column!r} must be a list of function descriptions")
    # glaive/LLaMA-Factory rows list bare functions; chat templates take OpenAI's {"type": "function", ...}
    return [t if t.get("type") == "function" else {"type": "function", "function": t} for t in value]


def _feedback(row: dict, spec: DatasetSpec) -> dict:
    """KTO's boolean tag, when the spec names a column for it."""
    if spec.columns.kto_tag is None:
        return {}
    tag = row.get(spec.columns.kto_tag)
    if not isinstance(tag, bool):
        raise RowError(
            where(row), "wrong type", f"KTO column {spec.columns.kto_tag!r} must be true or false, got {tag!r}"
        )
    return {"kto_tag": tag}


def _align_alpaca(row: dict, spec: DatasetSpec, prompt_only_ok: bool = False) -> dict:
    """instruction (+ input) -> user; output -> assistant; history [[q, a], ...] before them.
    prompt_only_ok: the output may be absent (RL stages generate their own answers)."""
    c = spec.columns
    messages, tools = _common(row, spec)
    history = row.get(c.history) or []
    if not isinstance(history, list):
        raise RowError(where(row), "wrong type", f"{c.history!r} must be a list of [query, response] pairs")
    for turn in history:
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(x, str) for x in turn)):
            raise RowError(where(row), "wrong type", f"{c.history!r} must be a list of [query, response] string pairs")
        messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    prompt = _string(row, c.prompt or "instruction", "prompt")
    query = _string(row, c.query, "query", required=False)
    messages.append({"role": "user", "content": _nonempty(row, prompt + ("\n" + query if query else ""), "prompt")})
    out = {"messages": messages, "tools": tools}
    if spec.ranking:
        chosen, rejected = row.get(c.chosen), row.get(c.rejected)
        if chosen is None and rejected is None and isinstance(row.get(c.response), list) and len(row[c.response]) == 2:
            chosen, rejected = row[c.response]  # older LLaMA-Factory files: output = [chosen, rejected]
        for name, value in (("chosen", chosen), ("rejected", rejected)):
            if not isinstance(value, str):
                raise RowError(
                    where(row),
                    "missing column" if value is None else "wrong type",
                    f"preference rows need string {name!r} answers (column {getattr(c, name)!r})",
                )
            out[name] = {"role": "assistant", "content": _nonempty(row, value, f"{name} answer")}
        return out
    if prompt_only_ok and row.get(c.response) is None:
        return out
    response = _nonempty(row, _string(row, c.response, "response"), "response")
    messages.append({"role": "assistant", "content": response})
    return {**out, **_feedback(row, spec)}


def _align_sharegpt(row: dict, spec: DatasetSpec, fmt: str, prompt_only_ok: bool = False) -> dict:
    """Turns of {role_tag: speaker, content_tag: text}: system?, then user/observation and
    assistant/function_call alternating (LLaMA-Factory's rule), ending with the assistant (or, for
    preference rows, with the prompt: the answers are the chosen and rejected columns)."""
    tags = {**_TAG_DEFAULTS[fmt], **spec.tags.model_dump(exclude_none=True)}
    turns = row.get(spec.columns.messages)
    if turns is None:
        raise RowError(
            where(row),
            "missing column",
            f"no turns column {spec.columns.messages!r} (columns: {_columns(row)}); set columns.messages",
        )
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise RowError(where(row), "wrong type", f"{spec.columns.messages!r} must be a list of turns (objects)")
    messages, tools = _common(row, spec)
    # OpenAI's "developer" role is the system role's successor (it replaces it for o1 and later models)
    system_roles = (tags["system_tag"], "developer") if fmt == "openai" else (tags["system_tag"],)
    if turns and turns[0].get(tags["role_tag"]) in system_roles:
        messages = [{"role": "system", "content": _turn_text(row, turns[0], tags)}]
        turns = turns[1:]
    if not turns:
        raise RowError(where(row), "empty turn", "the conversation has no turns")
    prompt_side = (tags["user_tag"], tags["observation_tag"])
    answer_side = (tags["assistant_tag"], tags["function_tag"])
    sides = 0  # turns alternate prompt side / answer side; the number of sides seen so far
    for i, turn in enumerate(turns):
        speaker = turn.get(tags["role_tag"])
        # OpenAI answers a parallel tool call with one tool message per call: consecutive tool messages
        # are one observation side (templates group them into one turn)
        parallel_result = (
            fmt == "openai"
            and speaker == tags["observation_tag"]
            and i > 0
            and turns[i - 1].get(tags["role_tag"]) == speaker
        )
        if not parallel_result:
            expected = prompt_side if sides % 2 == 0 else answer_side
            if speaker not in expected:
                raise RowError(
                    where(row),
                    "roles out of order",
                    f"turn {i} has {tags['role_tag']}={speaker!r}, expected one of {list(expected)} "
                    f"({'user/observation' if sides % 2 == 0 else 'assistant/function_call'} turns "
                    "alternate with the other kind); set tags.* if the dataset names them differently",
                )
            sides += 1
        messages.append(_message(row, turn, speaker, tags))
    out: dict[str, Any] = {"messages": messages, "tools": tools}
    if spec.ranking:
        return {**out, **_ranked_answers(row, spec, tags, sides)}
    if sides % 2 == 1 and not prompt_only_ok:
        raise RowError(where(row), "roles out of order", "the conversation must end with an assistant turn")
    return {**out, **_feedback(row, spec)}


def _ranked_answers(row: dict, spec: DatasetSpec, tags: dict, sides: int) -> dict:
    """A preference row's chosen and rejected assistant turns, after a conversation that ends with the prompt."""
    if sides % 2 == 0:
        raise RowError(
            where(row),
            "roles out of order",
            "a preference conversation must end with the prompt "
            "(user turn); the answers go in the chosen and rejected columns",
        )
    out = {}
    for name in ("chosen", "rejected"):
        answer = row.get(getattr(spec.columns, name))
        if not isinstance(answer, dict) or answer.get(tags["role_tag"]) not in (
            tags["assistant_tag"],
            tags["function_tag"],
        ):
            raise RowError(
                where(row),
                "missing column" if answer is None else "wrong type",
                f"preference rows need a {name!r} assistant turn (column {getattr(spec.columns, name)!r})",
            )
        out[name] = _message(row, answer, answer[tags["role_tag"]], tags)
    return out


def _turn_text(row: dict, turn: dict, tags: dict) -> str:
    text = turn.get(tags["content_tag"])
    if isinstance(text, list):  # OpenAI's content parts: [{"type": "text", "text": ...}, ...]
        text = _text_parts(row, text)
    if not isinstance(text, str):
        raise RowError(
            where(row),
            "wrong type" if text is not None else "missing column",
            f"a turn's {tags['content_tag']!r} must be a string, got {text!r:.60}",
        )
    return text


def _text_parts(row: dict, parts: list) -> str:
    """OpenAI's list of content parts -> their text, joined. rayft trains on text: an image or audio part is a
    bad row, not a silently shortened turn."""
    if not all(isinstance(p, dict) for p in parts):
        raise RowError(where(row), "wrong type", 'content parts must be objects such as {"type": "text", "text": ...}')
    other = sorted({str(p.get("type")) for p in parts if p.get("type") != "text"})
    if other:
        raise RowError(
            where(row), "unsupported content", f"rayft trains on text; this turn has {', '.join(other)} parts"
        )
    texts = [p.get("text") for p in parts]
    if not all(isinstance(t, str) for t in texts):
        raise RowError(where(row), "wrong type", "a text part's 'text' must be a string")
    return "".join(texts)


def _message(row: dict, turn: dict, speaker: str, tags: dict) -> dict:
    if speaker == tags["assistant_tag"] and turn.get("tool_calls"):
        return _tool_call_message(row, turn, tags)
    text = _turn_text(row, turn, tags)
    if speaker == tags["function_tag"]:
        return {"role": "assistant", "content": "", "tool_calls": _tool_calls(row, text)}
    if speaker == tags["observation_tag"]:
        return {"role": "tool", "content": text}
    role = "user" if speaker == tags["user_tag"] else "assistant"
    return {"role": role, "content": _nonempty(row, text, f"{role} turn")}


def _tool_call_message(row: dict, turn: dict, tags: dict) -> dict:
    """An OpenAI assistant message that calls tools -> the tool-call turn a sharegpt function_call turn
    becomes. OpenAI's shape: {"role": "assistant", "content": null (or text said before the calls),
    "tool_calls": [{"id": ..., "type": "function", "function": {"name": ..., "arguments": JSON text}}]};
    the ids are dropped, as in the standard row (chat templates match results to calls by order)."""
    content = turn.get(tags["content_tag"])
    if content is not None and not isinstance(content, str):
        raise RowError(
            where(row),
            "wrong type",
            f"a tool-calling turn's {tags['content_tag']!r} must be a string or null, got {content!r:.60}",
        )
    calls = turn["tool_calls"]
    if not (
        isinstance(calls, list) and all(isinstance(c, dict) and isinstance(c.get("function"), dict) for c in calls)
    ):
        raise RowError(
            where(row),
            "wrong type",
            'tool_calls must be a list of {"type": "function", "function": {"name": ..., "arguments": ...}}',
        )
    return {"role": "assistant", "content": content or "", "tool_calls": _calls(row, [c["function"] for c in calls])}


def _tool_calls(row: dict, text: str) -> list[dict]:
    """A function_call turn's JSON ({"name", "arguments"} or a list of them) -> chat-template tool calls."""
    try:
        calls = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise RowError(where(row), "invalid JSON", f"a function_call turn must hold JSON ({e})") from None
    return _calls(row, calls if isinstance(calls, list) else [calls])


def _calls(row: dict, calls: list) -> list[dict]:
    """[{"name", "arguments"}, ...] -> chat-template tool calls, arguments given as JSON text parsed."""
    if not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls):
        raise RowError(where(row), "wrong type", 'a tool call must be {"name": ..., "arguments": {...}}')
    out = []
    for c in calls:
        args = c.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except (json.JSONDecodeError, RecursionError):
                pass  # keep the string: some tools take free text
        out.append({"type": "function", "function": {"name": c["name"], "arguments": args}})
    return out
