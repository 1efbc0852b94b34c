"""The chunked causal LM loss equals the plain one, in value and in every gradient."""

import pytest
import torch

import rayft_core.train.losses as losses
from rayft_core.data.collate import pad_batch
from rayft_core.data.tokenize import encode_chat_batch
from rayft_core.model.loader import load_tokenizer
from tests.conftest import QA


def _batch(tokenizer):
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QA]
    enc = encode_chat_batch(tokenizer, convs, 64)
    return pad_batch(enc, tokenizer.pad_token_id)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch, freeze_head", [("llama", False), ("llama", True), ("gemma2", False)])
def test_matches_transformers_loss_and_gradients(tiny_model, arch, freeze_head, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 7 * 300)  # several chunks, the last one short
    model = AutoModelForCausalLM.from_pretrained(tiny_model(arch), dtype=torch.float32)
    model.get_output_embeddings().requires_grad_(not freeze_head)
    batch = _batch(load_tokenizer_for(tiny_model(arch)))
    ours, n = losses.compute_causal_lm_loss(model, batch)
    ours.backward()
    got = _grads(model)
    model.zero_grad(set_to_none=True)
    ref = model(**batch).loss  # transformers' own: full logits, mean over labelled tokens
    ref.backward()
    want = _grads(model)
    assert n == int((batch["labels"][:, 1:] != -100).sum())
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    assert got.keys() == want.keys()
    assert ("lm_head.weight" in got) is not freeze_head
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-6, rtol=1e-4), name


def load_tokenizer_for(path):
    from rayft_core.config import ModelConfig

    return load_tokenizer(ModelConfig(name_or_path=str(path)))


def test_fused_path_is_taken_for_plain_heads_only(tiny_model):
    from transformers import AutoModelForCausalLM

    llama = AutoModelForCausalLM.from_pretrained(tiny_model("llama"))
    gemma = AutoModelForCausalLM.from_pretrained(tiny_model("gemma2"))
    assert gemma.config.final_logit_softcapping  # so the gemma2 case above checks the soft-capped gradient
    assert losses._can_fuse(llama.get_output_embeddings()) and losses._can_fuse(gemma.get_output_embeddings())
    assert not losses._can_fuse(torch.nn.Linear(4, 8, bias=True))
