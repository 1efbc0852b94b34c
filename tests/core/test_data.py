import pytest

from rayft_core.data import IGNORE_INDEX
from rayft_core.data.collate import pad_batch
from rayft_core.data.formats import DataError, align_alpaca, align_sharegpt, align_text
from rayft_core.data.tokenize import _budget, encode_chat_batch, encode_text_batch


def test_alpaca_with_system_history_and_input():
    row = {"instruction": "Translate", "input": "bonjour", "output": "hello", "system": "Be brief.",
           "history": [["hi", "hey"]]}
    assert align_alpaca(row)["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hey"}, {"role": "user", "content": "Translate\nbonjour"},
        {"role": "assistant", "content": "hello"}]


def test_sharegpt_roles_and_errors_name_file_and_row():
    row = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    assert [m["role"] for m in align_sharegpt(row)["messages"]] == ["user", "assistant"]
    with pytest.raises(DataError, match=r"data\.jsonl: row 7: the conversation must end with an assistant"):
        align_sharegpt({"conversations": [{"from": "human", "value": "q"}], "path": "data.jsonl", "__row__": 7})
    with pytest.raises(DataError, match=r"a\.json: row 3: alpaca rows need string 'instruction' and 'output'"):
        align_alpaca({"instruction": "x", "path": "a.json", "__row__": 3})
    with pytest.raises(DataError, match="'body' column"):
        align_text({"text": "x"}, text_column="body")


def test_only_assistant_tokens_carry_labels(tokenizer):
    messages = [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello there!"},
                {"role": "user", "content": "Again."}, {"role": "assistant", "content": "Hello!"}]
    enc = encode_chat_batch(tokenizer, [messages], max_seq_len=256)
    ids, labels = enc["input_ids"][0], enc["labels"][0]
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(messages, tokenize=False)
    learned = tokenizer.decode([t for t, y in zip(ids, labels) if y != IGNORE_INDEX])
    assert learned == "Hello there!<|im_end|>\nHello!<|im_end|>\n"
    on_prompt = encode_chat_batch(tokenizer, [messages], max_seq_len=256, train_on_prompt=True)
    assert on_prompt["labels"][0] == ids


def test_mask_history_learns_the_last_turn_and_keeps_it_when_truncating(tokenizer):
    messages = [{"role": "user", "content": "fox " * 40}, {"role": "assistant", "content": "dog " * 40},
                {"role": "user", "content": "Again."}, {"role": "assistant", "content": "Hello!"}]
    for max_seq_len in (256, 20):  # 20: the first turn no longer fits, the last one still does
        enc = encode_chat_batch(tokenizer, [messages], max_seq_len=max_seq_len, mask_history=True)
        ids, labels = enc["input_ids"][0], enc["labels"][0]
        assert len(ids) <= max_seq_len
        assert tokenizer.decode([t for t, y in zip(ids, labels) if y != IGNORE_INDEX]) == "Hello!<|im_end|>\n"
    assert "Hello!" in tokenizer.decode(ids) and "dog" not in tokenizer.decode(ids)


def test_null_keys_from_arrow_rows_are_ignored(tokenizer):
    messages = [{"role": "user", "content": "Say hello.", "tool_calls": None},
                {"role": "assistant", "content": "Hello there!", "tool_calls": None}]
    enc = encode_chat_batch(tokenizer, [messages], max_seq_len=256, batch_tools=[None])
    assert tokenizer.decode(enc["input_ids"][0]).endswith("Hello there!<|im_end|>\n")


def test_truncation_keeps_both_prompt_and_response():
    assert _budget(10, 10, 100) == (10, 10)
    keep_p, keep_r = _budget(300, 300, 100)
    assert keep_p + keep_r == 100 and keep_p > 0 and keep_r > 0


def test_long_examples_are_truncated_to_max_seq_len(tokenizer):
    messages = [{"role": "user", "content": "fox " * 200}, {"role": "assistant", "content": "dog " * 200}]
    enc = encode_chat_batch(tokenizer, [messages], max_seq_len=50)
    assert len(enc["input_ids"][0]) == 50
    assert any(y != IGNORE_INDEX for y in enc["labels"][0])


def test_text_is_cut_into_blocks_with_eos(tokenizer):
    enc = encode_text_batch(tokenizer, ["the quick brown fox", "jumps over the lazy dog"], max_seq_len=4)
    flat = [t for block in enc["input_ids"] for t in block]
    assert all(len(b) <= 4 for b in enc["input_ids"]) and flat.count(tokenizer.eos_token_id) == 2
    assert enc["labels"] == enc["input_ids"]


def test_pad_batch():
    b = pad_batch([[1, 2, 3], [4]], [[-100, 2, 3], [4]], pad_token_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]

