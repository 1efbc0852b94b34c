"""RLHF: the memory of model sharing, and where a PPO/GRPO iteration spends its time.

    .venv/bin/python benchmarks/rlhf.py memory [--hidden 1024 --layers 8]
    .venv/bin/python benchmarks/rlhf.py phases [--iterations 6]

memory: peak RSS of one PPO learner step (rollout pass, reference pass, reward pass, policy+value update)
in two layouts, each in a fresh process, over the same random Llama:
  - shared (rayft): one base; policy LoRA + value head + the reward model's LoRA + head on it;
    reference = adapters off;
  - separate (four models, as OpenRLHF places them): policy = base + LoRA, critic = a second base +
    value head (LoRA), reward model = a third base + LoRA + head, reference = a fourth base.
  Printed: peak RSS over the process's RSS after imports, and shared/separate (goal: at most 0.4x).

phases: `rayft train` of stage grpo (vLLM rollouts when installed and the head size fits, else
transformers) on a tiny Llama with 2 learner workers, with 1 and then 2 rollout engines; the mean
seconds per iteration of each phase (generate, score, learn, sync), from metrics.jsonl, skipping the
first iteration (warm-up).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path


def build(work: Path, hidden: int, layers: int, vocab: int) -> Path:
    from rayft_core.model.tiny import build_tiny_model, build_tokenizer

    texts = [f"question {i}: what is {i} plus {i}? answer: {2 * i}." for i in range(4000)]
    tok = build_tokenizer(texts, vocab_size=vocab, save_dir=work / "tokenizer")
    return build_tiny_model(
        "llama",
        tok,
        work / "base",
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(hidden // 256, 1),
        initializer_range=0.2,
    )


# ----------------------------------------------------------------------------- memory


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


def _layout(kind: str, base: str, reward: str) -> None:
    """One learner step in a fresh process; prints {"params": N, "peak_mb": M} as JSON."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from rayft_core.config import validate_config
    from rayft_core.data.collate import pad_batch
    from rayft_core.model.value_head import ValueHeadModel, load_value_head
    from rayft_core.train.losses import sequence_logps

    torch.manual_seed(0)
    after_imports = _current_rss_mb()
    lora = LoraConfig(r=8, target_modules=["q_proj", "v_proj"])
    batch = pad_batch({"input_ids": [list(range(5, 69))] * 4, "labels": [[-100] * 32 + list(range(37, 69))] * 4}, 0)

    def load():
        return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)

    if kind == "shared":
        from rayft_core.train.rl_model import RlModel

        run = validate_config(
            {
                "model": {"name_or_path": base},
                "tuning": {"method": "lora", "rank": 8, "dropout": 0.0, "target": ["q_proj", "v_proj"]},
                "stage": {"name": "ppo", "reward_model": reward, "max_new_tokens": 32},
                "data": {"train": [{"path": "unused.json", "format": "alpaca"}], "max_seq_len": 128},
            }
        )
        model = RlModel.build(load(), run)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        with torch.no_grad():
            model.forward_policy(batch), model.reference_logps(batch), model.reward_scores(batch)
        logps, values, _ = model.forward_policy(batch)
        (logps.sum() + values.sum()).backward()
    else:
        policy = get_peft_model(load(), lora)
        critic = ValueHeadModel(get_peft_model(load(), lora), policy.config.hidden_size)
        reward_model = ValueHeadModel(PeftModel.from_pretrained(load(), reward), policy.config.hidden_size)
        reward_model.v_head = load_value_head(reward, policy.config.hidden_size)
        reference = load().requires_grad_(False)
        models = (policy, critic, reward_model, reference)
        params = [p for m in (policy, critic) for p in m.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        with torch.no_grad():
            (
                sequence_logps(policy, batch),
                critic.score(batch),
                sequence_logps(reference, batch),
                reward_model.score(batch),
            )
        (sequence_logps(policy, batch)[0].sum() + critic.score(batch).sum()).backward()
        model = torch.nn.ModuleList(models)
    optimizer.step()
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    print(json.dumps({"params": total, "peak_mb": _rss_mb() - after_imports}))


def memory(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    from tests.conftest import make_reward_adapter  # the format `stage: rm` writes, random weights

    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        base = build(work, args.hidden, args.layers, args.vocab)
        reward = make_reward_adapter(base, AutoTokenizer.from_pretrained(work / "tokenizer"), work / "reward")
        results = {}
        for kind in ("shared", "separate"):
            out = (
                subprocess.run(
                    [sys.executable, __file__, "_layout", kind, str(base), str(reward)],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            results[kind] = json.loads(out)
        vocab = json.loads((base / "config.json").read_text())["vocab_size"]
    s, p = results["shared"], results["separate"]
    print(f"\nLlama hidden {args.hidden}, {args.layers} layers, vocab {vocab}, float32, one PPO learner step")
    print(f"{'layout':<10} {'parameters held':>16} {'peak RSS over imports':>22}")
    for kind, r in results.items():
        print(f"{kind:<10} {r['params']:>16,} {r['peak_mb']:>19,.0f} MB")
    print(
        f"shared / separate: parameters {s['params'] / p['params']:.2f}x, peak memory {s['peak_mb'] / p['peak_mb']:.2f}x "
        "(goal: at most 0.4x)"
    )


# ----------------------------------------------------------------------------- phases


def phases(args: argparse.Namespace) -> None:
    import ray

    from rayft.cluster import connect
    from rayft.train import train
    from rayft_core.config import validate_config
    from rayft_core.train.outputs import read_metrics

    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        base = build(work, 128, 2, 500)
        prompts = work / "prompts.jsonl"
        prompts.write_text(
            "".join(
                json.dumps({"instruction": f"What is {a} plus {b}?", "output": str(a + b)}) + "\n"
                for a in range(16)
                for b in range(16)
            )
        )
        connect(num_cpus=6)
        rows = {}
        for engines in (1, 2):
            run = validate_config(
                {
                    "model": {"name_or_path": str(base)},
                    "tuning": {"method": "lora", "rank": 8, "dropout": 0.0},
                    "stage": {
                        "name": "grpo",
                        "group_size": 8,
                        "max_new_tokens": args.max_new_tokens,
                        "reward_functions": [{"function": "number_match"}],
                        "rollout": {"engine": args.engine, "num_engines": engines},
                    },
                    "data": {"train": [{"path": str(prompts), "format": "alpaca"}], "max_seq_len": 64},
                    "train": {
                        "max_steps": args.iterations,
                        "micro_batch_size": 8,
                        "gradient_accumulation_steps": 4,
                        "learning_rate": 1e-3,
                        "logging_steps": 1,
                    },
                    "cluster": {"num_workers": 2},
                    "output": {"storage_path": str(work / "runs"), "name": f"e{engines}"},
                }
            )
            out = Path(train(run, progress=False))
            metrics = read_metrics(out)[1:]
            engine = json.loads((out / "summary.json").read_text())["rollouts"]["engine"]
            rows[engines] = {
                k: sum(m[k] for m in metrics) / len(metrics)
                for k in (
                    "time/generate_s",
                    "time/score_s",
                    "time/learn_s",
                    "time/sync_s",
                    "time/iteration_s",
                    "perf/rollout_tokens_per_s",
                )
            }
        ray.shutdown()
    print(
        f"\ngrpo, tiny Llama (hidden 128), 2 learners x 32 responses of up to {args.max_new_tokens} tokens per "
        f"iteration, {engine} rollouts; mean of iterations 2..{args.iterations}"
    )
    print(f"{'engines':<8}" + "".join(f"{k.split('/')[1]:>22}" for k in rows[1]))
    for engines, r in rows.items():
        print(f"{engines:<8}" + "".join(f"{v:>22.3f}" for v in r.values()))
    print(
        f"2 engines / 1: generate {rows[2]['time/generate_s'] / rows[1]['time/generate_s']:.2f}x, "
        f"iteration {rows[2]['time/iteration_s'] / rows[1]['time/iteration_s']:.2f}x"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_layout":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        _layout(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--hidden", type=int, default=1024)
    m.add_argument("--layers", type=int, default=8)
    m.add_argument("--vocab", type=int, default=8000)
    p = sub.add_parser("phases")
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--engine", default="auto", choices=["auto", "vllm", "hf"])
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    (memory if args.what == "memory" else phases)(args)


if __name__ == "__main__":
    main()
