"""Chat templates against real tokenizers: rayft's ids are the family's own, the loss is on the assistant only.

.venv/bin/pytest -q tests/core/test_templates.py
"""

import logging
from functools import cache

import pytest

from rayft_core.config import ModelConfig
from rayft_core.data import IGNORE_INDEX
from rayft_core.data.formats import DataError
from rayft_core.data.templates import TEMPLATES, TOOL_TEMPLATES
from rayft_core.data.tokenize import encode_chat_batch
from rayft_core.model.loader import load_tokenizer
from tests.helpers import SHARED

TOKENIZERS = SHARED / "fixtures" / "tokenizers"
FAMILIES = sorted(p.name for p in TOKENIZERS.iterdir() if p.is_dir()) if TOKENIZERS.is_dir() else []
needs_tokenizers = pytest.mark.skipif(
    not FAMILIES, reason="real tokenizers live in ../shared/fixtures/tokenizers (absent here)"
)
DATE = {"date_string": "26 Jul 2024"}  # Llama 3.2's template writes today's date otherwise

SYSTEM = "Answer in one short sentence."
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
CONVERSATIONS = {  # name -> (messages, tools)
    "one_turn": (
        [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "Two plus two is four."}],
        None,
    ),
    "multi_turn": (
        [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "Two plus two is four."},
            {"role": "user", "content": "And 3+3?"},
            {"role": "assistant", "content": "Three plus three is six."},
        ],
        None,
    ),
    "system": (
        [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Name a primary colour."},
            {"role": "assistant", "content": "Red is a primary colour."},
        ],
        None,
    ),
    "tools": (
        [
            {"role": "user", "content": "What is the weather like in Paris today?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
                ],
            },
            {"role": "tool", "content": '{"temperature_c": 21, "sky": "sunny"}'},
            {"role": "assistant", "content": "It is sunny and 21 degrees in Paris."},
        ],
        TOOLS,
    ),
}
# What a family's own template cannot do, and the error rayft gives instead of a wrong render.
UNSUPPORTED = {
    ("gemma-2-it", "system"): "System role not supported",
    ("gemma-2-it", "tools"): "no tool support",
    ("phi-3-mini-4k-instruct", "tools"): "no tool support",
    ("deepseek-v3", "tools"): "no tool support",
}
MIRRORS = {
    "llama3": "llama-3.2-instruct",
    "qwen": "qwen2.5-instruct",
    "gemma": "gemma-2-it",
    "phi": "phi-3-mini-4k-instruct",
    "deepseek3": "deepseek-v3",
}


@cache
def _tokenizer(family: str):
    from transformers import AutoTokenizer

    logging.getLogger("transformers").setLevel(logging.ERROR)  # deepseek-v3 warns about its tokenizer class
    return AutoTokenizer.from_pretrained(TOKENIZERS / family)


@cache
def _with_template(family: str, name: str):
    """A second copy of the family's tokenizer with our named template."""
    tok = _tokenizer(family).__class__.from_pretrained(TOKENIZERS / family)
    tok.chat_template = TEMPLATES[name]
    return tok


def _reference_ids(tok, messages, tools, **kwargs) -> list[int]:
    return tok.apply_chat_template(messages, tools=tools, tokenize=True, **DATE, **kwargs)["input_ids"]


def _learned_spans(tok, ids, labels) -> list[str]:
    """Each run of labelled tokens decoded on its own (joining runs could fake a match across them)."""
    spans, run = [], []
    for t, y in zip(ids, labels):
        if y != IGNORE_INDEX:
            run.append(t)
        elif run:
            spans, run = spans + [tok.decode(run)], []
    return spans + ([tok.decode(run)] if run else [])


def _squeeze(text: str) -> str:
    return "".join(text.split())  # decode drops newlines (phi-3) and spaces (deepseek-v3 under transformers 5)


def _check_masking(tok, messages, ids, labels) -> None:
    learned = "|".join(_squeeze(span) for span in _learned_spans(tok, ids, labels))
    for m in messages:
        if m["role"] == "assistant":
            for call in m.get("tool_calls", []):  # the call itself is learned: name and arguments
                assert call["function"]["name"] in learned and call["function"]["arguments"]["city"] in learned
            assert _squeeze(m["content"]) in learned
        else:
            assert _squeeze(m["content"]) not in learned, f"{m['role']} text is labelled"
    assert "temperature_c" not in learned  # tool results are prompt, however the template quotes them


@needs_tokenizers
@pytest.mark.parametrize("case", list(CONVERSATIONS))
@pytest.mark.parametrize("family", FAMILIES)
def test_family_template_ids_and_masks(family, case):
    tok, (messages, tools) = _tokenizer(family), CONVERSATIONS[case]
    if (family, case) in UNSUPPORTED:
        with pytest.raises(DataError, match=UNSUPPORTED[family, case]) as err:
            encode_chat_batch(tok, [messages], 100_000, batch_tools=[tools], template_kwargs=DATE)
        assert "model.template" in str(err.value)  # the error names the fix
        return
    enc = encode_chat_batch(tok, [messages], 100_000, batch_tools=[tools], template_kwargs=DATE)
    ids, labels = enc["input_ids"][0], enc["labels"][0]
    assert ids == _reference_ids(tok, messages, tools)  # exactly the tokens inference sees
    _check_masking(tok, messages, ids, labels)


@needs_tokenizers
@pytest.mark.parametrize("family", FAMILIES)
def test_mask_history_learns_the_last_turn_only(family):
    tok, (messages, _) = _tokenizer(family), CONVERSATIONS["multi_turn"]
    enc = encode_chat_batch(tok, [messages], 100_000, mask_history=True, template_kwargs=DATE)
    learned = "|".join(_squeeze(span) for span in _learned_spans(tok, enc["input_ids"][0], enc["labels"][0]))
    assert "Threeplusthreeissix." in learned and "Twoplustwo" not in learned
    assert enc["input_ids"][0] == _reference_ids(tok, messages, None)


@needs_tokenizers
@pytest.mark.parametrize("case", list(CONVERSATIONS))
@pytest.mark.parametrize("name", list(MIRRORS))
def test_named_template_renders_the_family_ids(name, case):
    family_tok, ours, (messages, tools) = (
        _tokenizer(MIRRORS[name]),
        _with_template(MIRRORS[name], name),
        CONVERSATIONS[case],
    )
    if tools and name not in TOOL_TEMPLATES:
        with pytest.raises(DataError, match="no tool support"):
            encode_chat_batch(ours, [messages], 100_000, batch_tools=[tools])
        return
    enc = encode_chat_batch(ours, [messages], 100_000, batch_tools=[tools], template_kwargs=DATE)
    _check_masking(ours, messages, enc["input_ids"][0], enc["labels"][0])
    if (MIRRORS[name], case) in UNSUPPORTED:  # gemma: the family rejects a system prompt; ours folds it in
        assert ours.decode(enc["input_ids"][0]).startswith(f"<bos><start_of_turn>user\n{SYSTEM}\n\nName a")
        return
    assert enc["input_ids"][0] == _reference_ids(family_tok, messages, tools)
    for generation_prompt in (False, True):  # the bare render too: inference uses it with a generation prompt
        m = messages[:-1] if generation_prompt else messages
        assert _reference_ids(ours, m, tools, add_generation_prompt=generation_prompt) == _reference_ids(
            family_tok, m, tools, add_generation_prompt=generation_prompt
        )


@pytest.mark.parametrize(
    "name, text, learned",
    [
        (
            "chatml",
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nSay hello.<|im_end|>\n"
            "<|im_start|>assistant\nHello there!<|im_end|>\n",
            ["Hello there!<|im_end|>\n"],
        ),
        (
            "alpaca",
            "Be brief.\n\n### Instruction:\nSay hello.\n\n### Response:\nHello there!<|im_end|>\n\n",
            ["Hello there!<|im_end|>\n\n"],
        ),
        (
            "default",
            "System: Be brief.\nHuman: Say hello.\nAssistant: Hello there!<|im_end|>\n",
            [" Hello there!<|im_end|>\n"],
        ),
        ("empty", "Be brief.Say hello.Hello there!", ["Hello there!"]),
    ],
)
def test_plain_templates_with_the_tiny_tokenizer(tokenizer, workdir, name, text, learned):
    tok = tokenizer.__class__.from_pretrained(workdir / "tokenizer")
    tok.chat_template = TEMPLATES[name]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello there!"},
    ]
    assert tok.apply_chat_template(messages, tokenize=False) == text
    enc = encode_chat_batch(tok, [messages], 256)
    assert tok.decode(enc["input_ids"][0]) == text
    assert _learned_spans(tok, enc["input_ids"][0], enc["labels"][0]) == learned
    with pytest.raises(DataError, match="model.template: qwen"):  # none of these shows tools
        encode_chat_batch(tok, [CONVERSATIONS["tools"][0]], 256, batch_tools=[TOOLS])


def test_alpaca_without_system_uses_the_stanford_preamble(tokenizer, workdir):
    tok = tokenizer.__class__.from_pretrained(workdir / "tokenizer")
    tok.chat_template = TEMPLATES["alpaca"]
    text = tok.apply_chat_template([{"role": "user", "content": "Say hello."}], tokenize=False)
    assert text.startswith("Below is an instruction that describes a task.") and text.endswith("### Response:\n")


def test_load_tokenizer_applies_the_named_template(tokenizer, workdir, caplog):
    path = str(workdir / "tokenizer")  # written by the tokenizer fixture
    assert load_tokenizer(ModelConfig(name_or_path=path, template="alpaca")).chat_template == TEMPLATES["alpaca"]
    raw = "{% for m in messages %}{{ m.content }}{% endfor %}"
    assert load_tokenizer(ModelConfig(name_or_path=path, template="alpaca", chat_template=raw)).chat_template == raw
    with caplog.at_level(logging.WARNING, logger="rayft_core.data.templates"):
        load_tokenizer(ModelConfig(name_or_path=path, template="llama3"))  # no <|eot_id|> in this vocabulary
    assert "<|eot_id|>" in caplog.text and "model.add_special_tokens" in caplog.text


@needs_tokenizers
@pytest.mark.parametrize("family", FAMILIES)
def test_turn_boundaries_from_the_encoding_match_the_offsets(family):
    """The fast path asks the Rust encoding where a character's token starts; at every character of
    awkward texts (byte-split characters, runs of spaces, special tokens) it must agree with a search of
    the token offsets the slow path uses."""
    import bisect
    import random

    from rayft_core.data.tokenize import _tokens

    rng = random.Random(0)
    pieces = list("ab Z\n\t.,!-") + ["é", "𓀀", "中文", "  ", "\n\n", "<|im_end|>", "<start_of_turn>", "▁", "'s", "123"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 30))) for _ in range(300)]
    tok = _tokenizer(family)
    offsets = tok(texts, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for text, tokens, offs in zip(texts, _tokens(tok, texts), offsets):
        starts = [s for s, _ in offs]
        assert [tokens.first_at(p) for p in range(len(text) + 1)] == [
            bisect.bisect_left(starts, p) for p in range(len(text) + 1)
        ], text
