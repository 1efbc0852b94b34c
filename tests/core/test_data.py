from rayft_core.data import IGNORE_INDEX
from rayft_core.data.tokenize import _budget, encode_chat_batch


def test_only_assistant_tokens_carry_labels(tokenizer):
    messages = [
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello there!"},
        {"role": "user", "content": "Again."},
        {"role": "assistant", "content": "Hello!"},
    ]
    enc = encode_chat_batch(tokenizer, [messages], max_seq_len=256)
    ids, labels = enc["input_ids"][0], enc["labels"][0]
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(messages, tokenize=False)
    learned = tokenizer.decode([t for t, y in zip(ids, labels) if y != IGNORE_INDEX])
    assert learned == "Hello there!<|im_end|>\nHello!<|im_end|>\n"
    on_prompt = encode_chat_batch(tokenizer, [messages], max_seq_len=256, train_on_prompt=True)
    assert on_prompt["labels"][0] == ids


def test_mask_history_learns_the_last_turn_and_keeps_it_when_truncating(tokenizer):
    messages = [
        {"role": "user", "content": "fox " * 40},
        {"role": "assistant", "content": "dog " * 40},
        {"role": "user", "content": "Again."},
        {"role": "assistant", "content": "Hello!"},
    ]
    for max_seq_len in (256, 20):  # 20: the first turn no longer fits, the last one still does
        enc = encode_chat_batch(tokenizer, [messages], max_seq_len=max_seq_len, mask_history=True)
        ids, labels = enc["input_ids"][0], enc["labels"][0]
        assert len(ids) <= max_seq_len
        assert tokenizer.decode([t for t, y in zip(ids, labels) if y != IGNORE_INDEX]) == "Hello!<|im_end|>\n"
    assert "Hello!" in tokenizer.decode(ids) and "dog" not in tokenizer.decode(ids)


def test_null_keys_from_arrow_rows_are_ignored(tokenizer):
    messages = [
        {"role": "user", "content": "Say hello.", "tool_calls": None},
        {"role": "assistant", "content": "Hello there!", "tool_calls": None},
    ]
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
