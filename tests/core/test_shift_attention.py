"""model.shift_attn: LongLoRA's S2-Attn against attention written out with its groups as a dense mask, the model's
own mask kept inside each group (no token sees a later one), full attention in evaluation, and LLaMA-Factory's key."""

from __future__ import annotations

import pytest
import torch

from rayft_core.llamafactory import translate
from rayft_core.model.loader import load_model, load_tokenizer
from rayft_core.model.shift_attention import shifted_sparse_attention
from tests.core.test_block_methods import _steps
from tests.helpers import LF_MINIMAL, run_config


class _Attention(torch.nn.Module):
    num_key_value_groups = 2  # grouped-query attention: 4 query heads share 2 key/value heads


def _reference(q, k, v, group, padding):
    """Softmax attention per head with S2-Attn's groups as a dense mask: heads [0, H/2) in groups of ``group``
    consecutive tokens, the rest in groups shifted by half a group (the last one wrapping around to the start),
    each causal by position and without the padding keys."""
    k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    heads, length = q.shape[1], q.shape[2]
    t = torch.arange(length)
    out = []
    for h in range(heads):
        shift = 0 if h < heads // 2 else group // 2
        g = ((t - shift) % length) // group
        allowed = (g[:, None] == g[None, :]) & (t[None, :] <= t[:, None]) & padding[:, None, :]
        allowed = allowed | torch.eye(length, dtype=torch.bool)  # a padding query sees itself (its output unread)
        scores = (q[:, h] @ k[:, h].transpose(-1, -2)) * q.shape[-1] ** -0.5
        out.append(torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1) @ v[:, h])
    return torch.stack(out, dim=2)  # [batch, length, heads, dim]


@pytest.mark.parametrize("length", [16, 18])  # 18: the last group is short (4 groups of 4 and one of 2)
def test_s2_attention_equals_grouped_attention_written_out(length):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, length, 8), torch.randn(2, 2, length, 8), torch.randn(2, 2, length, 8)
    padding = torch.ones(2, length, dtype=torch.bool)
    padding[1, -3:] = False  # the second row ends in padding
    t = torch.arange(length)
    causal = (t[None, :] <= t[:, None])[None, None] & padding[:, None, None, :]
    module = _Attention().train()
    for mask in (causal, torch.zeros(causal.shape).masked_fill(~causal, float("-inf"))):  # bool and additive masks
        out, _ = shifted_sparse_attention(module, q, k, v, mask, scaling=8**-0.5)
        assert torch.allclose(out, _reference(q, k, v, length // 4, padding), atol=1e-5)
    out, _ = shifted_sparse_attention(module, q, k, v, None, scaling=8**-0.5)  # no mask: causal
    assert torch.allclose(out, _reference(q, k, v, length // 4, torch.ones(2, length, dtype=torch.bool)), atol=1e-5)


def test_a_model_with_shift_attn_trains_sees_nothing_later_and_is_full_attention_in_eval(tiny_model, workdir, tmp_path):
    run = run_config(
        tiny_model("llama"), [{"path": "unused.json", "format": "alpaca"}], workdir, "unit", model={"shift_attn": True}
    )
    plain = run.model_copy(update={"model": run.model.model_copy(update={"shift_attn": False})})
    tokenizer = load_tokenizer(run.model)
    shifted, full = load_model(run, tokenizer), load_model(plain, tokenizer)
    ids = torch.randint(3, 200, (2, 32))
    full.eval()
    with torch.no_grad():
        want = full(input_ids=ids).logits
        assert torch.allclose(shifted.eval()(input_ids=ids).logits, want, atol=1e-5)  # evaluation: full attention
        got = shifted.train()(input_ids=ids).logits  # groups of 8; the tiny model has no dropout
    # The first half-group sees what full attention sees (itself and earlier tokens, all in its groups in both head
    # halves), at every layer; later tokens lose the keys outside their groups. Were the wrapped-around group causal
    # in rolled order (LongLoRA's code), tokens 0-3 would also see tokens 28-31.
    assert torch.allclose(got[:, :4], want[:, :4], atol=1e-5)
    assert not torch.allclose(got[:, 8:], want[:, 8:], atol=1e-3)
    shifted.save_pretrained(tmp_path / "saved")
    assert "rayft_s2" not in (tmp_path / "saved" / "config.json").read_text()  # the saved model loads anywhere
    _steps(run, 3)  # and it trains: the loss falls


def test_shift_attn_rules_and_llamafactorys_key():
    from rayft_core.config import validate_config
    from rayft_core.schema import ConfigError

    out, notes = translate({**LF_MINIMAL, "shift_attn": True})
    assert out["model"]["shift_attn"] is True and not [n for n in notes if "shift_attn" in n]
    run = {"data": {"train": [{"path": "d", "format": "alpaca"}]}}
    with pytest.raises(ConfigError, match="model.shift_attn: S2-Attn is an attention of its own"):
        validate_config({**run, "model": {"name_or_path": "m", "shift_attn": True, "attn_implementation": "eager"}})
    with pytest.raises(ConfigError, match="model.shift_attn: S2-Attn groups a whole sequence"):
        validate_config(
            {
                **run,
                "model": {"name_or_path": "m", "shift_attn": True},
                "cluster": {"sequence_parallel_size": 2, "num_workers": 2},
            }
        )
