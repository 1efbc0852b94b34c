"""Models bigger than a worker: under ZeRO-3 the worker session builds every model partitioned from the start
(rayft_core.model.zero3.sharded_construction) and writes the trained one as HF shards a module at a time
(rayft_core.model.shards). Two gloo ranks in plain processes run the real WorkerSession on real DeepSpeed: the
same code a Ray Train worker runs, without the cluster."""

from __future__ import annotations

import json
import math
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch

from rayft_core.model.tiny import build_tiny_model, build_tokenizer

SAVE = {"checkpoint": {"save_steps": 2}}  # a plan of 3 steps, 2 trained: the checkpoint of the model written at the end
CASES = {  # name -> the run's sections
    "full-sft": {"tuning": {"method": "full"}, "output": {"max_shard_size": "100KB"}, **SAVE},
    "lora-sft": {"tuning": {"method": "lora", "rank": 4}, **SAVE},
    "full-rm": {"tuning": {"method": "full"}, "stage": {"name": "rm"}, **SAVE},
    "full-dpo": {"tuning": {"method": "full"}, "stage": {"name": "dpo", "beta": 0.5}},
    "new-tokens": {"tuning": {"method": "full"}, "model": {"add_special_tokens": ["<tool>", "</tool>"]}, **SAVE},
    "lora-new-tokens": {"tuning": {"method": "lora", "rank": 4}, "model": {"add_special_tokens": ["<tool>"]}},
}
QA = [("What is two plus two?", "Four."), ("Name a colour.", "Blue."), ("Say hi.", "Hi!"), ("Count to 3.", "1 2 3")]


class Watched:
    """The stage as the session sees it, recording which of the base model's parameters were whole (not
    partitioned) when it was built: before DeepSpeed's engine exists. What the tuning adds (adapters, a value
    head, PEFT's trainable copies of modules) is new, made whole by PEFT, and partitioned after the build."""

    def __init__(self, stage: Any):
        self.stage, self.whole, self.sizes = stage, None, None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stage, name)

    def build_model(self, run: Any, tokenizer: Any) -> torch.nn.Module:
        from rayft_core.model.zero3 import is_partitioned, numel

        model = self.stage.build_model(run, tokenizer)
        added = ("lora_", ".modules_to_save.")
        base = [(n, p) for n, p in model.named_parameters() if not any(a in n for a in added) and n[:6] != "v_head"]
        self.whole = [n for n, p in base if not is_partitioned(p)]
        self.sizes = [(p.data.numel(), numel(p)) for _, p in base]
        return model


def _batch(stage: Any, tok: Any, run: Any, rank: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """This rank's rows (two of QA) as examples and as a padded batch."""
    mine = QA[2 * rank : 2 * rank + 2]
    user = [{"role": "user", "content": q} for q, _ in mine]
    if stage.columns[0] == "input_ids":
        rows = [{"messages": [u, {"role": "assistant", "content": a}], "tools": None} for u, (_, a) in zip(user, mine)]
    else:
        rows = [
            {"messages": [u], "tools": None, "chosen": {"role": "assistant", "content": a},
             "rejected": {"role": "assistant", "content": "I do not know."}}
            for u, (_, a) in zip(user, mine)
        ]  # fmt: skip
    examples = stage.encode_rows(rows, tok, run)
    return examples, stage.collate(examples, tok.pad_token_id)


def _outputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list:
    """What the trained model computes on a batch: logits, or a reward model's scores."""
    with torch.no_grad():
        if hasattr(model, "score"):
            return model.score(batch).tolist()
        return model(input_ids=batch["input_ids"]).logits.tolist()


def _keep_checkpoint(run_dir: Path, record: dict[str, Any], checkpoint_dir: str | None = None) -> None:
    """Each rank's part of a checkpoint into run_dir/checkpoint_STEP, as Ray Train merges them."""
    if checkpoint_dir:
        shutil.copytree(checkpoint_dir, run_dir / f"checkpoint_{record['step']}", dirs_exist_ok=True)


def _rank(rank: int, model_dir: str, store: str, out: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", DS_ACCELERATOR="cpu")
    dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2)
    from rayft_core.model.matrix import run_config
    from rayft_core.model.zero3 import is_partitioned
    from rayft_core.train.plan import TrainPlan
    from rayft_core.train.preference import Reference
    from rayft_core.train.session import WorkerSession
    from rayft_core.train.stages import STAGES

    for case, sections in CASES.items():
        run = run_config(Path(model_dir), Path(out, case), deepspeed={"zero_stage": 3}, **sections)
        stage = Watched(STAGES[run.stage.name])
        session = WorkerSession(run, TrainPlan(3, 1, 3), partial(_keep_checkpoint, Path(out, case)), rank, 2)
        session.setup(stage)
        objective = stage.objective(run, session.tokenizer, session.device, session.ds_config)
        examples, batch = _batch(stage, session.tokenizer, run, rank)
        facts: dict[str, Any] = {"whole": stage.whole, "sizes": stage.sizes, "losses": []}
        with session:
            for _ in range(2):
                loss, _ = objective(session.engine.module, batch)
                loss = loss / stage.loss_units(examples)
                session.engine.backward(loss)
                session.engine.step()
                session.end_step({})
                facts["losses"].append(loss.item())
        session.finish()
        facts["outputs"] = _outputs(session.engine.module.eval(), batch)
        if case == "full-dpo":  # the frozen reference is built partitioned too
            ref = Reference(run, session.tokenizer, session.device, session.ds_config).model
            facts["reference_whole"] = [n for n, p in ref.named_parameters() if not is_partitioned(p)]
        Path(out, f"{case}-{rank}.json").write_text(json.dumps(facts))
        session.engine.destroy()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def zero3_runs(tmp_path_factory):
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("zero3")
    tok = build_tokenizer([f"{q} {a}" for q, a in QA] * 20 + ["I do not know."])
    model_dir = build_tiny_model("llama", tok, root / "model", intermediate_size=96)
    mp.start_processes(_rank, args=(str(model_dir), str(root / "store"), str(root)), nprocs=2, start_method="spawn")
    return root, tok


def _facts(root: Path, case: str) -> list[dict[str, Any]]:
    return [json.loads((root / f"{case}-{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.parametrize("case", list(CASES))
def test_no_worker_holds_a_whole_weight_after_construction(zero3_runs, case):
    root, _ = zero3_runs
    for rank in _facts(root, case):
        assert rank["whole"] == []
        assert all(local <= math.ceil(full / 2) for local, full in rank["sizes"]), rank["sizes"]
        assert all(math.isfinite(x) for x in rank["losses"])


def test_full_model_is_written_in_shards_that_reload_to_the_trained_logits(zero3_runs):
    from transformers import AutoModelForCausalLM

    root, tok = zero3_runs
    out = root / "full-sft"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and [p.name for p in sorted(out.glob("model*.safetensors"))] == files
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert set(index["weight_map"]) == set(reloaded.state_dict())  # an untied head: every tensor written once
    from rayft_core.model.matrix import run_config
    from rayft_core.train.stages import STAGES

    run = run_config(root / "model", root / "x")
    _, batch = _batch(STAGES["sft"], tok, run, rank=0)
    trained = torch.tensor(_facts(root, "full-sft")[0]["outputs"])
    assert torch.allclose(torch.tensor(_outputs(reloaded, batch)), trained, atol=1e-5)


def test_new_tokens_get_their_noisy_mean_rows_on_partitioned_embeddings(zero3_runs):
    """The embeddings grow under ZeRO-3 (gathered one matrix at a time, rank 0's rows kept): the saved model has
    the new rows, near the mean of the old ones and distinct, and reloads to the trained logits."""
    from transformers import AutoModelForCausalLM

    root, tok = zero3_runs
    reloaded = AutoModelForCausalLM.from_pretrained(root / "new-tokens", dtype=torch.float32)
    rows = reloaded.get_input_embeddings().weight.detach()
    assert rows.shape[0] == len(tok) + 2
    old, new = rows[: len(tok)], rows[len(tok) :]
    assert torch.isfinite(new).all() and not torch.equal(new[0], new[1])
    assert (new - old.mean(0)).norm(dim=-1).max() < (old - old.mean(0)).norm(dim=-1).mean()  # near the mean
    from rayft_core.model.matrix import run_config
    from rayft_core.train.stages import STAGES

    _, batch = _batch(STAGES["sft"], tok, run_config(root / "model", root / "x"), rank=0)
    trained = torch.tensor(_facts(root, "new-tokens")[0]["outputs"])
    assert torch.allclose(torch.tensor(_outputs(reloaded, batch)), trained, atol=1e-5)


def test_adapter_and_reward_model_saved_under_zero3_reload_to_the_trained_outputs(zero3_runs):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rayft_core.model.matrix import run_config
    from rayft_core.model.value_head import load_reward_model
    from rayft_core.train.stages import STAGES

    root, tok = zero3_runs
    run = run_config(root / "model", root / "x")
    _, sft_batch = _batch(STAGES["sft"], tok, run, rank=0)
    _, pair_batch = _batch(STAGES["rm"], tok, run, rank=0)
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(root / "model"), root / "lora-sft")
    assert not list((root / "lora-sft").glob("model*.safetensors"))  # the frozen base is not rewritten
    lora_trained = torch.tensor(_facts(root, "lora-sft")[0]["outputs"])
    assert torch.allclose(torch.tensor(_outputs(adapter.eval(), sft_batch)), lora_trained, atol=1e-5)
    reward_model, _ = load_reward_model(root / "full-rm")
    rm_trained = torch.tensor(_facts(root, "full-rm")[0]["outputs"])
    assert torch.allclose(torch.tensor(_outputs(reward_model, pair_batch)), rm_trained, atol=1e-5)


def test_full_dpo_under_zero3_starts_at_ln2_with_a_partitioned_reference(zero3_runs):
    root, _ = zero3_runs
    for rank in _facts(root, "full-dpo"):
        assert rank["reference_whole"] == []
        assert abs(rank["losses"][0] - math.log(2)) < 1e-5
        assert rank["losses"][1] < rank["losses"][0]


@pytest.mark.parametrize("case", ["full-sft", "full-rm", "new-tokens"])
def test_rayft_export_writes_a_zero3_checkpoint_as_the_trained_model(zero3_runs, case, tmp_path):
    """The last step's checkpoint (each rank's ZeRO-3 partitions) exported on one process equals the model the run
    wrote at its end: the same tensors, in shards of the size asked, a reward model's head beside them."""
    from rayft_core.export import export_model
    from rayft_core.model.shards import tensor_headers, weight_files

    root, _ = zero3_runs
    out = export_model(root / case / "checkpoint_2", tmp_path / case, max_shard_size="200KB")
    trained, exported = _tensors(root / case), _tensors(out)
    assert trained.keys() == exported.keys()
    assert all(torch.equal(trained[k], exported[k]) for k in trained), case
    assert len(weight_files(out)) > 1 and (out / "tokenizer_config.json").is_file()
    assert (out / "value_head.safetensors").is_file() == (case == "full-rm")
    assert tensor_headers([out / "value_head.safetensors"]) if case == "full-rm" else True


def test_rayft_export_merges_an_adapter_runs_checkpoint_into_the_trained_model(zero3_runs, tmp_path):
    """A LoRA run's ZeRO-3 checkpoint holds only the adapter: exported, it is merged into the base and gives the
    logits the trained engine gave."""
    from transformers import AutoModelForCausalLM

    from rayft_core.export import export_model
    from rayft_core.model.matrix import run_config
    from rayft_core.train.stages import STAGES

    root, tok = zero3_runs
    out = export_model(root / "lora-sft" / "checkpoint_2", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    _, batch = _batch(STAGES["sft"], tok, run_config(root / "model", root / "x"), rank=0)
    trained = torch.tensor(_facts(root, "lora-sft")[0]["outputs"])
    assert torch.allclose(torch.tensor(_outputs(merged, batch)), trained, atol=1e-4)
    assert not list(out.glob("adapter_*"))  # a standalone model, not an adapter


def _tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from rayft_core.model.shards import weight_files

    files = [*weight_files(model_dir), *model_dir.glob("value_head.safetensors")]
    return {k: v for f in files for k, v in load_file(f).items()}


@pytest.mark.parametrize("arch", ["qwen2", "mixtral"])
def test_module_by_module_writing_keeps_tied_heads_once_and_the_checkpoint_key_names(tmp_path, arch):
    """The writer on whole weights (no ZeRO): a tied head is written once, as save_pretrained does, and Mixtral's
    experts (fused into 3-D tensors by transformers when loaded) are written back in the checkpoint's names."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from rayft_core.model.shards import write_partitioned_model

    tok = build_tokenizer([f"{q} {a}" for q, a in QA] * 20)
    model_dir = build_tiny_model(arch, tok, tmp_path / "model", tied=arch == "qwen2")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    write_partitioned_model(model, tmp_path / "out", rank=0, max_shard_size="64KB")
    written = {}
    for file in (tmp_path / "out").glob("model*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            written.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        original = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    assert written.keys() == original.keys()
    assert all(torch.equal(written[k], original[k]) for k in original)
    ids = torch.tensor([[1, 5, 9, 3]])
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_reshard_recuts_and_casts_tensor_by_tensor(tmp_path):
    from safetensors import safe_open

    from rayft_core.model.shards import reshard, size_in_bytes

    tok = build_tokenizer([f"{q} {a}" for q, a in QA] * 20)
    model_dir = build_tiny_model("llama", tok, tmp_path / "model")
    reshard(model_dir, tmp_path / "a", "50KB", torch.bfloat16)
    index = json.loads((tmp_path / "a" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2
    for name in files:
        with safe_open(str(tmp_path / "a" / name), framework="pt") as f:
            tensors = [f.get_tensor(k) for k in f.keys()]  # noqa: SIM118
        assert all(t.dtype == torch.bfloat16 for t in tensors)
        assert sum(t.numel() * 2 for t in tensors) <= 50_000 or len(tensors) == 1
    reshard(tmp_path / "a", tmp_path / "a", "10MB")  # written again as one file: the old shards go
    assert [p.name for p in (tmp_path / "a").glob("model*")] == ["model.safetensors"]
    assert size_in_bytes("2GiB") == 2**31 and size_in_bytes("500MB") == 5 * 10**8
    with pytest.raises(ValueError, match="such as 5GB"):
        size_in_bytes("5 gigs")
