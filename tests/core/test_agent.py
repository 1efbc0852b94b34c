"""Multi-turn, tool-using rollouts: reading tool calls, running tools, and the loop that appends their results.

The loop is driven here by a scripted policy standing in for the rollout engines (rayft's own generate
interface); the engines and learners run it for real in tests/cluster/test_rlhf_ray.py.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from rayft_core.data import IGNORE_INDEX
from rayft_core.data.templates import TEMPLATES
from rayft_core.data.tokenize import render
from rayft_core.errors import UserInputError
from rayft_core.train.agent import Agent, Call, Tools, parse_calls
from rayft_core.train.rollout import Groups


def _tool(function: str, **kwargs) -> SimpleNamespace:
    return SimpleNamespace(function=function, kwargs=kwargs)


def test_calls_are_read_in_each_templates_format():
    qwen = (
        'Let me compute.\n<tool_call>\n{"name": "python", "arguments": {"code": "print(1)"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}\n</tool_call>'
    )
    assert parse_calls(qwen) == [Call("python", {"code": "print(1)"}), Call("add", {"a": 1, "b": 2})]
    mistral = '[TOOL_CALLS] [{"name": "add", "arguments": {"a": 1, "b": 2}}]'
    assert parse_calls(mistral) == [Call("add", {"a": 1, "b": 2})]
    llama3 = '{"name": "add", "parameters": {"a": 1, "b": 2}}'
    assert parse_calls(llama3) == [Call("add", {"a": 1, "b": 2})]
    # answers that are not calls
    assert parse_calls("The answer is 3.") == []
    assert parse_calls('{"answer": 3}') == []
    # a call that cannot be read is a call whose result says why
    (broken,) = parse_calls("<tool_call>{name: python}</tool_call>")
    assert broken.error.startswith("Error: the tool call is not valid JSON")
    (nameless,) = parse_calls('<tool_call>{"arguments": {}}</tool_call>')
    assert nameless.error == 'Error: a tool call is {"name": ..., "arguments": {...}}'


USER_TOOLS = '''
def add(a: int, b: int) -> int:
    """Add two numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def undocumented(a, b):
    return a + b
'''


def test_tools_run_python_and_user_functions_and_a_failure_is_the_result(tmp_path: Path):
    (tmp_path / "my_tools.py").write_text(USER_TOOLS)
    tools = Tools([_tool("python", timeout=5), _tool(f"{tmp_path}/my_tools.py:add")], max_output=80)
    assert [d["function"]["name"] for d in tools.descriptions] == ["python", "add"]
    add = tools.descriptions[1]["function"]
    assert add["description"] == "Add two numbers."
    assert add["parameters"]["properties"]["a"] == {"type": "integer", "description": "The first number."}

    assert tools.call(Call("python", {"code": "print(6 * 7)"})) == "42\n"
    assert tools.call(Call("add", {"a": 2, "b": 3})) == "5"
    assert tools.call(Call("add", {"a": 2})).startswith("TypeError: add() missing 1 required positional argument")
    assert tools.call(Call("search", {})) == "Error: there is no tool 'search'; the tools are python, add"
    assert tools.call(Call("add", "2, 3")).startswith("Error: the arguments of 'add' must be a JSON object")
    # a long result keeps its start and its end, where an error says what went wrong
    assert (
        tools.call(Call("python", {"code": "print('x' * 100)"}))
        == "x" * 40 + "\n[21 characters cut]\n" + "x" * 39 + "\n"
    )
    failed = tools.call(Call("python", {"code": "print('x' * 100)\n1 / 0"}))
    assert failed.startswith("x" * 40) and failed.endswith("ZeroDivisionError: division by zero\n"), failed


def test_tools_that_cannot_be_used_are_refused_before_training(tmp_path: Path):
    (tmp_path / "my_tools.py").write_text(USER_TOOLS)
    with pytest.raises(UserInputError, match=r"stage.tools\[0\].function: .*undocumented cannot be described"):
        Tools([_tool(f"{tmp_path}/my_tools.py:undocumented")])
    with pytest.raises(UserInputError, match=r"stage.tools\[0\].kwargs: the python tool takes timeout"):
        Tools([_tool("python", timeot=5)])
    with pytest.raises(UserInputError, match=r"stage.tools\[1\]: a second tool named 'python'"):
        Tools([_tool("python"), _tool("python")])
    with pytest.raises(UserInputError, match=r"stage.tools\[0\].function: python \(the built-in sandbox\)"):
        Tools([_tool("calculator")])


@pytest.fixture
def qwen_tokenizer(tokenizer):
    tokenizer = copy.deepcopy(tokenizer)  # the session's tiny tokenizer, with the qwen template
    tokenizer.chat_template = TEMPLATES["qwen"]
    return tokenizer


def _call_text(code: str) -> str:
    return '<tool_call>\n{"name": "python", "arguments": ' + json.dumps({"code": code}) + "}\n</tool_call>"


def test_a_trajectory_runs_each_call_in_the_sandbox_and_masks_the_results(qwen_tokenizer):
    tok = qwen_tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    tools = Tools([_tool("python", timeout=10)])
    user = [{"role": "user", "content": "What is 6 times 7?"}]
    prompt = tok(render(tok, user, tools.descriptions, True), add_special_tokens=False)["input_ids"]
    script = [  # the policy's turns, in order: three calls, then the answer
        _call_text("print(6 * 7)"),
        _call_text("import socket\nsocket.create_connection(('127.0.0.1', 80))"),
        _call_text("open('/tmp/rayft-escaped.txt', 'w').write('x')"),
        "The answer is 42.",
    ]
    asked: list[list[list[int]]] = []

    def generate(prompts, n, seed):
        asked.append(prompts)
        turn = len(asked) - 1
        return [[tok(script[turn], add_special_tokens=False)["input_ids"] + [end]] * n for _ in prompts]

    agent = Agent(tok, tools, (end,), max_turns=4, max_len=4096)
    [[trajectory]] = agent.rollout([prompt], 1, seed=0, generate=generate, anyone=lambda f: f, room=64)

    assert (trajectory.turns, trajectory.calls) == (4, 3)
    text = tok.decode(trajectory.ids)
    results = text.split("<tool_response>\n")[1:]
    assert results[0].startswith("42\n\n</tool_response>")  # print's newline, then the template's
    assert "PermissionError: the sandbox does not allow socket." in results[1]
    assert "PermissionError: the sandbox writes only inside its directory, not '/tmp/rayft-escaped.txt'" in results[2]
    assert not Path("/tmp/rayft-escaped.txt").exists()
    # each later turn continues from everything so far: the engines saw the whole trajectory as its prompt
    assert (
        asked[3][0][: len(prompt)] == prompt
        and trajectory.ids[: len(asked[3][0]) - len(prompt)] == (asked[3][0][len(prompt) :])
    )
    # the whole trajectory is what the template renders for the conversation, results as tool turns
    conversation = user + [
        m
        for turn, result in zip(script, results + [None])
        for m in [{"role": "assistant", "content": turn}]
        + ([{"role": "tool", "content": result.split("\n</tool_response>")[0]}] if result else [])
    ]
    assert tok.decode(prompt + trajectory.ids) + "\n" == render(tok, conversation, tools.descriptions, False)
    # trained on: the model's turns exactly, not the results
    groups = Groups([prompt], [[trajectory.ids]], ["q"], [None], trained=[[trajectory.trained]])
    [ids], [labels] = groups.rows()
    model_text = tok.decode([t for t in labels if t != IGNORE_INDEX])
    assert model_text == "".join(turn + "<|im_end|>" for turn in script)
    assert "tool_response" not in model_text and ids == prompt + trajectory.ids


def test_a_trajectory_ends_without_a_call_when_cut_or_out_of_room(qwen_tokenizer):
    tok = qwen_tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    tools = Tools([_tool("python")])
    call = tok(_call_text("print(1)"), add_special_tokens=False)["input_ids"]
    turns = {0: [call + [end], call], 1: [call + [end]]}  # the second answer was cut at max_new_tokens

    def generate(prompts, n, seed):
        return [[list(ids) for ids in turns[0]] for _ in prompts] if n == 2 else [[turns[1][0]] for _ in prompts]

    agent = Agent(tok, tools, (end,), max_turns=3, max_len=4096)
    [[ended, cut]] = agent.rollout([[1, 2, 3]], 2, seed=0, generate=generate, anyone=lambda f: f, room=64)
    assert (ended.turns, ended.calls) == (3, 2) and (cut.turns, cut.calls) == (1, 0)
    assert all(cut.trained)

    tight = Agent(tok, tools, (end,), max_turns=3, max_len=len(call) + 70)  # no room for a result and a turn
    [[t, _]] = tight.rollout([[1, 2, 3]], 2, seed=0, generate=generate, anyone=lambda f: f, room=64)
    assert (t.turns, t.calls) == (1, 1) and all(t.trained)


def test_every_worker_joins_every_round_even_with_nothing_going(qwen_tokenizer):
    tok = qwen_tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    rounds = []

    def generate(prompts, n, seed):
        rounds.append((len(prompts), seed))
        return [[[end]] * n for _ in prompts]

    agent = Agent(tok, Tools([_tool("python")]), (end,), max_turns=3, max_len=4096)
    others_going = iter([True, False])  # another worker's trajectories go on for one more turn
    agent.rollout([[5]], 2, seed=9, generate=generate, anyone=lambda f: f or next(others_going), room=8)
    assert [n for n, _ in rounds] == [1, 0] and len({s for _, s in rounds}) == 2
