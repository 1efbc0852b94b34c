"""Packing keeps examples apart: the loss of a packed row equals the losses of its examples computed alone."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from rayft_core.data import IGNORE_INDEX
from rayft_core.data.collate import pad_batch
from rayft_core.data.packing import pack_examples
from rayft_core.data.tokenize import encode_chat_batch
from rayft_core.train.losses import compute_causal_lm_loss
from tests.helpers import QA


def test_first_fit_packs_and_restarts_positions():
    ids = [[1] * 5, [2] * 3, [3] * 4, [4] * 2]
    labels = [list(x) for x in ids]
    out = pack_examples(ids, labels, max_len=8)
    assert sorted(len(r) for r in out["input_ids"]) == [6, 8]  # 5+3, 4+2
    assert sum(out["num_examples"]) == 4
    for row, lab, pos in zip(out["input_ids"], out["labels"], out["position_ids"]):
        starts = [i for i, p in enumerate(pos) if p == 0]
        assert all(lab[s] == IGNORE_INDEX for s in starts)  # never predict across an example boundary
        assert pos == [p for s, e in zip(starts, starts[1:] + [len(row)]) for p in range(e - s)]
    with pytest.raises(ValueError, match="longer than max_seq_len"):
        pack_examples([[1] * 9], [[1] * 9], max_len=8)


def test_pad_batch_plain_and_packed():
    b = pad_batch({"input_ids": [[1, 2, 3], [4]], "labels": [[-100, 2, 3], [4]]}, pad_token_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    p = pad_batch(
        {"input_ids": [[1, 2, 3], [4]], "labels": [[-100, 2, 3], [-100]], "position_ids": [[0, 1, 0], [0]]}, 0
    )
    assert "attention_mask" not in p and p["position_ids"].tolist() == [[0, 1, 0], [0, 0, 1]]


@pytest.mark.parametrize("arch, attn", [("llama", "sdpa"), ("llama", "eager"), ("qwen2", "sdpa")])
def test_packed_loss_equals_unpacked_loss(tiny_model, tokenizer, arch, attn):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model(arch), dtype=torch.float32, attn_implementation=attn).eval()
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QA[:6]]
    enc = encode_chat_batch(tokenizer, convs, max_seq_len=64)
    packed = pack_examples(enc["input_ids"], enc["labels"], max_len=128)
    assert len(packed["input_ids"]) < len(enc["input_ids"])  # several examples share a row
    with torch.no_grad():
        loss_p, n_p = compute_causal_lm_loss(model, pad_batch(packed, tokenizer.pad_token_id))
        total, n = 0.0, 0
        for ids, labels in zip(enc["input_ids"], enc["labels"]):  # each example alone, no padding at all
            loss, k = compute_causal_lm_loss(
                model, pad_batch({"input_ids": [ids], "labels": [labels]}, tokenizer.pad_token_id)
            )
            total += loss.item() * k
            n += k
    assert n_p == n
    assert loss_p.item() == pytest.approx(total / n, abs=1e-5)
