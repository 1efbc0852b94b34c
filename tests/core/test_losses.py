"""The chunked causal LM loss equals the plain one, in value and in every gradient."""

from pathlib import Path

import pytest
import torch

import rayft_core.train.losses as losses
from rayft_core.data.collate import pad_batch
from rayft_core.data.tokenize import encode_chat_batch
from rayft_core.model.loader import load_tokenizer
from tests.helpers import QA


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


def _eaft_reference(logits: torch.Tensor, ce: torch.Tensor) -> torch.Tensor:
    """LLaMA-Factory 0.9.5's EAFT weight, written out as it does (alpha 0.5)."""
    top = torch.topk(logits, k=20, dim=-1).values
    logp = top - torch.logsumexp(top, dim=-1, keepdim=True)
    return ((-(logp.exp() * logp).sum(-1)) / 3.0) ** 0.5


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "checkpointed"])
@pytest.mark.parametrize("loss", ["dft", "eaft"])
def test_token_losses_weight_each_tokens_cross_entropy_as_their_papers_define(tiny_model, fused, loss, monkeypatch):
    """DFT (Wu et al. 2025): sum_t sg(p_t) * -log p_t; EAFT: sum_t sg((H20_t / 3)^alpha) * -log p_t. Against the
    formulas written out on the model's full logits, in value and in every gradient, on both loss paths."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 7 * 300)
    model = AutoModelForCausalLM.from_pretrained(tiny_model("llama"), dtype=torch.float32)
    if not fused:  # the checkpointed chunks, the path of heads with a bias or a trainable head under ZeRO-3
        monkeypatch.setattr(losses, "_can_fuse", lambda head: False)
    batch = _batch(load_tokenizer_for(tiny_model("llama")))
    weights = losses.dft_weights if loss == "dft" else losses.eaft_weights(0.5)
    ours, n = losses.causal_lm_loss_sum(model, batch, weights)
    ours.backward()
    got = _grads(model)
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    keep = labels != -100
    ce = F.cross_entropy(logits[keep], labels[keep], reduction="none")
    w = torch.exp(-ce) if loss == "dft" else _eaft_reference(logits[keep].float(), ce)
    ref = (w.detach() * ce).sum()
    ref.backward()
    want = _grads(model)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5) and ours.item() != pytest.approx(ce.sum().item())
    assert got.keys() == want.keys()
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


def _sharded_head_rank(rank: int, model_dir: str, store_path: str, out_dir: str) -> None:
    """One of two gloo ranks: the head marked as ZeRO-3-sharded (a `ds_id`, as DeepSpeed sets), rank 1 with far
    fewer labelled tokens; records how often the head ran and the loss."""
    import json

    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    losses.CHUNK_ELEMENTS = 7 * 300  # the tokenizer's vocabulary is small: chunks of a few tokens
    dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank, world_size=2)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        head = model.get_output_embeddings()
        head.weight.ds_id = 0
        calls = []
        head.register_forward_hook(lambda *_: calls.append(1))
        batch = _batch(load_tokenizer_for(model_dir))
        if rank == 1:  # nothing to learn on this rank
            batch["labels"][:] = -100
        loss, n = losses.compute_causal_lm_loss(model, batch)
        loss.backward()
        forward_calls = len(calls)
        with torch.no_grad():
            losses.compute_causal_lm_loss(model, batch)  # evaluation: the same number of calls
        Path(out_dir, f"{rank}.json").write_text(
            json.dumps({"forward": forward_calls, "eval": len(calls) - forward_calls, "loss": loss.item(), "n": n})
        )
    finally:
        dist.destroy_process_group()


def test_zero3_sharded_head_runs_as_often_on_every_rank(tiny_model, tmp_path):
    """ZeRO-3 all-gathers a sharded head's weight at every call: ranks with different numbers of labelled tokens
    must still call it equally often (else their collectives mismatch: a crash or a hang), and the loss is unchanged."""
    import json

    import torch.multiprocessing as mp

    model_dir = str(tiny_model("llama"))
    mp.start_processes(
        _sharded_head_rank, args=(model_dir, str(tmp_path / "store"), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1))
    assert r1["n"] == 0 and r0["n"] > 1  # rank 1 has nothing to learn
    assert r0["forward"] > 1 and r0["forward"] == r1["forward"]  # backward recomputes under checkpoint: >= 2 per chunk
    assert r0["eval"] == r1["eval"] > 1
    assert r1["loss"] == 0.0
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    batch = _batch(load_tokenizer_for(model_dir))
    assert r0["loss"] == pytest.approx(model(**batch).loss.item(), rel=1e-5)
