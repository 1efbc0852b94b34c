"""The preference stages' pieces: each loss against hand-computed values, per-sequence log-probs
against transformers' logits (value and gradient), pair encoding, and DPO's step-0 invariant."""

import math

import pytest
import torch

import rayft_core.train.losses as losses
from rayft_core.data import IGNORE_INDEX
from rayft_core.model.value_head import ValueHeadModel, hidden_size_of, load_reward_model
from rayft_core.train.dpo import dpo_loss
from rayft_core.train.kto import kto_loss
from rayft_core.train.orpo import orpo_loss
from rayft_core.train.rm import pairwise_loss
from rayft_core.train.simpo import simpo_loss
from rayft_core.train.stages import STAGES
from tests.core.test_losses import load_tokenizer_for
from tests.helpers import QA, run_config

T = torch.tensor
SIGMOID = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731


# ----------------------------------------------------------------------------- loss values by hand


def test_dpo_sigmoid_hinge_ipo_by_hand():
    pc, pr, rc, rr = T([-1.0, -2.0]), T([-3.0, -1.0]), T([-1.5, -2.0]), T([-2.5, -1.5])
    # margins: ((-1+1.5) - (-3+2.5)) = 1.0 ; ((-2+2) - (-1+1.5)) = -0.5
    losses_, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert losses_.tolist() == pytest.approx([-math.log(SIGMOID(0.5)), -math.log(SIGMOID(-0.25))], rel=1e-6)
    assert chosen.tolist() == pytest.approx([0.25, 0.0]) and rejected.tolist() == pytest.approx([-0.25, 0.25])
    smoothed, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.2)
    want = [-(0.8 * math.log(SIGMOID(m)) + 0.2 * math.log(SIGMOID(-m))) for m in (0.5, -0.25)]
    assert smoothed.tolist() == pytest.approx(want, rel=1e-6)
    hinge, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="hinge")
    assert hinge.tolist() == pytest.approx([0.5, 1.25])
    ipo, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="ipo")
    assert ipo.tolist() == pytest.approx([(1.0 - 1.0) ** 2, (-0.5 - 1.0) ** 2])


def test_dpo_is_ln2_when_policy_equals_reference():
    logps = T([-4.0, -7.5, -1.25])
    loss, chosen, rejected = dpo_loss(logps, logps - 1, logps, logps - 1, beta=0.1)
    assert loss.tolist() == pytest.approx([math.log(2)] * 3, abs=1e-7)
    assert (chosen - rejected).abs().max() == 0


def test_simpo_orpo_kto_rm_by_hand():
    c, r = T([-0.5, -1.0]), T([-1.0, -0.5])
    simpo, sc, _ = simpo_loss(c, r, beta=2.0, gamma=0.5)
    assert simpo.tolist() == pytest.approx(
        [-math.log(SIGMOID(2 * 0.5 - 0.5)), -math.log(SIGMOID(2 * -0.5 - 0.5))], rel=1e-6
    )
    assert sc.tolist() == pytest.approx([-1.0, -2.0])

    def log_odds(x):
        return x - math.log(1 - math.exp(x))

    orpo, _, _ = orpo_loss(c, r, beta=0.1)
    want = [-a - 0.1 * math.log(SIGMOID(log_odds(a) - log_odds(b))) for a, b in ((-0.5, -1.0), (-1.0, -0.5))]
    assert orpo.tolist() == pytest.approx(want, rel=1e-6)

    policy, ref, kl = T([-1.0, -2.0, -3.0]), T([-1.5, -1.0, -3.0]), T(0.2)
    kto, rewards = kto_loss(
        policy, ref, T([True, False, True]), kl, beta=0.5, desirable_weight=2.0, undesirable_weight=0.5
    )
    want = [
        2.0 * (1 - SIGMOID(0.5 * (0.5 - 0.2))),
        0.5 * (1 - SIGMOID(0.5 * (0.2 + 1.0))),
        2.0 * (1 - SIGMOID(0.5 * -0.2)),
    ]
    assert kto.tolist() == pytest.approx(want, rel=1e-6)
    assert rewards.tolist() == pytest.approx([0.25, -0.5, 0.0])

    assert pairwise_loss(T([2.0, 0.0]), T([1.0, 0.0])).tolist() == pytest.approx([-math.log(SIGMOID(1.0)), math.log(2)])


# ----------------------------------------------------------------------------- log-probs of answers


def _pairs(tokenizer, stage: str = "dpo"):
    rows = [
        {
            "messages": [{"role": "user", "content": q}],
            "tools": None,
            "chosen": {"role": "assistant", "content": a},
            "rejected": {"role": "assistant", "content": "the lazy dog"},
        }
        for q, a in QA
    ]
    run = run_config("m", [{"path": "x.jsonl", "ranking": True}], "out", "x", stage=stage)
    enc = STAGES[stage].encode_rows(rows, tokenizer, run)
    return enc, STAGES[stage].collate(enc, tokenizer.pad_token_id)


def test_pairs_encode_prompt_masked_and_batch_chosen_first(tokenizer):
    enc, batch = _pairs(tokenizer)
    assert set(enc) == {"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels", "row_of_example"}
    for ci, cl, ri, rl in zip(
        enc["chosen_input_ids"], enc["chosen_labels"], enc["rejected_input_ids"], enc["rejected_labels"]
    ):
        prompt = next(i for i, y in enumerate(cl) if y != IGNORE_INDEX)
        assert ci[:prompt] == ri[:prompt]  # one prompt, two answers
        assert cl[prompt:] == ci[prompt:] and all(y == IGNORE_INDEX for y in cl[:prompt])
        assert "the lazy dog" in tokenizer.decode([y for y in rl if y != IGNORE_INDEX])
    n = len(QA)
    assert batch["input_ids"].shape[0] == 2 * n
    assert batch["input_ids"][0, : len(enc["chosen_input_ids"][0])].tolist() == enc["chosen_input_ids"][0]
    assert batch["input_ids"][n, : len(enc["rejected_input_ids"][0])].tolist() == enc["rejected_input_ids"][0]


def test_kto_pairs_each_prompt_with_the_next_rows_answer(tokenizer):
    rows = [
        {
            "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
            "tools": None,
            "kto_tag": i % 2 == 0,
        }
        for i, (q, a) in enumerate(QA)
    ]
    run = run_config("m", [{"path": "x.jsonl", "columns": {"kto_tag": "label"}}], "out", "x", stage="kto")
    enc = STAGES["kto"].encode_rows(rows, tokenizer, run)
    answer = [tokenizer.decode([y for y in lab if y != IGNORE_INDEX]) for lab in enc["labels"]]
    kl_answer = [tokenizer.decode([y for y in lab if y != IGNORE_INDEX]) for lab in enc["kl_labels"]]
    assert kl_answer == answer[1:] + answer[:1]
    assert enc["kto_tag"] == [True, False, True, False, True]


@pytest.mark.parametrize("freeze_head", [True, False])
def test_sequence_logps_match_transformers(tiny_model, tokenizer, freeze_head, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 7 * 300)  # several chunks
    model = AutoModelForCausalLM.from_pretrained(tiny_model("llama"), dtype=torch.float32)
    model.get_output_embeddings().requires_grad_(not freeze_head)
    _, batch = _pairs(tokenizer)
    weights = torch.linspace(-1, 1, batch["input_ids"].shape[0])  # a different upstream gradient per row
    sums, counts = losses.sequence_logps(model, batch)
    (sums * weights).sum().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    token = torch.log_softmax(logits, -1).gather(2, labels.clamp(min=0)[..., None]).squeeze(-1)
    want_sums = (token * keep).sum(-1)
    (want_sums * weights).sum().backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert counts.tolist() == keep.sum(-1).tolist()
    assert torch.allclose(sums, want_sums, atol=1e-4, rtol=1e-5)
    assert got.keys() == want.keys()
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-6, rtol=1e-4), name


def test_ld_dpo_counts_the_longer_answers_extra_tokens_alpha_times(tiny_model, tokenizer):
    """LD-DPO: per pair, the first min(len chosen, len rejected) answer tokens count whole, the rest alpha times;
    by hand from transformers' logits. alpha 1 is plain log-probabilities."""
    from transformers import AutoModelForCausalLM

    from rayft_core.train.preference import halves, pair_logps

    model = AutoModelForCausalLM.from_pretrained(tiny_model("llama"), dtype=torch.float32)
    _, batch = _pairs(tokenizer)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        token = torch.log_softmax(logits, -1).gather(2, labels.clamp(min=0)[..., None]).squeeze(-1)
        tokens = [token[i][labels[i] != IGNORE_INDEX] for i in range(len(labels))]  # each row's answer tokens
        chosen, rejected = halves(torch.tensor([len(t) for t in tokens]))
        assert (chosen != rejected).any()  # the pairs differ in length: the test means something
        public = torch.minimum(chosen, rejected).repeat(2).tolist()
        want = torch.stack([t[:n].sum() + 0.25 * t[n:].sum() for t, n in zip(tokens, public)])
        sums, counts = pair_logps(model, batch, ld_alpha=0.25)
        assert torch.allclose(sums, want, atol=1e-4)
        assert counts.tolist() == [len(t) for t in tokens]
        assert torch.allclose(pair_logps(model, batch, ld_alpha=1.0)[0], losses.sequence_logps(model, batch)[0])


def test_dpo_step_zero_with_adapter_is_ln2(tiny_model):
    """With the LoRA adapter at its zero init, the policy is the reference (the adapter disabled)."""
    from rayft_core.model.adapters import apply_tuning
    from rayft_core.model.loader import load_model

    tokenizer = load_tokenizer_for(tiny_model("llama"))
    run = run_config(tiny_model("llama"), [{"path": "x.jsonl", "ranking": True}], "out", "x", stage="dpo")
    model = apply_tuning(load_model(run, tokenizer), run)
    enc, batch = _pairs(tokenizer)
    loss, metrics = STAGES["dpo"].objective(run, tokenizer, torch.device("cpu"), {})(model, batch)
    assert STAGES["dpo"].loss_units(enc) == len(QA)  # the loss is summed over pairs; the loop divides
    assert loss.item() / len(QA) == pytest.approx(math.log(2), abs=1e-5)
    assert metrics["rewards/margins"][0] == 0.0
    loss.backward()  # the gradient reaches the adapter
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_bco_by_hand_its_running_baseline_and_the_dpo_step_that_adds_it(tiny_model):
    from rayft_core.model.adapters import apply_tuning
    from rayft_core.model.loader import load_model
    from rayft_core.train.dpo import RewardBaseline, bco_loss

    baseline = RewardBaseline()
    assert baseline.update(T([1.0, 3.0, -1.0, 0.0]), T([1.0, 1.0])) == pytest.approx(0.75)  # chosen, then rejected
    assert baseline.update(T([2.0, 9.0, 0.0, 9.0]), T([1.0, 0.0])) == pytest.approx((0.75 + 1.0) / 2)  # valid only
    again = RewardBaseline()
    again.restore(baseline.state())  # as a checkpoint carries it
    assert (again.mean, again.count) == (baseline.mean, 2.0)
    want = -math.log(SIGMOID(0.1 * 0.5 - 0.3)) - math.log(SIGMOID(-(0.1 * -0.2 - 0.3)))
    assert bco_loss(T([0.5]), T([-0.2]), 0.1, 0.3).item() == pytest.approx(want, rel=1e-6)

    # at step 0 the policy is the reference: rewards 0, baseline 0, BCO 2 ln 2, DPO ln 2, weighted (1 + 2w) ln2 / (1 + w)
    tokenizer = load_tokenizer_for(tiny_model("llama"))
    run = run_config(tiny_model("llama"), [{"path": "x.jsonl", "ranking": True}], "out", "x", stage="dpo")
    run.stage.bco_weight = 0.5
    model = apply_tuning(load_model(run, tokenizer), run)
    _, batch = _pairs(tokenizer)
    objective = STAGES["dpo"].objective(run, tokenizer, torch.device("cpu"), {})
    loss, _ = objective(model, batch)
    assert loss.item() / len(QA) == pytest.approx(2 * math.log(2) / 1.5, abs=1e-5)
    assert objective.state() == {"bco_mean": 0.0, "bco_count": 1.0}


def test_value_head_scores_last_real_token_and_round_trips(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer_for(tiny_model("llama"))
    lm = AutoModelForCausalLM.from_pretrained(tiny_model("llama"), dtype=torch.float32)
    model = ValueHeadModel(lm, hidden_size_of(lm.config)).eval()
    _, batch = _pairs(tokenizer)
    with torch.no_grad():
        scores = model.score(batch)
        one = model.score({k: v[:1, : int(batch["attention_mask"][0].sum())] for k, v in batch.items()})
    assert scores[0].item() == pytest.approx(one.item(), abs=1e-5)  # padding after the row changes nothing
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, _ = load_reward_model(tmp_path)
    with torch.no_grad():
        assert torch.allclose(loaded.score(batch), scores, atol=1e-5)


def test_hidden_size_of_refuses_models_without_one():
    from transformers import PretrainedConfig

    assert hidden_size_of(PretrainedConfig()) is None
    assert hidden_size_of(PretrainedConfig(hidden_size=64)) == 64
