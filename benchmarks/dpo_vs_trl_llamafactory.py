"""/work/main/.venv/bin/python benchmarks/dpo_vs_trl_llamafactory.py [--steps 20] [--wait-idle [MAX_S]] [--retries N]
                                                                   [--rayft-workers 1 2] [--skip trl llamafactory]

DPO with LoRA, rayft (`stage: dpo`) vs TRL 1.16 (DPOTrainer + PEFT) vs LLaMA-Factory 0.9.5 (`stage: dpo`), on this
CPU machine, one after the other (never concurrently).

All three: a 19.5M-parameter Llama (hidden 64, 2 layers, untied head, random init) saved with the Qwen2.5
tokenizer files (vocab 151,665), as benchmarks/sft_lora_vs_llamafactory.py builds it; LoRA r=8 alpha=16 dropout 0
on all linear layers but the head; reference = the base with the adapter disabled; sigmoid loss, beta 0.1, no
label smoothing, no SFT term; micro-batch 2 pairs (4 sequences per forward pass); --steps optimizer steps, no
gradient accumulation; lr 5e-4 cosine, no warmup, AdamW without weight decay, grad-norm clip 1.0; fp32; seed 42;
no shuffling (each tool trains the same first steps x 2 pairs, in file order); one process (worker) each.
rayft renders with the tokenizer's Qwen2.5 chat template, TRL with the same (conversational rows), LLaMA-Factory
with `template: qwen` (same text and default system prompt).

Data: dpo_en_demo (LLaMA-Factory's, 300 sharegpt ranking rows, ../shared/data), keeping, in file order, only the
pairs whose prompt+chosen and prompt+rejected both fit in --max-len - 8 tokens under the Qwen2.5 template (about
half of them at 512). The three tools truncate long pairs differently (LLaMA-Factory shares the cutoff between
prompt and answers, TRL cuts prompt+answer from the end and drops pairs whose prompt alone fills max_length,
rayft cuts each conversation keeping a proportional answer share), so unfiltered rows would not be the same
training data; filtered, every tool trains exactly the same token sequences, which the table checks (tokens
trained). rayft and LLaMA-Factory read it through the same dataset_info.json entry (dpo_en_demo's, another file
name); TRL reads the same rows converted to its conversational preference format (prompt/chosen/rejected lists of
role/content messages; a sharegpt system turn becomes a system message).

Defaults are tool defaults otherwise: LLaMA-Factory and TRL keep their default gradient checkpointing (rayft's is
off; here it recomputes only the two small decoder layers), rayft runs ZeRO-0. TRL 1.16 always computes log-probs
through its fused LM head; without Triton (on CPU) that head scores every position, prompt and padding included,
in vocabulary chunks, with entropy, mean logit and top-1 metrics, and recomputes them in backward. LLaMA-Factory
materialises the full fp32 logits of the 4 sequences. rayft scores the answer positions only.

Each command is measured as a whole process, start to exit (_peer.measure): wall time; peak RSS and PSS summed
over its process tree (every process of its session, Ray's included); CPU seconds of that tree and of every other
process meanwhile ("contention": the other processes' cores in use on average; above 0.25 a run counts as
contended, and --retries runs it again after --wait-idle, keeping the least contended attempt: the machine is
shared, and a low load average before a run does not stop other work from starting during it). Training time is
the loop only, startup excluded: rayft from metrics.jsonl (each logging window's duration = its pairs / its
pairs/s), TRL and LLaMA-Factory the HF Trainer's train_runtime. Pairs/s = pairs trained / training time;
tokens/s = non-padding tokens of chosen and rejected sequences (prompt included) / training time: rayft's
perf/tokens_per_s, TRL's num_tokens (attention_mask sum), LLaMA-Factory's num_input_tokens_seen
(include_num_input_tokens_seen: non_padding). Sanity: the last logged window's loss (log 2 = 0.693 at step 0,
where the adapter is zero and policy = reference), reward accuracy and margin; with the same pairs in the same
order, the three should agree to about 4 decimals.

rayft with 2 workers (an extra line, with --rayft-workers 1 2): same micro-batch per worker, half the optimizer
steps, so it trains as many pairs; pairs are split between the workers by Ray Data, so not the same first N.

Venvs: LLaMA-Factory's /tmp/lf-venv (_peer.ensure_lf_venv, as the SFT benchmark); TRL's /tmp/trl-venv
(_peer.ensure_trl_venv: CPU torch 2.13.0, then trl==1.16.* and peft constrained to it), never rayft's .venv.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import textwrap
from collections.abc import Callable
from pathlib import Path

import yaml
from _peer import (
    LF_VENV,
    TOKENIZER,
    TRL_VENV,
    add_idle_arguments,
    build_model,
    ensure_lf_venv,
    ensure_trl_venv,
    fresh_dir,
    lf_trainer_results,
    measure,
    wait_idle,
)

ROOT = Path(__file__).resolve().parents[1]
RAYFT = ROOT / ".venv" / "bin" / "rayft"
DATA_DIR = Path("/work/shared/data")
WORK = Path("/tmp/dpo-bench")
RESULTS = ROOT / "benchmarks" / "results"
RANK, ALPHA, BATCH, LR, BETA, SEED = 8, 16, 2, 5e-4, 0.1, 42
DATASET = "dpo_bench"  # the filtered dpo_en_demo, in WORK/data/dataset_info.json
CONTENDED = 0.25  # other processes using more cores than this on average: a contended measurement
MARGIN = 8  # tokens under max_len that a kept pair leaves, in case a template renders a token or two more


def _messages(turns: list[dict]) -> list[dict]:
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    return [{"role": roles[t["from"]], "content": t["value"]} for t in turns]


def write_data(max_len: int, out: Path) -> dict:
    """dpo_en_demo's pairs that fit in max_len - MARGIN tokens, in file order: sharegpt JSON + dataset_info.json
    (for rayft and LLaMA-Factory) and TRL's conversational JSONL of the same rows."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    rows = json.loads((DATA_DIR / "dpo_en_demo.json").read_text())
    kept, lengths = [], []
    for row in rows:
        prompt = _messages(row["conversations"])
        n = [
            len(tok.apply_chat_template(prompt + _messages([row[k]]), tokenize=True, return_dict=True)["input_ids"])
            for k in ("chosen", "rejected")
        ]
        if max(n) <= max_len - MARGIN:
            kept.append(row)
            lengths.append(sum(n))
    out.mkdir(parents=True, exist_ok=True)
    (out / "dpo_bench.json").write_text(json.dumps(kept, ensure_ascii=False, indent=1))
    entry = {**json.loads((DATA_DIR / "dataset_info.json").read_text())["dpo_en_demo"], "file_name": "dpo_bench.json"}
    (out / "dataset_info.json").write_text(json.dumps({DATASET: entry}, indent=2))
    with open(out / "dpo_bench_trl.jsonl", "w") as f:
        for row in kept:
            f.write(
                json.dumps(
                    {
                        "prompt": _messages(row["conversations"]),
                        "chosen": _messages([row["chosen"]]),
                        "rejected": _messages([row["rejected"]]),
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
    return {"rows_in": len(rows), "rows_kept": len(kept), "pair_tokens": lengths}


# TRL's side: a script run by the TRL venv's python, writing the trainer's metrics and log history as JSON.
TRL_SCRIPT = textwrap.dedent("""\
    import json, sys, time
    t0 = time.time()
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer
    import trl

    model_dir, data, out, steps, batch, max_len, rank, alpha, lr, beta, seed, log_steps = sys.argv[1:13]
    print(f"trl {trl.__version__}: imports {time.time() - t0:.1f} s", flush=True)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    args = DPOConfig(
        output_dir=out, max_steps=int(steps), per_device_train_batch_size=int(batch), gradient_accumulation_steps=1,
        learning_rate=float(lr), lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        beta=float(beta), loss_type=["sigmoid"], label_smoothing=0.0, max_length=int(max_len),
        train_sampling_strategy="sequential", logging_steps=int(log_steps), save_strategy="no", report_to="none",
        bf16=False, fp16=False, seed=int(seed), data_seed=int(seed))
    peft_config = LoraConfig(r=int(rank), lora_alpha=int(alpha), lora_dropout=0.0, target_modules="all-linear",
                             task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=args, train_dataset=load_dataset("json", data_files=data, split="train"),
                         processing_class=tok, peft_config=peft_config)
    print(f"trainer ready at {time.time() - t0:.1f} s; training", flush=True)
    result = trainer.train()
    trainer.save_model(out)
    json.dump({"metrics": result.metrics, "log_history": trainer.state.log_history,
               "global_step": trainer.state.global_step}, open(out + "/trl_results.json", "w"), indent=1)
    print(f"done at {time.time() - t0:.1f} s", flush=True)
""")


def run_trl(model: Path, data: Path, steps: int, max_len: int, log_steps: int) -> dict:
    work = WORK / "trl"
    (fresh_dir(work) / "out").mkdir()
    (work / "train_dpo.py").write_text(TRL_SCRIPT)
    args = [
        model,
        data / "dpo_bench_trl.jsonl",
        work / "out",
        steps,
        BATCH,
        max_len,
        RANK,
        ALPHA,
        LR,
        BETA,
        SEED,
        log_steps,
    ]
    env = {"HF_DATASETS_CACHE": str(work / "hf-datasets-cache")}
    res = measure([str(TRL_VENV / "bin" / "python"), "train_dpo.py", *map(str, args)], work, work / "log.txt", env)
    if res["rc"] != 0:
        return res
    out = json.loads((work / "out" / "trl_results.json").read_text())
    logs = [h for h in out["log_history"] if "loss" in h]
    train_s = out["metrics"]["train_runtime"]
    tokens = max(h.get("num_tokens", 0) for h in out["log_history"])
    pairs = out["global_step"] * BATCH
    return {
        **res,
        "train_s": train_s,
        "steps": out["global_step"],
        "pairs_trained": pairs,
        "pairs_per_s": pairs / train_s,
        "train_tokens": int(tokens),
        "tokens_per_s": tokens / train_s,
        **_sanity(logs[-1], ""),
    }


def run_llamafactory(model: Path, data: Path, steps: int, max_len: int, log_steps: int) -> dict:
    work = WORK / "lf"
    fresh_dir(work)
    cfg = {
        "model_name_or_path": str(model),
        "stage": "dpo",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": RANK,
        "lora_alpha": ALPHA,
        "lora_dropout": 0.0,
        "lora_target": "all",
        "pref_beta": BETA,
        "pref_loss": "sigmoid",
        "pref_ftx": 0.0,
        "dpo_label_smoothing": 0.0,
        "dataset": DATASET,
        "dataset_dir": str(data),
        "template": "qwen",
        "cutoff_len": max_len,
        "overwrite_cache": True,
        "disable_shuffling": True,
        "output_dir": str(work / "out"),
        "logging_steps": log_steps,
        "plot_loss": False,
        "overwrite_output_dir": True,
        "report_to": "none",
        "per_device_train_batch_size": BATCH,
        "gradient_accumulation_steps": 1,
        "learning_rate": LR,
        "max_steps": steps,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "bf16": False,
        "fp16": False,
        "include_num_input_tokens_seen": "non_padding",
        "seed": SEED,
    }
    (work / "train.yaml").write_text(yaml.safe_dump(cfg))
    env = {"HF_DATASETS_CACHE": str(work / "hf-datasets-cache")}  # fresh: no cached json/arrow from earlier runs
    res = measure([str(LF_VENV / "bin" / "llamafactory-cli"), "train", "train.yaml"], work, work / "log.txt", env)
    if res["rc"] != 0:
        return res
    results, state, logs, tokens = lf_trainer_results(work / "out")
    pairs = state["global_step"] * BATCH
    train_s = results["train_runtime"]
    return {
        **res,
        "train_s": train_s,
        "steps": state["global_step"],
        "pairs_trained": pairs,
        "pairs_per_s": pairs / train_s,
        "train_tokens": int(tokens),
        "tokens_per_s": tokens / train_s,
        **_sanity(logs[-1], ""),
    }


def run_rayft(model: Path, data: Path, steps: int, max_len: int, log_steps: int, workers: int) -> dict:
    work = WORK / f"rayft-w{workers}"
    fresh_dir(work)
    steps = max(1, steps // workers)  # as many pairs as the 1-process runs
    cfg = {
        "model": {"name_or_path": str(model), "dtype": "float32"},
        "tuning": {"method": "lora", "rank": RANK, "alpha": ALPHA, "dropout": 0.0, "target": "all"},
        "stage": {"name": "dpo", "beta": BETA, "loss_type": "sigmoid", "label_smoothing": 0.0, "ftx": 0.0},
        "data": {"train": [{"dataset": DATASET}], "dataset_dir": str(data), "max_seq_len": max_len, "shuffle": False},
        "train": {
            "max_steps": steps,
            "micro_batch_size": BATCH,
            "gradient_accumulation_steps": 1,
            "learning_rate": LR,
            "lr_scheduler": "cosine",
            "warmup_ratio": 0.0,
            "weight_decay": 0.0,
            "max_grad_norm": 1.0,
            "logging_steps": log_steps,
            "seed": SEED,
        },
        "deepspeed": {"zero_stage": 0},
        "cluster": {"num_workers": workers},
        "output": {"storage_path": str(work / "out"), "name": "run", "overwrite": True},
    }
    (work / "run.yaml").write_text(yaml.safe_dump(cfg))
    res = measure([str(RAYFT), "train", "run.yaml"], work, work / "log.txt", {})
    metrics = work / "out" / "run" / "metrics.jsonl"
    if res["rc"] != 0 or not metrics.is_file():
        return {**res, "error": _error_tail(Path(res["log"]))}
    rows = sorted((json.loads(line) for line in metrics.read_text().splitlines()), key=lambda r: r["step"])
    rows = [r for r in rows if "perf/samples_per_s" in r]
    train_s = tokens = pairs = 0.0
    prev = 0
    for r in rows:  # window duration = its pairs / its pairs/s
        n = (r["step"] - prev) * BATCH * workers
        dt = n / r["perf/samples_per_s"]
        train_s, tokens, pairs, prev = train_s + dt, tokens + r["perf/tokens_per_s"] * dt, pairs + n, r["step"]
    return {
        **res,
        "train_s": train_s,
        "steps": prev,
        "pairs_trained": int(pairs),
        "pairs_per_s": pairs / train_s,
        "train_tokens": round(tokens),
        "tokens_per_s": tokens / train_s,
        **_sanity(rows[-1], "train/"),
    }


def _sanity(log: dict, prefix: str) -> dict:
    """The last logged window's loss, reward accuracy and margin."""
    return {
        "final_loss": log.get(prefix + "loss"),
        "final_reward_acc": log.get(prefix + "rewards/accuracies"),
        "final_reward_margin": log.get(prefix + "rewards/margins"),
    }


def _error_tail(log: Path, lines: int = 40) -> str:
    """The end of a failed run's log, from its last traceback where there is one."""
    text = log.read_text(errors="replace").splitlines() if log.is_file() else []
    starts = [i for i, line in enumerate(text) if "Traceback" in line or re.search(r"\bError\b", line)]
    return "\n".join(text[starts[0] if starts else -lines :][-lines:])


def print_table(results: dict[str, dict]) -> None:
    fields = [
        ("wall_s", "wall time (s)", "{:.1f}"),
        ("train_s", "training loop (s)", "{:.1f}"),
        ("pairs_per_s", "train pairs/s", "{:.2f}"),
        ("tokens_per_s", "train tokens/s", "{:.0f}"),
        ("pairs_trained", "pairs trained", "{:,}"),
        ("train_tokens", "tokens trained", "{:,}"),
        ("steps", "optimizer steps", "{}"),
        ("peak_rss_gb", "peak RSS, tree sum (GB)", "{:.2f}"),
        ("peak_pss_gb", "peak PSS, tree sum (GB)", "{:.2f}"),
        ("cpu_s", "CPU time of tree (s)", "{:.0f}"),
        ("other_cpu_s", "CPU-s of other processes", "{:.0f}"),
        ("contention", "others' cores in use (avg)", "{:.2f}"),
        ("load1_at_start", "load avg at start", "{:.1f}"),
        ("final_loss", "last logged loss", "{:.4f}"),
        ("final_reward_acc", "last reward accuracy", "{:.3f}"),
        ("final_reward_margin", "last reward margin", "{:.4f}"),
    ]
    ratio_keys = ("wall_s", "train_s", "pairs_per_s", "tokens_per_s", "peak_rss_gb", "peak_pss_gb", "cpu_s")
    names = [n for n in results if results[n]["rc"] == 0]
    peers = [p for p in ("trl", "llamafactory") if p in names]
    ours = [n for n in names if n.startswith("rayft")]
    ratios = [(n, p) for n in ours for p in peers]
    short = {"trl": "TRL", "llamafactory": "LF"}
    print(f"{'':27}" + "".join(f"{n:>14}" for n in names) + "".join(f"{n + '/' + short[p]:>16}" for n, p in ratios))
    for key, label, fmt in fields:
        cells = [f"{fmt.format(results[n][key]) if results[n].get(key) is not None else '-':>14}" for n in names]
        for n, p in ratios:
            a, b = results[n].get(key), results[p].get(key)
            cells.append(f"{(f'{a / b:.2f}x' if key in ratio_keys and a and b else ''):>16}")
        print(f"{label:27}" + "".join(cells))
    for n, r in results.items():
        if r["rc"] != 0:
            print(f"\n{n} FAILED (rc {r['rc']}), log {r['log']}:\n{r.get('error') or _error_tail(Path(r['log']))}")


def write_markdown(path: Path, meta: dict, results: dict[str, dict]) -> None:
    ok = {n: r for n, r in results.items() if r["rc"] == 0}
    peers = [p for p in ("trl", "llamafactory") if p in ok]
    head = (
        "| | wall time | training loop | pairs/s | tokens/s | tokens trained | peak RSS (PSS) | CPU-s (others') "
        "| last loss | reward acc |"
    )
    lines = [
        f"DPO with LoRA: {meta['steps']} steps x {BATCH} pairs, max length {meta['max_len']}, "
        f"{meta['data']['rows_kept']} of {meta['data']['rows_in']} dpo_en_demo pairs kept (fit in max length); "
        f"{meta['model_params']:,}-parameter Llama, {meta['machine_cpus']} CPUs.",
        "",
        head,
        "|" + "---|" * 10,
    ]
    labels = {"trl": "TRL 1.16 DPOTrainer", "llamafactory": "LLaMA-Factory 0.9.5"}
    for n, r in ok.items():

        def cell(key: str, fmt: str) -> str:
            ratios = [f"{r[key] / ok[p][key]:.2f}x" for p in peers if ok[p].get(key)] if n.startswith("rayft") else []
            ratio = "/".join(ratios)
            return fmt.format(r[key]) + (f" ({ratio})" if ratio else "")

        label = labels.get(n) or f"rayft, {n.split('-w')[1]} worker(s), ZeRO-0"
        lines.append(
            f"| {label} | {cell('wall_s', '{:.0f} s')} | {cell('train_s', '{:.1f} s')} | "
            f"{cell('pairs_per_s', '{:.2f}')} | {cell('tokens_per_s', '{:.0f}')} | {r['train_tokens']:,} | "
            f"{r['peak_rss_gb']:.1f} GB ({r['peak_pss_gb']:.1f} GB) | "
            f"{r['cpu_s']:.0f} ({r['other_cpu_s']:.0f}) | "
            f"{r['final_loss']:.4f} | "
            f"{r['final_reward_acc']:.2f} |"
        )
    if peers:
        lines += [
            "",
            "Ratios in brackets: rayft / " + " and ".join(labels[p] for p in peers) + ". CPU-s: of the "
            "command's process tree (others': every other process meanwhile; the machine is shared).",
        ]
    for n, r in ok.items():
        if n.startswith("rayft") and int(n.split("-w")[1]) > 1:
            lines += [
                "",
                f"{n}: {r['steps']} optimizer steps of {n.split('-w')[1]} x {BATCH} pairs (as many pairs), "
                "split between the workers by Ray Data, so not the same pairs as the 1-process runs.",
            ]
    lines += [
        "",
        "Wall time: the whole command, start to exit; training loop: the optimizer steps only (rayft: from "
        "its metrics windows; TRL and LLaMA-Factory: the HF Trainer's train_runtime).",
    ]
    for n, r in results.items():
        if r["rc"] != 0:
            lines += ["", f"{n} FAILED (rc {r['rc']}):", "```", r.get("error") or _error_tail(Path(r["log"])), "```"]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[2])
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps of 2 pairs each (per process)")
    ap.add_argument(
        "--max-len",
        type=int,
        default=512,
        help="max tokens of prompt+answer (pairs that do not fit are left out of the data)",
    )
    ap.add_argument("--logging-steps", type=int, default=5)
    ap.add_argument("--rayft-workers", type=int, nargs="*", default=[1, 2], help="rayft runs, one per worker count")
    ap.add_argument("--skip", nargs="*", default=[], choices=["trl", "llamafactory"], help="peers not to run")
    add_idle_arguments(ap)
    ap.add_argument(
        "--retries",
        type=int,
        default=0,
        help=f"run a measurement again (after --wait-idle) up to this "
        f"many times while other processes used > {CONTENDED} cores on average during it; the least "
        "contended attempt is kept",
    )
    args = ap.parse_args()
    if not (TOKENIZER / "tokenizer.json").is_file() or not (DATA_DIR / "dpo_en_demo.json").is_file():
        print(f"skipped: needs the Qwen2.5 tokenizer at {TOKENIZER} and {DATA_DIR / 'dpo_en_demo.json'}")
        return
    WORK.mkdir(parents=True, exist_ok=True)
    model, data = WORK / "model", WORK / "data"
    fresh_dir(model)
    params = build_model(model)
    info = write_data(args.max_len, data)
    if info["rows_kept"] < args.steps * BATCH:
        print(
            f"note: {args.steps} steps x {BATCH} pairs > {info['rows_kept']} pairs kept: the tools go round the data "
            "more than once",
            flush=True,
        )
    print(
        f"model: {params:,} parameters at {model}; data: {info['rows_kept']} of {info['rows_in']} pairs fit in "
        f"{args.max_len} - {MARGIN} tokens ({data})",
        flush=True,
    )
    results: dict[str, dict] = {}
    runs: list[tuple[str, Callable[[], dict]]] = []
    for name, ensure, run in [("trl", ensure_trl_venv, run_trl), ("llamafactory", ensure_lf_venv, run_llamafactory)]:
        if name not in args.skip:
            ensure(WORK)
            runs.append((name, lambda run=run: run(model, data, args.steps, args.max_len, args.logging_steps)))
    for w in args.rayft_workers:
        runs.append(
            (f"rayft-w{w}", lambda w=w: run_rayft(model, data, args.steps, args.max_len, args.logging_steps, w))
        )
    for name, run in runs:
        attempts = []
        for attempt in range(1 + args.retries):
            idle = wait_idle(args.wait_idle, args.idle_load)
            print(f"running {name} (load {os.getloadavg()[0]:.2f}) ...", flush=True)
            res = {**run(), "idle_wait": idle}
            res["contention"] = res["other_cpu_s"] / res["wall_s"]  # other processes' cores in use, on average
            print(json.dumps(res), flush=True)
            attempts.append(res)
            if res["rc"] != 0 or res["contention"] <= CONTENDED:
                break
            print(
                f"{name}: other processes used {res['contention']:.2f} cores on average during the run "
                f"(> {CONTENDED}): contended" + (", running it again" if attempt < args.retries else ""),
                flush=True,
            )
        best = min(attempts, key=lambda r: (r["rc"] != 0, r["contention"]))
        results[name] = {
            **best,
            "attempts": [{k: a[k] for k in ("rc", "wall_s", "contention", "load1_at_start")} for a in attempts],
        }
    print_table(results)
    meta = {
        "model_params": params,
        "steps": args.steps,
        "max_len": args.max_len,
        "micro_batch_pairs": BATCH,
        "lora": {"rank": RANK, "alpha": ALPHA, "target": "all linear but the head"},
        "lr": LR,
        "beta": BETA,
        "loss": "sigmoid",
        "machine_cpus": os.cpu_count(),
        "data": {k: v for k, v in info.items() if k != "pair_tokens"} | {"file": str(data / "dpo_bench.json")},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"dpo_vs_trl_llamafactory-s{args.steps}"
    out.with_suffix(".json").write_text(json.dumps({**meta, "results": results}, indent=2))
    write_markdown(out.with_suffix(".md"), meta, results)
    print(f"results: {out}.json, {out}.md")


if __name__ == "__main__":
    main()
