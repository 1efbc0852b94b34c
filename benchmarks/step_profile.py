"""/work/main/.venv/bin/python benchmarks/step_profile.py --model DIR [--method lora] [--threads 2] [--steps 8] [--gc]

Where one training step's time goes, on a real model in one process: forward (with the loss), backward and the
optimizer step, timed apart, for four ways of running the same step on the same batch:

- hf: plain torch, the model's own loss (full logits) and torch.optim.AdamW: what HF Trainer runs;
- rayft-loss: plain torch with rayft's chunked loss (rayft_core.train.losses: logits only at labelled positions);
- ds-zero0 / ds-zero2: rayft's loss inside a DeepSpeed engine (one process, gloo);
- ds-zero0-no-ar: ZeRO-0 without DeepSpeed's one-rank gradient all-reduce, as rayft trains one worker.

The batch: --batch rows of alpaca_en_demo from --first, encoded as rayft's sft stage does (chatml, cutoff 256).
--gc: with gradient checkpointing (non-reentrant, as rayft turns it on), to see what recomputing costs.
Median of --steps steps after 2 warm-up steps. The model: SmolLM2-135M-Instruct as
`../shared/fixtures/real-model.sh DIR` builds it (any causal LM directory works).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

DATA = Path("/work/shared/data/alpaca_en_demo.json")


def make_run(model: Path, method: str, zero: int, gc: bool = False):
    from rayft_core.config import validate_config

    return validate_config(
        {
            "model": {
                "name_or_path": str(model),
                "template": "chatml",
                "dtype": "float32",
                "gradient_checkpointing": gc,
            },
            "tuning": {"method": "lora", "rank": 16, "target": "all"} if method == "lora" else {"method": "full"},
            "data": {"train": [{"path": str(DATA), "format": "alpaca"}], "max_seq_len": 256},
            "train": {"micro_batch_size": 4, "learning_rate": 1e-4},
            "deepspeed": {"zero_stage": zero},
            "output": {"storage_path": "/tmp/step-profile", "name": "x"},
        }
    )


def make_batch(run, tokenizer, first: int, rows: int) -> dict[str, torch.Tensor]:
    from rayft_core.data.collate import pad_batch
    from rayft_core.train.stages import STAGES

    raw = json.loads(DATA.read_text())[first : first + rows]
    aligned = [
        {
            "messages": [
                {"role": "user", "content": (r["instruction"] + "\n" + r["input"]).strip()},
                {"role": "assistant", "content": r["output"]},
            ],
            "tools": None,
        }
        for r in raw
    ]
    enc = STAGES["sft"].encode_rows(aligned, tokenizer, run)
    return pad_batch({"input_ids": enc["input_ids"], "labels": enc["labels"]}, tokenizer.pad_token_id)


def build(run, tokenizer):
    from rayft_core.model.adapters import apply_tuning
    from rayft_core.model.loader import load_model

    torch.manual_seed(0)
    return apply_tuning(load_model(run, tokenizer), run)


def timed(steps: int, forward, backward, step) -> dict[str, float]:
    phases: dict[str, list[float]] = {"forward": [], "backward": [], "step": []}
    for i in range(steps + 2):
        t0 = time.perf_counter()
        loss = forward()
        t1 = time.perf_counter()
        backward(loss)
        t2 = time.perf_counter()
        step()
        t3 = time.perf_counter()
        if i >= 2:
            for name, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2)):
                phases[name].append(dt * 1000)
    out = {name: statistics.median(v) for name, v in phases.items()}
    out["total"] = sum(out.values())
    return out


def profile_plain(run, tokenizer, batch, steps: int, own_loss: bool) -> dict[str, float]:
    from rayft_core.train.losses import compute_causal_lm_loss

    model = build(run, tokenizer).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def forward():
        if own_loss:
            return compute_causal_lm_loss(model, batch)[0]
        return model(**batch).loss

    def step():
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return timed(steps, forward, lambda loss: loss.backward(), step)


def profile_deepspeed(run, tokenizer, batch, steps: int, allreduce: bool = True) -> dict[str, float]:
    import deepspeed

    from rayft_core.model.loader import resolve_dtype
    from rayft_core.train.deepspeed_config import build_deepspeed_config
    from rayft_core.train.losses import compute_causal_lm_loss
    from rayft_core.train.optim import build_optimizer

    model = build(run, tokenizer)
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=build_optimizer(model, run),
        config=build_deepspeed_config(run, resolve_dtype(run.model.dtype), 1),
        dist_init_required=False,
    )
    engine.train()
    engine.enable_backward_allreduce = allreduce  # off: as rayft runs one ZeRO-0 worker (session.setup)
    return timed(steps, lambda: compute_causal_lm_loss(engine.module, batch)[0], engine.backward, engine.step)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[2])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--method", choices=["lora", "full"], default="lora")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--first", type=int, default=0, help="the batch's first row in alpaca_en_demo")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--gc", action="store_true", help="gradient checkpointing on")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import deepspeed

    from rayft_core.model.loader import load_tokenizer

    deepspeed.init_distributed(dist_backend="gloo")
    run = make_run(args.model, args.method, 0, args.gc)
    tokenizer = load_tokenizer(run.model)
    batch = make_batch(run, tokenizer, args.first, args.batch)
    tokens = int(batch["attention_mask"].sum())
    gc = ", gradient checkpointing" if args.gc else ""
    print(f"{args.method}, {args.threads} threads, batch {tuple(batch['input_ids'].shape)}, {tokens} tokens{gc}")
    results = {
        "hf": profile_plain(run, tokenizer, batch, args.steps, own_loss=False),
        "rayft-loss": profile_plain(run, tokenizer, batch, args.steps, own_loss=True),
        "ds-zero0": profile_deepspeed(run, tokenizer, batch, args.steps),
        "ds-zero0-no-ar": profile_deepspeed(run, tokenizer, batch, args.steps, allreduce=False),
        "ds-zero2": profile_deepspeed(make_run(args.model, args.method, 2, args.gc), tokenizer, batch, args.steps),
    }
    print(f"{'ms (median)':14}" + "".join(f"{p:>10}" for p in ("forward", "backward", "step", "total", "tokens/s")))
    for name, phases in results.items():
        cells = [f"{phases[p]:10.1f}" for p in ("forward", "backward", "step", "total")]
        print(f"{name:14}" + "".join(cells) + f"{tokens / phases['total'] * 1000:10.0f}")


if __name__ == "__main__":
    main()
