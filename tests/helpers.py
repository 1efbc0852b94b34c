"""What tests share besides fixtures (those are in conftest.py): small data, run configs, reward adapters."""

from __future__ import annotations

from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"  # real tokenizers and datasets, where the machine has them

QA = [
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Name a primary colour.", "Red is a primary colour."),
    ("What is two plus two?", "Two plus two is four."),
    ("Say hello.", "Hello there!"),
    ("What do bees make?", "Bees make honey."),
]


def run_config(model_dir: Path, datasets: list[dict], out: Path, name: str, **sections) -> RunConfig:  # noqa: F821
    """A small valid run config; sections update whole keys (e.g. tuning={"method": "full"}, data={"packing": True})."""
    from rayft_core.config import validate_config

    raw = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": datasets, "max_seq_len": 64},
        "train": {"max_steps": 4, "micro_batch_size": 4, "learning_rate": 5e-3, "logging_steps": 1},
        "output": {"storage_path": str(out), "name": name},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) and key in raw else value
    return validate_config(raw)


# The least a LLaMA-Factory YAML holds: tests of the translation add the keys they try to it.
LF_MINIMAL = {"model_name_or_path": "m", "dataset": "alpaca_en_demo"}


def noted_keys(notes: list[str]) -> list[str]:
    """The key each translation note names ("level: key: value -- why")."""
    return [n.split(": ", 2)[1] for n in notes]


def errors(notes: list[str]) -> list[str]:
    """The keys the error notes name: what stops the run."""
    from rayft_core.llamafactory import is_error

    return noted_keys([n for n in notes if is_error(n)])


def make_reward_adapter(base: Path, tokenizer, out: Path) -> Path:
    """A reward model in the format `stage: rm` writes (a LoRA adapter + value_head.safetensors + the
    tokenizer), with random weights: for tests of how reward models are loaded, not of what they learned."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rayft_core.model.value_head import ValueHeadModel

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base)
    lm = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    reward = ValueHeadModel(lm, model.config.hidden_size)
    torch.nn.init.normal_(reward.v_head.weight, std=0.5)
    reward.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def sft_engine_and_steps(run, steps: int):
    """A one-process DeepSpeed engine of the sft stage for ``run`` (its optimizer rayft's), trained ``steps`` steps
    on a fixed batch (the loss checked to fall); returns (engine, make_engine), make_engine building another from
    the same seed, to restore a checkpoint into."""
    import deepspeed
    import torch

    from rayft_core.model.checks import _sft_batch, _single_process_group, _train_steps
    from rayft_core.model.loader import load_tokenizer
    from rayft_core.train.deepspeed_config import build_deepspeed_config
    from rayft_core.train.optim import build_optimizer
    from rayft_core.train.stages import STAGES

    _single_process_group()
    stage, tok = STAGES["sft"], load_tokenizer(run.model)
    config = build_deepspeed_config(run, torch.float32, world_size=1)

    def make_engine():
        torch.manual_seed(0)
        model = stage.build_model(run, tok)
        return deepspeed.initialize(
            model=model, optimizer=build_optimizer(model, run), config=config, dist_init_required=False
        )[0]

    engine = make_engine()
    objective, batch = stage.objective(run, tok, torch.device("cpu"), {}), _sft_batch(stage, tok, run)
    losses = _train_steps(engine.module, objective, batch, steps, lambda loss: (engine.backward(loss), engine.step()))
    assert losses[-1] < losses[0], losses
    return engine, make_engine


def unit_run(model_dir: Path, workdir: Path, tuning: dict, **sections) -> RunConfig:  # noqa: F821
    """A run for in-process tests of a method: fp32 weights under ZeRO-0 (where every method runs), a data file
    that is never read; ``sections`` update whole keys as in run_config."""
    sections = {"deepspeed": {"zero_stage": 0}, **sections}
    sections["model"] = {"dtype": "float32", **sections.get("model", {})}
    return run_config(
        model_dir, [{"path": "unused.json", "format": "alpaca"}], workdir, "unit", tuning=tuning, **sections
    )


# ----------------------------------------------------------------------------- a worker lost mid-run


def checkpoints(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("checkpoint_*") if p.is_dir())


def kill_a_worker_after_first_checkpoint(out: Path, timeout: float = 240, process: str = "ray::RayTrainWorker") -> int:
    """SIGKILL one process whose command line holds PROCESS (a Ray Train worker) once a checkpoint is in storage;
    return its pid."""
    import signal
    import time

    import psutil

    deadline = time.time() + timeout
    while time.time() < deadline:
        if checkpoints(out) and (out / "checkpoint_manager_snapshot.json").exists():
            workers = [p for p in psutil.process_iter(["cmdline"]) if process in " ".join(p.info["cmdline"] or [])]
            if workers:
                workers[-1].send_signal(signal.SIGKILL)
                return workers[-1].pid
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint, or no {process}, appeared in time")


def train_through_a_worker_loss(run, process: str = "ray::RayTrainWorker") -> Path:  # noqa: ANN001 - a RunConfig
    """``rayft.train.train(run)`` with one of its workers (or another process of it: PROCESS) killed after the first
    checkpoint; the run's directory once it finished (cluster.max_failures must allow the loss)."""
    import threading

    from rayft.train import train

    out = Path(run.output.dir)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(out=train(run)))
    thread.start()
    kill_a_worker_after_first_checkpoint(out, timeout=300, process=process)
    thread.join(timeout=600)
    assert result.get("out") == out, f"the run did not finish after the {process} was replaced"
    return out


def train_killed(run, kill) -> list[Exception]:  # noqa: ANN001 - a RunConfig, and kill(out)
    """``rayft.train.train(run)`` in a thread while ``kill(out)`` kills a process of it; what the run raised."""
    import threading

    from rayft.train import train

    errors: list[Exception] = []

    def attempt() -> None:
        try:
            train(run)
        except Exception as e:  # noqa: BLE001 - the killed run must fail; the caller checks how
            errors.append(e)

    thread = threading.Thread(target=attempt)
    thread.start()
    kill(Path(run.output.dir))
    thread.join(timeout=600)
    return errors


def resumes(out: Path) -> list[dict]:
    """The "resumed" events of a run (events.jsonl)."""
    import json

    path = out / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
