"""Multi-turn, tool-using rollouts (`stage.tools`): the model answers, rayft runs the tools its answer calls,
appends their results as tool turns, and the model continues, up to `stage.max_turns` turns.

A trajectory is the prompt followed by the model's turns and the tool turns between them, kept as token ids
throughout (the model's own tokens are never re-tokenized): a tool turn's ids are the text the chat template
renders for the tool message, from the end of the model's turn to the next generation prompt. Only the model's
tokens are trained on (``Trajectory.trained``); the reward reads the whole trajectory.

Tool calls are read in the formats chat templates teach: ``<tool_call>{json}</tool_call>`` blocks (Qwen,
Hermes), ``[TOOL_CALLS] [...]`` (Mistral), or an answer that is one JSON call (Llama 3.x). A call that cannot be
read, names no tool, or fails gets the error as its result, for the model to see: a tool never fails the run.

Every learner worker runs its own trajectories' tools (in threads: the Python tool is a subprocess); every worker
joins every generation round (rayft_core.train.rollout), so the workers agree on the number of rounds.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from rayft_core.data.tokenize import render
from rayft_core.errors import UserInputError
from rayft_core.plugins import is_reference, load_object
from rayft_core.train.sandbox import run_python

TURN_SEED_STEP = 104_729  # the seed step between one turn's sampling and the next

PYTHON = {
    "type": "function",
    "function": {
        "name": "python",
        "description": "Run a Python program in a sandbox (no network, no files outside its own directory) and "
        "see what it prints, then any error.",
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "The program; print what you want to see."}},
            "required": ["code"],
        },
    },
}
PYTHON_OPTIONS = ("timeout", "memory_mb", "max_file_mb")


@dataclass
class Call:
    name: str
    arguments: Any
    error: str | None = None  # why the call could not be read; its result is this error


class Tools:
    """The tools of `stage.tools`: what the model is shown of them, and how a call runs."""

    def __init__(self, specs: list[Any], max_output: int = 2000):
        self.max_output = max_output
        self.functions: dict[str, Callable[..., Any]] = {}
        self.descriptions: list[dict] = []
        for i, spec in enumerate(specs):
            where = f"stage.tools[{i}]"
            if spec.function == "python":
                unknown = sorted(set(spec.kwargs) - set(PYTHON_OPTIONS))
                if unknown:
                    raise UserInputError(
                        f"{where}.kwargs: the python tool takes {', '.join(PYTHON_OPTIONS)}, not {unknown[0]!r}"
                    )
                fn, description = (lambda code, _o=dict(spec.kwargs): run_python(code, **_o).observation), PYTHON
            else:
                fn, description = _user_tool(spec, where)
            name = description["function"]["name"]
            if name in self.functions:
                raise UserInputError(f"{where}: a second tool named {name!r}")
            self.functions[name] = fn
            self.descriptions.append(description)

    def call(self, call: Call) -> str:
        """The call's result as the model will read it; any failure is the result, never an exception."""
        if call.error:
            result = call.error
        elif call.name not in self.functions:
            result = f"Error: there is no tool {call.name!r}; the tools are {', '.join(self.functions)}"
        elif not isinstance(call.arguments, dict):
            result = f"Error: the arguments of {call.name!r} must be a JSON object, got {call.arguments!r:.100}"
        else:
            try:
                out = self.functions[call.name](**call.arguments)
                result = out if isinstance(out, str) else json.dumps(out, default=str)
            except Exception as e:  # the model's call, not the run, failed: it sees why
                result = f"{type(e).__name__}: {e}"
        if len(result) <= self.max_output:
            return result
        head, tail = self.max_output // 2, self.max_output - self.max_output // 2  # an error is at the end
        return f"{result[:head]}\n[{len(result) - self.max_output} characters cut]\n{result[-tail:]}"


def _user_tool(spec: Any, where: str) -> tuple[Callable[..., Any], dict]:
    from transformers.utils import get_json_schema

    if spec.kwargs:
        raise UserInputError(f"{where}.kwargs: only the python tool takes kwargs; {spec.function} takes none")
    if not is_reference(spec.function):
        raise UserInputError(
            f"{where}.function: python (the built-in sandbox) or 'package.module:function' or "
            f"'path/to/file.py:function', got {spec.function!r}"
        )
    fn = load_object(spec.function, "tool")
    if not callable(fn):
        raise UserInputError(f"{where}.function: {spec.function} is not a function")
    try:  # what the model is shown: from the type hints and the docstring's Args section
        return fn, get_json_schema(fn)
    except Exception as e:
        raise UserInputError(
            f"{where}.function: {spec.function} cannot be described to the model ({e}); a tool needs a type hint "
            f"on each argument and a docstring with an Args: section describing them "
            f"(its signature: {inspect.signature(fn)})"
        ) from None


_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)
_MISTRAL = re.compile(r"\[TOOL_CALLS\]\s*(.*)", re.S)


def parse_calls(text: str) -> list[Call]:
    """The tool calls in a model's turn (its text, end marker removed), in any of the module's formats."""
    tagged = _TAGGED.findall(text)
    if tagged:
        return [_call(body) for body in tagged]
    mistral = _MISTRAL.search(text)
    body = mistral.group(1) if mistral else text.strip()
    if not (body.startswith("{") or body.startswith("[")):
        return []
    try:
        value = json.loads(body)
    except json.JSONDecodeError as e:
        return [Call("", None, f"Error: the tool call is not valid JSON ({e})")] if mistral else []
    values = value if isinstance(value, list) else [value]
    if not mistral and not all(isinstance(v, dict) and "name" in v for v in values):
        return []  # an answer that happens to be JSON, not a call
    return [_call(v) for v in values]


def _call(body: str | Any) -> Call:
    try:
        value = json.loads(body) if isinstance(body, str) else body
    except json.JSONDecodeError as e:
        return Call("", None, f"Error: the tool call is not valid JSON ({e})")
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return Call("", None, 'Error: a tool call is {"name": ..., "arguments": {...}}')
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):  # OpenAI's style: the arguments as JSON text
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            pass  # kept as text: Tools.call says it is not an object
    return Call(value["name"], arguments)


@dataclass
class Trajectory:
    """One sampled answer: the model's turns and the tool turns between them, and which ids are the model's."""

    prompt: list[int]
    ids: list[int] = field(default_factory=list)
    trained: list[bool] = field(default_factory=list)
    last: list[int] = field(default_factory=list)  # the model's latest turn
    turns: int = 0
    calls: int = 0

    def add(self, ids: list[int], by_model: bool) -> None:
        self.ids += ids
        self.trained += [by_model] * len(ids)
        if by_model:
            self.last, self.turns = list(ids), self.turns + 1


class Agent:
    """The loop of one worker's trajectories (see the module)."""

    def __init__(self, tokenizer: Any, tools: Tools, stop_ids: tuple[int, ...], max_turns: int, max_len: int):
        self.tokenizer, self.tools, self.stop_ids = tokenizer, tools, set(stop_ids)
        self.max_turns, self.max_len = max_turns, max_len  # max_len: prompt + trajectory + the next turn's room
        self.pool = ThreadPoolExecutor(max_workers=max(4, os.cpu_count() or 1), thread_name_prefix="rayft-tool")

    def rollout(
        self,
        prompts: list[list[int]],
        n: int,
        seed: int,
        generate: Callable[[list[list[int]], int, int], list[list[list[int]]]],
        anyone: Callable[[bool], bool],
        room: int,
    ) -> list[list[Trajectory]]:
        """n trajectories per prompt. ``generate(prompts, n, seed)`` answers on the engines (every worker calls it
        in every round); ``anyone(flag)`` is whether any worker still has a trajectory going; ``room``: the tokens
        a turn may take (stage.max_new_tokens)."""
        groups = [[Trajectory(list(p)) for _ in range(n)] for p in prompts]
        for group, answers in zip(groups, generate(prompts, n, seed)):
            for t, ids in zip(group, answers):
                t.add(ids, by_model=True)
        going = [t for group in groups for t in group]
        for turn in range(1, self.max_turns):
            going = self._run_tools(going, room)
            if not anyone(bool(going)):
                break
            answers = generate([t.prompt + t.ids for t in going], 1, seed + TURN_SEED_STEP * turn)
            for t, ids in zip(going, answers):
                t.add(ids[0], by_model=True)
        return groups

    def _run_tools(self, trajectories: list[Trajectory], room: int) -> list[Trajectory]:
        """Run the calls of each trajectory's last turn and append their results; returns those that go on (a
        turn that ended by itself with calls, whose results and a next turn fit in max_len)."""
        calls = [self._calls(t) for t in trajectories]
        results = iter(self.pool.map(self.tools.call, [c for cs in calls for c in cs]))  # all at once, in order
        going = []
        for t, made in zip(trajectories, calls):
            if not made:
                continue
            t.calls += len(made)
            observation = self.observation_ids(made, [next(results) for _ in made], t.last[-1])
            if len(t.prompt) + len(t.ids) + len(observation) + room <= self.max_len:
                t.add(observation, by_model=False)
                going.append(t)
        return going

    def _calls(self, t: Trajectory) -> list[Call]:
        if not t.last or t.last[-1] not in self.stop_ids:  # cut at max_new_tokens: the turn did not end
            return []
        return parse_calls(self.tokenizer.decode(t.last[:-1], skip_special_tokens=False))

    def observation_ids(self, calls: list[Call], results: list[str], end_id: int) -> list[int]:
        """The ids of the tool turn after a model turn that made ``calls`` and ended with ``end_id``: what the chat
        template renders after that turn's end marker, up to and including the next generation prompt."""
        message = {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": c.name or "unknown", "arguments": _as_dict(c.arguments)}}
                for c in calls
            ],
        }
        skeleton = [{"role": "user", "content": "?"}, message]
        tools = self.tools.descriptions
        before = render(self.tokenizer, skeleton, tools, False)
        answered = [{"role": "tool", "name": c.name or "unknown", "content": r} for c, r in zip(calls, results)]
        after = render(self.tokenizer, skeleton + answered, tools, True)
        if not after.startswith(before):
            raise UserInputError(
                "stage.tools: this chat template renders a tool result by changing the turns before it, and a "
                "trajectory appends results to the model's own tokens; use a template that appends (qwen, llama3)"
            )
        end = self.tokenizer.decode([end_id], skip_special_tokens=False)
        tail = before[before.rfind(end) + len(end) :] if end and end in before else ""
        return self.tokenizer(tail + after[len(before) :], add_special_tokens=False)["input_ids"]


def _as_dict(arguments: Any) -> dict:
    return arguments if isinstance(arguments, dict) else {}
