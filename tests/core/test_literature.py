"""Methods from the literature, each a plug-in of rayft_core.literature named by module reference: SIFT's budget of
entries chosen by gradient magnitude, OwLore's outlier-weighted layer sampling with projected gradients."""

from __future__ import annotations

import pytest
import torch

from rayft_core.model.checks import _sft_batch
from rayft_core.model.loader import load_tokenizer
from rayft_core.train.losses import compute_causal_lm_loss
from rayft_core.train.optim import build_optimizer
from rayft_core.train.stages import STAGES
from tests.core.test_block_methods import _steps
from tests.helpers import sft_engine_and_steps, unit_run


def _run(tiny_model, workdir, tuning):
    return unit_run(tiny_model("llama"), workdir, tuning)


def _built(run):
    tok = load_tokenizer(run.model)
    model = STAGES["sft"].build_model(run, tok)
    return model, build_optimizer(model, run), _sft_batch(STAGES["sft"], tok, run)


def test_sift_trains_the_entries_with_the_largest_first_gradients_and_only_those(tiny_model, workdir):
    run = _run(tiny_model, workdir, {"method": "rayft_core.literature.sift:SparseFineTuning", "density": 0.05})
    model, optimizer, batch = _built(run)
    weight, embeddings = model.model.layers[1].mlp.down_proj.weight, model.model.embed_tokens.weight
    start, embeddings_start = weight.detach().clone(), embeddings.detach().clone()
    loss, _ = compute_causal_lm_loss(model, batch)
    loss.backward()
    first = weight.grad.detach().abs().reshape(-1).clone()
    optimizer.step()
    optimizer.zero_grad()
    k = round(0.05 * weight.numel())
    chosen = optimizer.index[weight]
    assert len(chosen) == k and first[chosen].min() >= first.topk(k).values.min()  # the top-k by |gradient|
    for _ in range(3):
        loss, _ = compute_causal_lm_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    moved = (weight.detach() != start).reshape(-1).nonzero().reshape(-1)
    assert set(moved.tolist()) <= set(chosen.tolist()) and len(moved) > k // 2  # the same entries, step after step
    assert optimizer.state[weight]["m"].numel() == k
    assert torch.equal(embeddings, embeddings_start) and not embeddings.requires_grad  # the embeddings stay


def test_sifts_chosen_entries_come_back_from_a_deepspeed_checkpoint(tiny_model, tmp_path):
    run = _run(tiny_model, tmp_path, {"method": "rayft_core.literature.sift:SparseFineTuning", "density": 0.05})
    trained, engine = sft_engine_and_steps(run, 3)
    trained.save_checkpoint(str(tmp_path / "ckpt"), tag="t")
    restored = engine()
    restored.load_checkpoint(str(tmp_path / "ckpt"), tag="t")
    pairs = zip(trained.optimizer.param_groups[0]["params"], restored.optimizer.param_groups[0]["params"])
    assert all(torch.equal(trained.optimizer.index[p], restored.optimizer.index[q]) for p, q in pairs)


def test_owlore_draws_layers_by_their_outliers_and_projects_their_gradients(tiny_model, workdir):
    pytest.importorskip("galore_torch")
    tuning = {"method": "rayft_core.literature.owlore:OwLore", "sampled_layers": 1, "switch_interval": 1, "rank": 4}
    run = _run(tiny_model, workdir, tuning)
    tok = load_tokenizer(run.model)
    model = STAGES["sft"].build_model(run, tok)
    with torch.no_grad():  # layer 1 gets heavy tails: a few of its weights 50 x the others
        for p in model.model.layers[1].parameters():
            if p.ndim == 2:
                p.view(-1)[::50] *= 50
    optimizer = build_optimizer(model, run)
    ratios = optimizer.outlier_ratios
    assert ratios[1] > 5 * ratios[0]
    batch = _sft_batch(STAGES["sft"], tok, run)
    drawn = []
    for _ in range(30):  # a round a step: which layer trains, read from what requires gradients
        drawn.append([i for i, layer in enumerate(model.model.layers) if next(layer.parameters()).requires_grad])
        loss, _ = compute_causal_lm_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(len(d) == 1 for d in drawn)  # sampled_layers at a time
    assert sum(d == [1] for d in drawn) > 20  # the heavy-tailed layer is drawn most often
    assert model.lm_head.weight.requires_grad and model.model.embed_tokens.weight.requires_grad  # always train
    layer = drawn[-1][0]
    q = model.model.layers[layer].self_attn.q_proj.weight
    assert 4 in optimizer.state[q]["exp_avg"].shape  # the moments of a rank-4 projection, not of the whole matrix


def _mezo(tiny_model, workdir, **train):
    tuning = {"method": "rayft_core.literature.mezo:MeZO", "eps": 1e-3}
    return unit_run(tiny_model("llama"), workdir, tuning, train={"learning_rate": 1e-3, **train})


def test_mezo_steps_along_a_seeded_direction_by_the_loss_difference_without_gradients(tiny_model, workdir):
    import copy

    run = _mezo(tiny_model, workdir)
    model, optimizer, batch = _built(run)
    objective = STAGES["sft"].objective(run, load_tokenizer(run.model), torch.device("cpu"), {})
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    names = {id(p): n for n, p in model.named_parameters()}
    generator = torch.Generator().manual_seed(run.train.seed * 1_000_003)  # step 0's seed: z drawn again by hand
    z = {names[id(p)]: torch.randn(p.shape, generator=generator) for p in params}

    def loss_at(sign):  # the loss per labelled token at theta + sign * eps * z, on a copy
        moved = copy.deepcopy(model)
        with torch.no_grad():
            for n, p in moved.named_parameters():
                if n in z:
                    p.add_(z[n], alpha=sign * 1e-3)
            total, metrics = objective(moved, batch)
        return float(total) / metrics["loss"][1]

    loss, metrics = optimizer.forward_only(model, objective, batch)
    assert not loss.requires_grad  # forward passes under no_grad: no graph, no activations kept
    assert all(torch.allclose(p, start[n], atol=1e-6) for n, p in model.named_parameters())  # theta restored
    g = (loss_at(+1) - loss_at(-1)) / 2e-3
    assert abs(optimizer.projected_grad - g) < 1e-3 * max(1.0, abs(g))
    optimizer.step()
    for n, p in model.named_parameters():
        assert torch.allclose(p, start[n] - 1e-3 * optimizer.projected_grad * z[n], atol=1e-6), n
    assert all(p.grad is None for p in model.parameters())


def test_mezo_trains_in_the_supervised_loop_on_a_deepspeed_engine(tiny_model, tmp_path):
    """The loop's zeroth-order path (rayft_core.train.loop): forward passes, DeepSpeed's step and schedule; the
    loss falls, and no gradient is ever held."""
    from rayft_core.model.checks import _single_process_group
    from rayft_core.train.loop import train_worker
    from rayft_core.train.plan import TrainPlan
    from tests.helpers import QA

    _single_process_group()
    run = _mezo(tiny_model, tmp_path, max_steps=40, logging_steps=1, learning_rate=2e-3)
    tok = load_tokenizer(run.model)
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "tools": None}
        for q, a in QA
    ]
    encoded = STAGES["sft"].encode_rows(rows, tok, run)
    batch = {k: encoded[k][:4] for k in ("input_ids", "labels")}
    records: list[dict] = []
    plan = TrainPlan(micro_batches_per_epoch=1, num_epochs=40, total_steps=40)
    train_worker(
        run, plan, lambda epoch: iter([batch]), lambda record, checkpoint_dir=None: records.append(record), 0, 1
    )
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5  # it learns, without a backward pass
    assert all(r["train/grad_norm"] > 0 for r in records)  # |projected gradient|: MeZO's estimate of the norm


def test_loramoe_experts_start_at_the_base_mix_by_their_router_and_balance_it(tiny_model, workdir):
    from rayft_core.literature.loramoe import Experts

    layer = torch.nn.Linear(16, 8)
    experts = Experts(layer, experts=4, rank=2, alpha=4.0, balance_coef=0.1).train()
    with torch.no_grad():
        experts.B.normal_()
    x = torch.randn(3, 5, 16)
    out = experts(x)
    gates = torch.softmax(experts.router(x), -1)
    by_hand = sum(gates[..., e : e + 1] * (x @ experts.A[e].T @ experts.B[e].T) for e in range(4)) * 2.0
    assert torch.allclose(out, by_hand, atol=1e-5)
    (out.sum() * 0).backward()  # only the balancing loss reaches the router: coef x CV^2 of the importance

    def cv2(router_weight):  # the squared coefficient of variation of the experts' summed gates
        importance = torch.softmax(x @ router_weight.T, -1).reshape(-1, 4).sum(0)
        return importance.var(unbiased=False) / importance.mean() ** 2

    router = experts.router.weight.detach().requires_grad_()
    (want,) = torch.autograd.grad(0.1 * cv2(router), router)
    assert cv2(router) > 0 and torch.allclose(experts.router.weight.grad, want, atol=1e-6)


def test_a_loramoe_run_trains_experts_only_and_reloads_with_them(tiny_model, workdir, tmp_path):
    from transformers import AutoModelForCausalLM

    from rayft_core.literature.loramoe import load
    from rayft_core.train.outputs import save_model

    run = unit_run(tiny_model("llama"), workdir, {"method": "rayft_core.literature.loramoe:LoRAMoE", "rank": 4})
    fresh, _, batch = _built(run)
    base = AutoModelForCausalLM.from_pretrained(tiny_model("llama")).eval()
    ids = batch["input_ids"]
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-5)  # B = 0
    model, _, changed = _steps(run, 4)  # the loss falls
    moved = set().union(*changed)
    assert moved and all(".loramoe." in n for n in moved) and any("router" in n for n in moved)
    assert len({n.split(".loramoe.")[0] for n in moved}) == 6  # gate, up and down projections of 2 layers
    save_model(model, load_tokenizer(run.model), run, tmp_path / "out")
    again = load(tmp_path / "out").eval()
    with torch.no_grad():
        assert torch.allclose(again(input_ids=ids).logits, model.eval()(input_ids=ids).logits, atol=1e-5)
