"""Verifiable rewards for the RL stages: Python functions that score generated responses.

A reward function takes keyword arguments and returns one float per completion:

    def my_reward(prompts, completions, references, **kwargs) -> list[float]: ...

``prompts`` are the last user turns, ``completions`` the decoded responses, ``references`` the
dataset's answers (None for a row without one). A config names it as a built-in (``exact_match``,
``number_match``, ``regex``, ``http``: a service), ``package.module:function`` or ``path/to/file.py:function``;
its ``kwargs`` are passed along (``regex`` takes ``pattern``, ``http`` its ``url`` and more).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from typing import Any

from rayft_core.errors import UserInputError
from rayft_core.plugins import is_reference, load_object, split_reference
from rayft_core.rl_stage_config import RewardFunction

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
def number_match(completions: list[str], references: list[str | None], which: str = "first", **_: Any) -> list[float]:
    """1 where the completion's first number (``which="last"``: its last, as in a tool-using trajectory, whose
    calls and results come before the answer) equals the last number in the reference (GSM8K's answer)."""
    if which not in ("first", "last"):
        raise UserInputError(f"number_match: which is 'first' or 'last', got {which!r}")
    out = []
    for c, r in zip(completions, references):
        got, want = _NUMBER.findall(c), _NUMBER.findall(r or "")
        out.append(float(bool(got and want) and float(got[0 if which == "first" else -1]) == float(want[-1])))
    return out


@builtin
def regex(completions: list[str], pattern: str, **_: Any) -> list[float]:
    """1 where ``pattern`` matches somewhere in the completion (a format reward)."""
    compiled = re.compile(pattern)
    return [float(compiled.search(c) is not None) for c in completions]


@builtin
def http(
    prompts: list[str],
    completions: list[str],
    references: list[str | None],
    url: str,
    api_key_env: str | None = None,
    batch_size: int = 64,
    timeout: float = 60.0,
    retries: int = 3,
    **_: Any,
) -> list[float]:
    """Scores from a service (a reward model served anywhere): ``batch_size`` answers at a time, POSTed to ``url`` as
    JSON {"prompts": [...], "completions": [...], "references": [...]}; the reply is {"scores": [one number per
    completion]}. The key, if any, is read from the environment variable named ``api_key_env`` (never written in a
    config) and sent as "Authorization: Bearer". A connection error, a timeout (``timeout`` seconds), 429 or a 5xx
    is tried again, up to ``retries`` more times with growing waits; then, or on any other error, the run stops
    saying why: a failed score is never a silent zero."""
    import json
    import os

    headers = {"Content-Type": "application/json"}
    if api_key_env:
        if not os.environ.get(api_key_env):
            raise UserInputError(
                f"reward function http: the environment variable {api_key_env} (api_key_env) is not set"
            )
        headers["Authorization"] = f"Bearer {os.environ[api_key_env]}"
    scores: list[float] = []
    for i in range(0, len(completions), batch_size):
        part = slice(i, i + batch_size)
        body = json.dumps({"prompts": prompts[part], "completions": completions[part], "references": references[part]})
        got = _post(url, body.encode(), headers, timeout, retries)
        batch = got.get("scores") if isinstance(got, dict) else None
        if not isinstance(batch, list) or len(batch) != len(completions[part]):
            raise UserInputError(
                f'reward function http: {url} must answer {{"scores": [...]}} with {len(completions[part])} '
                f"numbers; it answered {json.dumps(got)[:200]}"
            )
        scores += batch
    return scores


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float, retries: int) -> Any:
    """The JSON answer to one POST, tried again on what may pass (see http)."""
    import json
    import time
    import urllib.error
    import urllib.request

    for attempt in range(retries + 1):
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as e:
            if (e.code != 429 and e.code < 500) or attempt == retries:
                detail = e.read()[:200].decode(errors="replace")
                raise UserInputError(f"reward function http: {url} answered {e.code} {e.reason}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            if attempt == retries:
                raise UserInputError(
                    f"reward function http: {url} did not answer after {retries + 1} tries: {getattr(e, 'reason', e)}"
                ) from None
        except json.JSONDecodeError:
            raise UserInputError(f"reward function http: {url} did not answer with JSON") from None
        time.sleep(min(2**attempt, 30))
    raise AssertionError("unreachable: the last try returns or raises")


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
