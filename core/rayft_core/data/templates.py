"""Named chat templates: `model.template: qwen` instead of the tokenizer's own Jinja template.

Why a name and not always the tokenizer's template: base models ship without one (alpaca, default,
empty give them a plain-text format), some shipped templates cannot do what training needs (Gemma-2's
rejects a system prompt, Phi-3's and DeepSeek-V3's take no tool definitions), and the choice is then
explicit and the same on every worker. The names are LLaMA-Factory's, so its users' configs carry over.

Each source is ours, written in the Hugging Face `apply_chat_template` style (variables messages,
tools, add_generation_prompt, bos_token, eos_token). Those named after a model family render exactly the
family's own tokens for what its template supports (tests/core/test_templates.py checks this against
the real tokenizers); where the family's template has a gap the choice made is noted beside it.
Messages follow the data layer's standard row: role system|user|assistant|tool, content, and for
assistant tool-call turns tool_calls=[{"type": "function", "function": {"name", "arguments": dict}}].
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

logger = logging.getLogger(__name__)

# Plain ChatML: every role as-is, no default system prompt, no tool format.
CHATML = r"""
{%- for m in messages %}
    {{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
"""

# Qwen2.5-Instruct: ChatML with a default system prompt; tools listed in the system turn, calls as
# <tool_call> JSON, consecutive tool results grouped in one user turn as <tool_response> blocks.
QWEN = r"""
{%- set has_system = messages[0].role == 'system' %}
{%- set system = messages[0].content if has_system
    else 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' %}
{{- '<|im_start|>system\n' + system }}
{%- if tools %}
    {{- '\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n'
        'You are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}
    {%- for tool in tools %}{{- '\n' + (tool | tojson) }}{%- endfor %}
    {{- '\n</tools>\n\nFor each function call, return a json object with function name and arguments within '
        '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
        '<args-json-object>}\n</tool_call>' }}
{%- endif %}
{{- '<|im_end|>\n' }}
{%- for m in messages %}
    {%- if loop.first and has_system %}
    {%- elif m.role == 'assistant' and m.tool_calls %}
        {{- '<|im_start|>assistant' }}
        {%- if m.content %}{{- '\n' + m.content }}{%- endif %}
        {%- for call in m.tool_calls %}
            {%- set f = call.function if call.function is defined else call %}
            {{- '\n<tool_call>\n{"name": "' + f.name + '", "arguments": ' + (f.arguments | tojson) + '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif m.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\n<tool_response>\n' + m.content + '\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}
    {%- else %}
        {{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
"""

# Llama 3.1-3.3 Instruct. The family's template writes today's date into the system block; ours writes a
# fixed one unless date_string is passed, so the same data always gives the same tokens (and cache hits).
# Tools go into the first user turn (the family's default); a call is one JSON object per turn; tool
# results are JSON-encoded as the family's template does (a string result gets quotes).
LLAMA3 = r"""
{{- bos_token }}
{%- set date = date_string if date_string is defined else '26 Jul 2024' %}
{%- set system = (messages[0].content | trim) if messages[0].role == 'system' else '' %}
{%- set messages = messages[1:] if messages[0].role == 'system' else messages %}
{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}
{%- if tools %}{{- 'Environment: ipython\n' }}{%- endif %}
{{- 'Cutting Knowledge Date: December 2023\nToday Date: ' + date + '\n\n' + system + '<|eot_id|>' }}
{%- if tools %}
    {%- if not messages %}{{- raise_exception('llama3 puts the tools in the first user turn, and there is none') }}{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please respond with a JSON '
        'for a function call with its proper arguments that best answers the given prompt.\n\nRespond in the '
        'format {"name": function name, "parameters": dictionary of argument name and its value}.Do not use '
        'variables.\n\n' }}
    {%- for tool in tools %}{{- (tool | tojson(indent=4)) + '\n\n' }}{%- endfor %}
    {{- (messages[0].content | trim) + '<|eot_id|>' }}
    {%- set messages = messages[1:] %}
{%- endif %}
{%- for m in messages %}
    {%- if m.tool_calls %}
        {%- if m.tool_calls | length != 1 %}{{- raise_exception('llama3 makes one tool call per turn') }}{%- endif %}
        {%- set f = m.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "' + f.name + '", "parameters": '
            + (f.arguments | tojson) + '}<|eot_id|>' }}
    {%- elif m.role in ('tool', 'ipython') %}
        {{- '<|start_header_id|>ipython<|end_header_id|>\n\n' + (m.content | tojson) + '<|eot_id|>' }}
    {%- else %}
        {{- '<|start_header_id|>' + m.role + '<|end_header_id|>\n\n' + (m.content | trim) + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}
"""

# Mistral Instruct v0.3 layout. The system prompt opens the first user turn (LLaMA-Factory's choice;
# Mistral's own template moves it to the last user turn, which changes earlier text as turns are added).
# No tool format here: Mistral's places tools before the last user turn, which has the same problem.
MISTRAL = r"""
{{- bos_token }}
{%- set system = (messages[0].content + '\n\n') if messages[0].role == 'system' else '' %}
{%- for m in (messages[1:] if system else messages) %}
    {%- if m.role == 'user' %}{{- '[INST] ' + (system if loop.first else '') + m.content + '[/INST]' }}
    {%- elif m.role == 'assistant' %}{{- ' ' + (m.content | trim) ~ eos_token }}
    {%- else %}{{- raise_exception('mistral has no ' + m.role + ' turns') }}
    {%- endif %}
{%- endfor %}
"""

# Gemma 2 it: user/model turns, contents trimmed. Gemma has no system role; the system text opens the
# first turn, separated by a blank line (as LLaMA-Factory does), where Google's template raises.
GEMMA = r"""
{{- bos_token }}
{%- set system = ((messages[0].content | trim) + '\n\n') if messages[0].role == 'system' else '' %}
{%- for m in (messages[1:] if system else messages) %}
    {{- '<start_of_turn>' + ('model' if m.role == 'assistant' else m.role) + '\n'
        + (system if loop.first else '') + (m.content | trim) + '<end_of_turn>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<start_of_turn>model\n' }}{%- endif %}
"""

# Phi-3 Instruct: EOS closes a finished conversation.
PHI = r"""
{%- for m in messages %}
    {%- if m.role not in ('system', 'user', 'assistant') %}{{- raise_exception('phi has no ' + m.role + ' turns') }}{%- endif %}
    {{- '<|' + m.role + '|>\n' + m.content + '<|end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|assistant|>\n' }}{%- else %}{{- eos_token }}{%- endif %}
"""

# DeepSeek-V3 chat: the system prompts open the text after BOS. The family's template takes no tool
# definitions, so neither does this one.
DEEPSEEK3 = r"""
{{- bos_token ~ (messages | selectattr('role', 'equalto', 'system') | map(attribute='content') | join('\n\n')) }}
{%- for m in messages %}
    {%- if m.role == 'user' %}{{- '<｜User｜>' + m.content }}
    {%- elif m.role == 'assistant' %}{{- '<｜Assistant｜>' + m.content + '<｜end▁of▁sentence｜>' }}
    {%- elif m.role != 'system' %}{{- raise_exception('deepseek3 has no ' + m.role + ' turns') }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<｜Assistant｜>' }}{%- endif %}
"""

# Base models: Stanford Alpaca's instruction format; the answer ends with EOS so the model learns to stop.
ALPACA = r"""
{%- set system = messages[0].content if messages[0].role == 'system'
    else 'Below is an instruction that describes a task. Write a response that appropriately completes the request.' %}
{%- if system %}{{- system + '\n\n' }}{%- endif %}
{%- for m in messages %}
    {%- if m.role == 'user' %}{{- '### Instruction:\n' + m.content + '\n\n### Response:\n' }}
    {%- elif m.role == 'assistant' %}{{- m.content ~ eos_token ~ '\n\n' }}
    {%- elif m.role != 'system' %}{{- raise_exception('alpaca has no ' + m.role + ' turns') }}
    {%- endif %}
{%- endfor %}
"""

# Base models: a plain transcript. The space after "Assistant:" belongs to the answer, so the answer's
# first token (which carries that space in byte-level vocabularies) is learned whole.
DEFAULT = r"""
{%- for m in messages %}
    {%- if m.role == 'system' %}{{- 'System: ' + m.content + '\n' }}
    {%- elif m.role == 'user' %}{{- 'Human: ' + m.content + '\nAssistant:' }}
    {%- elif m.role == 'assistant' %}{{- ' ' + m.content ~ eos_token ~ '\n' }}
    {%- else %}{{- raise_exception('default has no ' + m.role + ' turns') }}
    {%- endif %}
{%- endfor %}
"""

# Just the contents, nothing around them: pre-training-like data in conversation form.
EMPTY = r"""
{%- for m in messages %}{{- m.content }}{%- endfor %}
"""

TEMPLATES: dict[str, str] = {
    "llama3": LLAMA3,
    "qwen": QWEN,
    "chatml": CHATML,
    "mistral": MISTRAL,
    "gemma": GEMMA,
    "phi": PHI,
    "deepseek3": DEEPSEEK3,
    "alpaca": ALPACA,
    "default": DEFAULT,
    "empty": EMPTY,
}
TOOL_TEMPLATES = ("qwen", "llama3")  # the named templates that render tool definitions and calls

# Turn markers each family template relies on: as plain text they cost several tokens each and the
# model cannot stop on one, so a tokenizer without them as single tokens is worth a warning.
_MARKERS = {
    "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "qwen": ("<|im_start|>", "<|im_end|>"),
    "chatml": ("<|im_start|>", "<|im_end|>"),
    "gemma": ("<start_of_turn>", "<end_of_turn>"),
    "phi": ("<|user|>", "<|assistant|>", "<|end|>"),
    "deepseek3": ("<｜User｜>", "<｜Assistant｜>"),
}


class TemplateChoice(Protocol):
    """What apply_template reads of a run's model section (rayft_core.config.ModelConfig, not imported: the run
    schema checks template names against TEMPLATES, and an import back would close a circle)."""

    chat_template: str | None
    template: str | None


def apply_template(tokenizer: Any, cfg: TemplateChoice) -> None:
    """Give the tokenizer the chat template the config asks for: model.chat_template (raw Jinja) wins
    over model.template (a name); with neither the tokenizer keeps its own."""
    if cfg.chat_template:
        tokenizer.chat_template = cfg.chat_template
    elif cfg.template:
        tokenizer.chat_template = TEMPLATES[cfg.template]
        vocab = tokenizer.get_vocab()
        missing = [m for m in _MARKERS.get(cfg.template, ()) if m not in vocab]
        if missing:
            logger.warning(
                "model.template: %s marks turns with %s, which this tokenizer does not have as tokens; "
                "add them with model.add_special_tokens (the embeddings are resized)",
                cfg.template,
                ", ".join(missing),
            )
