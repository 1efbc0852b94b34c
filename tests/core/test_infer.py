"""`rayft chat` with the transformers engine: the streamed reply is the model's own greedy generation
under the chat template saved with it, history is kept, /reset clears it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rayft.cli import main
from rayft_core.errors import UserInputError
from rayft_core.infer import GenerationParams, ModelSource, load_engine


def _greedy(model_dir: Path, tokenizer, messages: list[dict], n: int) -> str:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def test_chat_streams_the_greedy_reply_keeps_history_and_resets(tiny_model, tokenizer) -> None:
    model_dir = tiny_model("llama")
    first = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]
    expected_first = _greedy(model_dir, tokenizer, first, 6)
    second = first + [{"role": "assistant", "content": expected_first}, {"role": "user", "content": "Again."}]
    expected_second = _greedy(model_dir, tokenizer, second, 6)
    after_reset = _greedy(model_dir, tokenizer, [first[0], {"role": "user", "content": "Again."}], 6)

    result = CliRunner().invoke(
        main,
        [
            "chat",
            str(model_dir),
            "--engine",
            "hf",
            "--temperature",
            "0",
            "--max-new-tokens",
            "6",
            "--system",
            "Be brief.",
        ],
        input="Say hello.\nAgain.\n/reset\nAgain.\n/exit\n",
    )
    assert result.exit_code == 0, result.output
    replies = [line.split("assistant> ", 1)[1] for line in result.output.splitlines() if "assistant> " in line]
    assert replies == [expected_first, expected_second, after_reset]
    assert "(history cleared)" in result.output


def test_stream_pieces_add_up_to_the_reply(tiny_model, tokenizer) -> None:
    # (transformers' streamer holds text back to word boundaries, so an untrained model's reply may come in one piece)
    model_dir = tiny_model("llama")
    messages = [{"role": "user", "content": "What do bees make?"}]
    pieces = list(load_engine(model_dir, "hf").stream(messages, GenerationParams(max_new_tokens=8, temperature=0)))
    assert pieces and "".join(pieces) == _greedy(model_dir, tokenizer, messages, 8)


def test_adapter_directory_loads_on_its_base_with_its_own_tokenizer(tiny_model, tmp_path: Path) -> None:
    base = tiny_model("llama")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base), "r": 8}))
    assert ModelSource.of(adapter) == ModelSource(str(base), str(adapter), str(base))  # no tokenizer saved: the base's
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/nowhere/model"}))
    with pytest.raises(UserInputError, match="/nowhere/model"):
        ModelSource.of(adapter)
    with pytest.raises(UserInputError, match="not a model"):
        ModelSource.of(tmp_path)
    with pytest.raises(UserInputError, match="unknown engine"):
        load_engine(base, "tgi")
