"""Verifiable rewards for the RL stages: Python functions that score generated responses.

A reward function takes keyword arguments and returns one float per completion:

    def my_reward(prompts, completions, references, **kwargs) -> list[float]: ...

``prompts`` are the last user turns, ``completions`` the decoded responses, ``references`` the
dataset's answers (None for a row without one). A config names it as a built-in (``exact_match``,
``number_match``, ``regex``), ``package.module:function`` or ``path/to/file.py:function``; its
``kwargs`` are passed along (``regex`` takes ``pattern``).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from typing import Any

from rayft_core.errors import UserInputError
from rayft_core.plugins import is_reference, load_object, split_reference
from rayft_core.stage_config import RewardFunction

ARGUMENTS = ("prompts", "completions", "references")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
BUILTINS: dict[str, Callable[..., list[float]]] = {}  # the built-in reward functions, by name


def builtin(fn: Callable[..., list[float]]) -> Callable[..., list[float]]:
    """Register ``fn`` as a built-in reward function under its name (a new one is one decorated function here)."""
    BUILTINS[fn.__name__] = fn
    return fn


@builtin
def exact_match(completions: list[str], references: list[str | None], **_: Any) -> list[float]:
    """1 where the completion, stripped, is the reference, stripped."""
    return [float(r is not None and c.strip() == r.strip()) for c, r in zip(completions, references)]


@builtin
def number_match(completions: list[str], references: list[str | None], **_: Any) -> list[float]:
    """1 where the first number in the completion equals the last number in the reference (GSM8K's answer)."""
    out = []
    for c, r in zip(completions, references):
        got, want = _NUMBER.findall(c), _NUMBER.findall(r or "")
        out.append(float(bool(got and want) and float(got[0]) == float(want[-1])))
    return out


@builtin
def regex(completions: list[str], pattern: str, **_: Any) -> list[float]:
    """1 where ``pattern`` matches somewhere in the completion (a format reward)."""
    compiled = re.compile(pattern)
    return [float(compiled.search(c) is not None) for c in completions]


def load_function(name: str) -> Callable[..., list[float]]:
    """A built-in by name, or 'module:function', or 'file.py:function'."""
    if name in BUILTINS:
        return BUILTINS[name]
    if not is_reference(name):
        raise UserInputError(
            f"reward function {name!r}: name a built-in ({', '.join(BUILTINS)}), "
            "'package.module:function' or 'path/to/file.py:function'"
        )
    fn = load_object(name, "reward function")
    if not callable(fn):
        raise UserInputError(
            f"reward function {name!r}: {split_reference(name)[0]} has no function {name.rpartition(':')[2]!r}"
        )
    return fn


def _accepts(fn: Callable, name: str) -> bool:
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class Rewards:
    """The configured reward functions, each checked once: its arguments, and on every call its output."""

    def __init__(self, specs: list[RewardFunction]):
        self.specs = specs
        self.functions = [load_function(s.function) for s in specs]
        for spec, fn in zip(specs, self.functions):
            try:
                params = inspect.signature(fn).parameters
            except (TypeError, ValueError):
                continue
            has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
            unknown = [k for k in spec.kwargs if k not in params and not has_var_kw]
            if unknown:
                raise UserInputError(
                    f"reward function {spec.function!r}: it takes no argument {unknown[0]!r} "
                    f"(its arguments: {', '.join(params)})"
                )
            if not _accepts(fn, "completions"):
                raise UserInputError(
                    f"reward function {spec.function!r}: it must take `completions` (and may take "
                    f"{', '.join(a for a in ARGUMENTS if a != 'completions')} or **kwargs)"
                )
            required = [
                n
                for n, p in params.items()
                if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                and n not in ARGUMENTS
                and n not in spec.kwargs
            ]
            if required:
                raise UserInputError(
                    f"reward function {spec.function!r}: its argument {required[0]!r} has no value; "
                    "give it in the function's kwargs"
                )

    @property
    def names(self) -> list[str]:
        return [s.function.rpartition(":")[2] or s.function for s in self.specs]

    def read_references(self) -> bool:
        """Whether any function reads the dataset's reference answers (names `references` among its arguments)."""
        return any("references" in inspect.signature(fn).parameters for fn in self.functions)

    def __call__(self, prompts: list[str], completions: list[str], references: list[str | None]) -> list[list[float]]:
        """Each function's scores (unweighted), one list per function."""
        given = {"prompts": prompts, "completions": completions, "references": references}
        out = []
        for spec, fn in zip(self.specs, self.functions):
            args = {k: v for k, v in given.items() if _accepts(fn, k)}
            scores = list(fn(**args, **spec.kwargs))
            if len(scores) != len(completions) or not all(
                isinstance(x, (int, float)) and math.isfinite(x) for x in scores
            ):
                raise UserInputError(
                    f"reward function {spec.function!r} must return one finite number per completion "
                    f"({len(completions)}); it returned {scores!r:.200}"
                )
            out.append([float(x) for x in scores])
        return out
