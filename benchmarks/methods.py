"""/work/main/.venv/bin/python benchmarks/methods.py [--steps 20] [--only NAME ...] [--llamafactory]

Every tuning method on the same tiny Llama, side by side in one run: trainable parameters, optimizer state and
tokens/s of a training step. Each method runs in a process of its own (benchmarks/methods.py --one NAME), which
builds the model as a rayft worker does (the sft stage's model with the method applied, rayft's optimizer and
loss), takes 2 warm-up steps and times --steps more on the same batch (4 x 256 random tokens, every token
labelled), fp32, one process, no DeepSpeed or Ray: the cost of the method itself. Optimizer state = the bytes of
every tensor in the optimizer's state_dict after the steps (for methods that train a part at a time, BAdam and
HFT, the part that trained last). Peak RSS is the process's.

The model: a tiny Llama this script builds (4 layers, hidden 256, MLP 704, 8 heads, a 2,000-token vocabulary
trained here; about 3.6M parameters): a tiny-model figure, for comparing methods with each other, not a speed
claim about real models.

--llamafactory instead trains the methods LLaMA-Factory 0.9.5 has (in its own venv, /tmp/lf-venv, built on first use)
with one YAML per method given to both tools, `llamafactory-cli train` and `rayft train` (which translates it),
one after the other: trainable parameters as each tool reports them and training tokens/s (LLaMA-Factory:
non-padding tokens seen / train_runtime; rayft: summary.json). Whole runs, Ray and DeepSpeed included.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path("/tmp/methods-bench")
RESULTS = ROOT / "benchmarks" / "results"
SEQ, BATCH = 256, 4
FP32_ZERO0 = {"model": {"dtype": "float32"}, "deepspeed": {"zero_stage": 0}}

# name -> the run's sections (besides model, data, output); all in fp32 under ZeRO-0, so every method runs.
METHODS: dict[str, dict] = {
    "full (AdamW)": {"tuning": {"method": "full"}},
    "full + Muon": {"tuning": {"method": "full"}, "train": {"optimizer": "muon"}},
    "full + Adam-mini": {"tuning": {"method": "full"}, "train": {"optimizer": "adam_mini"}},
    "full + 8-bit AdamW": {"tuning": {"method": "full"}, "train": {"optimizer": "adamw_8bit"}},
    "freeze (last 2 layers)": {"tuning": {"method": "freeze", "trainable_layers": 2}},
    "LLaMA Pro (+2 blocks)": {"tuning": {"method": "freeze", "expand_layers": 2}},
    "GaLore r16": {"tuning": {"method": "galore", "rank": 16}},
    "APOLLO r16": {"tuning": {"method": "apollo", "rank": 16}},
    "BAdam (layer)": {"tuning": {"method": "badam"}},
    "BAdam (ratio 0.05)": {"tuning": {"method": "badam", "mode": "ratio"}},
    "HFT (plug-in)": {"tuning": {"method": "rayft_core.literature.hft:HalfFineTuning"}},
    "SIFT 1% (plug-in)": {"tuning": {"method": "rayft_core.literature.sift:SparseFineTuning", "density": 0.01}},
    "OwLore 2 layers r16 (plug-in)": {"tuning": {"method": "rayft_core.literature.owlore:OwLore", "rank": 16}},
    "MeZO (plug-in)": {"tuning": {"method": "rayft_core.literature.mezo:MeZO"}},
    "LoRAMoE 4 x r8 (plug-in)": {"tuning": {"method": "rayft_core.literature.loramoe:LoRAMoE"}},
    "LoRA r16": {"tuning": {"method": "lora", "rank": 16}},
    "rsLoRA r16": {"tuning": {"method": "lora", "rank": 16, "use_rslora": True}},
    "DoRA r16": {"tuning": {"method": "lora", "rank": 16, "use_dora": True}},
    "PiSSA r16": {"tuning": {"method": "lora", "rank": 16, "init": "pissa"}},
    "LoRA+ r16": {"tuning": {"method": "lora", "rank": 16, "loraplus_lr_ratio": 16}},
    "LoRA r16 + S2-Attn": {"tuning": {"method": "lora", "rank": 16}, "model": {"shift_attn": True}},
    "QLoRA 4-bit r16": {"tuning": {"method": "lora", "rank": 16, "quantization_bit": 4}},
    "QLoRA 8-bit r16": {"tuning": {"method": "lora", "rank": 16, "quantization_bit": 8}},
    "LoftQ 4-bit r16": {"tuning": {"method": "lora", "rank": 16, "quantization_bit": 4, "init": "loftq"}},
    **{
        f"PEFT {t}": {"tuning": {"method": "peft", "type": t, "config": c}}
        for t, c in [("IA3", {}), ("LOHA", {"r": 8}), ("LOKR", {"r": 8}), ("VERA", {"r": 16}), ("OFT", {})]
    },
}

# LLaMA-Factory's keys for the methods it has (finetuning_type and the rest), for --llamafactory.
LF_METHODS: dict[str, dict] = {
    "full (AdamW)": {"finetuning_type": "full"},
    "full + Muon": {"finetuning_type": "full", "use_muon": True},
    "full + Adam-mini": {"finetuning_type": "full", "use_adam_mini": True},
    "freeze (last 2 layers)": {"finetuning_type": "freeze", "freeze_trainable_layers": 2},
    # LLaMA-Factory's GaLore and APOLLO refuse transformers 5's default optim (adamw_torch_fused): name adamw_torch
    **{
        f"{label} r16": {
            "finetuning_type": "full",
            f"use_{m}": True,
            f"{m}_rank": 16,
            f"{m}_target": "all",
            "optim": "adamw_torch",
        }
        for label, m in (("GaLore", "galore"), ("APOLLO", "apollo"))
    },
    "BAdam (layer)": {"finetuning_type": "full", "use_badam": True, "badam_mode": "layer"},
    "LoRA r16": {"finetuning_type": "lora", "lora_rank": 16, "lora_target": "all"},
    "DoRA r16": {"finetuning_type": "lora", "lora_rank": 16, "lora_target": "all", "use_dora": True},
    "PiSSA r16": {"finetuning_type": "lora", "lora_rank": 16, "lora_target": "all", "pissa_init": True},
}


def build_model(work: Path) -> Path:
    from rayft_core.model.tiny import build_tiny_model, build_tokenizer

    model = work / "tiny-llama"
    if not (model / "config.json").exists():
        words = "the a of to and in is it you that he was for on are with as his they be at one have this".split()
        texts = [" ".join(words[(i * 7 + j) % len(words)] for j in range(40)) for i in range(400)]
        tok = build_tokenizer(texts, vocab_size=2000, save_dir=work / "tokenizer")
        sizes = {"hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4, "num_attention_heads": 8}
        build_tiny_model("llama", tok, model, num_key_value_heads=8, **sizes)
    return model


def run_config(model: Path, sections: dict):
    from rayft_core.config import validate_config

    raw = {
        "model": {"name_or_path": str(model), **FP32_ZERO0["model"], **sections.get("model", {})},
        "data": {"train": [{"path": "unused.json", "format": "alpaca"}], "max_seq_len": SEQ},
        "train": {"learning_rate": 1e-4, **sections.get("train", {})},
        "tuning": sections["tuning"],
        "deepspeed": FP32_ZERO0["deepspeed"],
    }
    return validate_config(raw)


def measure_one(name: str, model: Path, steps: int) -> dict:
    """In this process: build the method as a worker does, 2 warm-up steps, then --steps timed ones."""
    import torch

    from rayft_core.model.loader import load_tokenizer
    from rayft_core.train.optim import build_optimizer
    from rayft_core.train.stages import STAGES

    torch.manual_seed(0)
    run = run_config(model, METHODS[name])
    stage, tok = STAGES["sft"], load_tokenizer(run.model)
    net = stage.build_model(run, tok)
    optimizer = build_optimizer(net, run)
    objective = stage.objective(run, tok, torch.device("cpu"), {})
    ids = torch.randint(3, len(tok), (BATCH, SEQ))
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    trainable_at_start = sum(p.numel() for p in net.parameters() if p.requires_grad)
    losses, t0 = [], 0.0
    for step in range(2 + steps):
        if step == 2:
            t0 = time.perf_counter()
        if run.tuning.forward_only:  # MeZO: two forward passes, no backward
            total, metrics = optimizer.forward_only(net, objective, batch)
        else:
            total, metrics = objective(net, batch)
            (total / metrics["loss"][1]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(metrics["loss"][0] / metrics["loss"][1])
    seconds = time.perf_counter() - t0
    state_bytes = sum(t.nbytes for t in _tensors(optimizer.state_dict()))  # Muon's holds its two parts' states
    return {
        "method": name,
        "parameters": sum(p.numel() for p in net.parameters()),
        "trainable": trainable_at_start,
        "optimizer_state_mb": state_bytes / 2**20,
        "tokens_per_s": BATCH * SEQ * steps / seconds,
        "step_s": seconds / steps,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _tensors(state) -> list:
    import torch

    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for v in state.values() for t in _tensors(v)]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in _tensors(v)]
    return []


def rayft_table(model: Path, names: list[str], steps: int) -> list[dict]:
    rows = []
    for name in names:
        out = WORK / "rows" / (name.replace(" ", "_").replace("/", "_") + ".json")
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, __file__, "--one", name, "--model", str(model), "--steps", str(steps), "--out", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(f"{name}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.read_text()))
        print(f"  {name}: {rows[-1]['tokens_per_s']:.0f} tokens/s", file=sys.stderr)
    return rows


def print_rayft(rows: list[dict]) -> None:
    full = next((r for r in rows if r["method"] == "full (AdamW)"), None)
    size = (full or rows[0])["parameters"] / 1e6  # a quantized base counts its packed storage
    print(f"\nrayft, tiny Llama ({size:.2f}M parameters), batch {BATCH} x {SEQ} tokens, fp32, one process:\n")
    print(
        "| method | trainable | optimizer state (MB) | vs full AdamW | tokens/s | vs full | loss, first -> last | peak RSS (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        state = f"{r['optimizer_state_mb'] / full['optimizer_state_mb']:.2f}x" if full else "-"
        speed = f"{r['tokens_per_s'] / full['tokens_per_s']:.2f}x" if full else "-"
        share = 100 * r["trainable"] / (full or r)["parameters"]
        print(
            f"| {r['method']} | {r['trainable'] / 1e6:.2f}M ({share:.1f}%) | {r['optimizer_state_mb']:.1f} | {state} | "
            f"{r['tokens_per_s']:.0f} | {speed} | {r['loss_first']:.3f} -> {r['loss_last']:.3f} | {r['peak_rss_mb']:.0f} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per method (after 2 warm-up steps)")
    ap.add_argument("--only", nargs="*", default=None, help="these methods only (names as in the table)")
    ap.add_argument("--llamafactory", action="store_true", help="run LLaMA-Factory's methods side by side instead")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path[:0] = [str(ROOT / "core"), str(ROOT)]
    if args.one:
        Path(args.out).write_text(json.dumps(measure_one(args.one, Path(args.model), args.steps)))
        return
    names = args.only or list(METHODS)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        sys.exit(f"unknown methods {unknown}; choose from {list(METHODS)}")
    WORK.mkdir(parents=True, exist_ok=True)
    model = build_model(WORK)
    RESULTS.mkdir(exist_ok=True)
    if args.llamafactory:
        from methods_llamafactory import side_by_side

        side_by_side(model, [n for n in names if n in LF_METHODS], LF_METHODS, WORK)
        return
    rows = rayft_table(model, names, args.steps)
    (RESULTS / "methods.json").write_text(json.dumps(rows, indent=1))
    print_rayft(rows)


if __name__ == "__main__":
    main()
