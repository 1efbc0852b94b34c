"""Real runs on a local Ray cluster: 2 Ray Train workers, real DeepSpeed ZeRO-3 on gloo, real Ray Data.

Each run is checked end to end: the loss is finite and falls, and what was saved loads with
plain transformers/PEFT (no rayft) and computes a lower loss than the model it started from.
ZeRO-3 is the stage whose saving must gather shards; ZeRO-2 (the default) trains in most other
cluster tests (checkpoints, streaming, storage) and full weights under it in the preference tests.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rayft_core import ownership
from rayft_core.data.collate import pad_batch
from rayft_core.data.tokenize import encode_chat_batch
from rayft_core.train import pt
from rayft_core.train.outputs import read_metrics
from tests.helpers import QA, run_config

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _chat_batch(tokenizer):
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QA]
    enc = encode_chat_batch(tokenizer, convs, 64)
    return pad_batch(enc, tokenizer.pad_token_id)


def _text_batch(tokenizer):
    enc = pt.STAGE.encode_rows(
        [{"text": f"{q} {a}"} for q, a in QA], tokenizer, run_config("m", [{"path": "x.txt"}], "out", "x", stage="pt")
    )
    return pad_batch(enc, tokenizer.pad_token_id)


def _loss(model, batch) -> float:
    with torch.no_grad():
        return model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss.item()


def _check_metrics(out: Path, steps: int) -> list[dict]:
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    losses = [r["train/loss"] for r in rows]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0], losses
    assert all(r["perf/tokens_per_s"] > 0 and r["mem/peak_gb"] > 0 for r in rows)
    assert all(math.isfinite(r["train/grad_norm"]) and r["train/grad_norm"] > 0 for r in rows)
    return rows


def test_lora_sft_two_workers_zero3(tiny_model, workdir, alpaca_file, sharegpt_file):
    from peft import PeftModel

    from rayft.train import train

    run = run_config(
        tiny_model("llama"),
        [{"path": str(alpaca_file), "format": "alpaca"}, {"path": str(sharegpt_file), "format": "sharegpt"}],
        workdir / "runs",
        "lora-z3",
        tuning={"method": "lora", "rank": 8},
        train={"max_steps": 6, "gradient_accumulation_steps": 2, "warmup_ratio": 0.2},
        deepspeed={"zero_stage": 3},
        cluster={"num_workers": 2},
        output={"merge_adapter": True},
    )
    out = train(run)
    _check_metrics(out, 6)
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "rayft_run.yaml",
        "loss.png",
        "metrics.jsonl",
    } <= {p.name for p in out.iterdir()}
    # everything the run wrote (Ray Train's files and merged/ included) is known to the deletion rule
    assert ownership.foreign_entries(str(out), ownership.RUN) == []

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template  # saved with the adapter, so serving renders prompts the same way
    batch = _chat_batch(tokenizer)
    base = AutoModelForCausalLM.from_pretrained(tiny_model("llama"))
    base_loss = _loss(base, batch)
    tuned = PeftModel.from_pretrained(base, out)
    tuned_loss = _loss(tuned, batch)
    assert tuned_loss < base_loss - 0.1
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    with torch.no_grad():
        a = tuned(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(a, b, atol=1e-4)


def test_full_pretraining_two_workers_zero3(tiny_model, workdir, text_file):
    """A mixture of experts (Qwen2-MoE: 4 experts, 2 per token, a shared expert) pre-trained in full on two ZeRO-3
    workers: its MoE blocks gathered as leaves, the router's load-balancing loss added and logged."""
    from rayft.train import train

    run = run_config(
        tiny_model("qwen2_moe"),
        [{"path": str(text_file), "format": "text"}],
        workdir / "runs",
        "pt-z3",
        stage="pt",
        tuning={"method": "full"},
        train={"max_steps": 5, "learning_rate": 3e-3},
        deepspeed={"zero_stage": 3},
        cluster={"num_workers": 2},
        output={"overwrite": True},
    )
    # output.overwrite replaces an earlier rayft run there (its stale metrics, checkpoints and Ray Train's
    # snapshot, which would otherwise resume it) and nothing beside it
    earlier = Path(run.output.dir)
    (earlier / "checkpoint_000009").mkdir(parents=True)
    (earlier / "checkpoint_000009" / "trainer_state.json").write_text("{}")
    for name, text in (
        ("rayft_run.yaml", "{}"),
        ("metrics.jsonl", '{"step": 99, "train/loss": 1.0}\n'),
        ("checkpoint_manager_snapshot.json", "{}"),
    ):
        (earlier / name).write_text(text)
    beside = earlier.parent / "pt-z3-notes.txt"
    beside.write_text("mine")
    out = train(run)
    assert not (out / "checkpoint_000009").exists() and beside.read_text() == "mine"
    rows = _check_metrics(out, 5)
    assert all(r["train/aux_loss"] > 0 for r in rows)  # Qwen2-MoE's load-balancing loss, reduced across workers
    # the ZeRO-3 shards were gathered into one plain checkpoint
    model = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model("qwen2_moe"))
    assert all(p.numel() > 0 for p in model.parameters())
    batch = _text_batch(AutoTokenizer.from_pretrained(out))
    tuned_loss = _loss(model, batch)
    assert tuned_loss < _loss(base, batch) - 0.1
    assert tuned_loss == pytest.approx(rows[-1]["train/loss"], rel=0.25)  # the saved weights are the trained ones


def test_galore_zero0_one_worker(tiny_model, workdir, alpaca_file):
    """GaLore's own optimizer as DeepSpeed's client optimizer (ZeRO-0 keeps 2-D weights whole)."""
    from rayft.train import train

    run = run_config(
        tiny_model("llama"),
        [{"path": str(alpaca_file), "format": "alpaca"}],
        workdir / "runs",
        "galore",
        tuning={"method": "galore", "rank": 8, "update_proj_gap": 2},
        train={"max_steps": 4},
        deepspeed={"zero_stage": 0},
        cluster={"num_workers": 1},
    )
    out = train(run)
    _check_metrics(out, 4)
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = _chat_batch(tokenizer)
    assert _loss(AutoModelForCausalLM.from_pretrained(out), batch) < _loss(
        AutoModelForCausalLM.from_pretrained(tiny_model("llama")), batch
    )


def test_a_plugin_method_and_token_loss_load_on_the_workers_from_a_relative_path(
    tiny_model, workdir, alpaca_file, tmp_path, monkeypatch
):
    """The HFT example (rayft_core.literature.hft) and a token loss of the user's, named relative to the working
    directory: the driver makes the paths absolute and each Ray Train worker loads the file itself."""
    from rayft.train import train

    hft = Path(__file__).resolve().parents[2] / "core" / "rayft_core" / "literature" / "hft.py"
    (tmp_path / "hft.py").write_text(
        hft.read_text() + "\n\ndef halved(logits, ce):\n    return ce.new_full(ce.shape, 0.5)\n"
    )
    monkeypatch.chdir(tmp_path)
    run = run_config(
        tiny_model("llama"),
        [{"path": str(alpaca_file), "format": "alpaca"}],
        workdir / "runs",
        "hft",
        tuning={"method": "hft.py:HalfFineTuning", "switch_interval": 2},
        model={"dtype": "float32"},
        train={"max_steps": 4, "token_loss": "hft.py:halved"},
        deepspeed={"zero_stage": 0},
        cluster={"num_workers": 1},
    )
    out = train(run)
    rows = _check_metrics(out, 4)
    tuned, base = AutoModelForCausalLM.from_pretrained(out), AutoModelForCausalLM.from_pretrained(tiny_model("llama"))
    moved = {n for (n, p), q in zip(tuned.named_parameters(), base.parameters()) if not torch.equal(p, q)}
    assert moved and all(".mlp." in n or ".self_attn." in n for n in moved)  # HFT's halves, nothing else
    batch = _chat_batch(AutoTokenizer.from_pretrained(out))
    assert abs(rows[0]["train/loss"] - _loss(base, batch) / 2) < 1.0  # the halved loss: about half the base's


def test_auto_cpus_per_worker_fill_the_nodes_and_threads_stay_within_the_cores():
    from rayft.cluster import auto_worker_cpus, worker_threads

    assert auto_worker_cpus([4], reserved=0, workers=1) == 4
    assert auto_worker_cpus([4], reserved=0, workers=2) == 2
    assert auto_worker_cpus([4], reserved=1, workers=1) == 3  # a stream's tokenizing keeps a CPU
    assert auto_worker_cpus([8, 8], reserved=0, workers=3) == 4  # 5 CPUs each would fit only 2 workers
    assert auto_worker_cpus([16, 4], reserved=2, workers=2) == 7  # the reserve comes off the largest node
    assert auto_worker_cpus([2], reserved=0, workers=3) == 1  # too small: the resource check says so next
    cores = len(os.sched_getaffinity(0))
    assert worker_threads(64, 1) == cores and worker_threads(1, 1) == 1
    assert worker_threads(64, cores) == 1 and worker_threads(64, 2 * cores) == 1


def test_the_local_clusters_workers_run_at_the_drivers_priority():
    """Ray starts its workers at niceness 15, below its own daemons; on rayft's embedded cluster they are the job,
    and a trainer at 15 lost time to every daemon's wakeup (rayft.cluster.WORKER_NICENESS)."""
    import ray

    @ray.remote(num_cpus=0)
    def niceness() -> int:
        return os.nice(0)

    assert ray.get(niceness.remote()) == os.nice(0) == 0
