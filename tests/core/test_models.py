"""The architecture matrix (rayft_core.model.matrix, docs/models.md, `rayft models`) and what it made rayft handle
once, in the loader and the loss: LoRA targets per family, routers frozen, MoE load balancing, ZeRO-3 leaves,
logit scales, families without SDPA, remote code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rayft.cli import main
from rayft_core.model import checks, matrix
from rayft_core.model.families import families

ROOT = Path(__file__).resolve().parents[2]
# One family of each kind the matrix tells apart: dense, Conv1D (gpt2), MoE with a router module, MoE with a
# shared-expert gate, latent attention (DeepSeek V3), a logit scale (Cohere), a soft-cap (Gemma 2), no SDPA
# (Bloom), a Mamba mixer, a hybrid whose full ZeRO-3 check fails, projections outside the blocks (OPT), Llama 4's
# text model, a family whose head rayft's loss does not reproduce (ModernBERT decoder).
SAMPLE = [
    "llama", "gpt2", "mixtral", "qwen2_moe", "deepseek_v3", "cohere", "gemma2", "bloom", "mamba", "jamba", "opt",
    "llama4_text", "modernbert-decoder",
]  # fmt: skip


@pytest.fixture(scope="module")
def matrix_tokenizer(tmp_path_factory):
    return matrix.tokenizer(tmp_path_factory.mktemp("matrix-tok"))


def test_matrix_covers_every_causal_lm_family_of_this_transformers():
    data = matrix.load()
    recorded = {r["model_type"] for r in data["rows"]} | set(data["skipped"])
    assert recorded == set(families()), "rerun: python -m rayft_core.model.matrix --write docs/models.md"
    assert {r["model_type"] for r in data["rows"]} == {t for t, why in families().items() if why is None}
    assert len(data["rows"]) >= 100 and matrix.counts(data)["lora"] >= 100


def test_models_md_is_rendered_from_the_matrix():
    assert (ROOT / "docs" / "models.md").read_text() == matrix.render_markdown(matrix.load())


@pytest.mark.parametrize("model_type", SAMPLE)
def test_matrix_rows_reproduce(model_type, matrix_tokenizer, tmp_path):
    """The recorded row is what the checks give today (each column's pass or fail, the class, the experts, what
    LoRA's `all` resolves to); the whole matrix is rebuilt by the command in docs/models.md."""
    recorded = next(r for r in matrix.load()["rows"] if r["model_type"] == model_type)
    columns = [c for c in matrix.COLUMNS if c != "vllm"]
    row = matrix.check_family(model_type, tmp_path, matrix_tokenizer, columns)
    marks = {c: matrix._mark(row.get(c)) for c in (*columns, "build")}
    assert marks == {c: matrix._mark(recorded.get(c)) for c in marks}, row
    if "vllm" in row:  # the suite does not start vLLM per family: a recorded load needs vLLM to list the family
        assert (recorded["vllm"] == matrix.OK) <= (row["vllm"].startswith("listed")), (recorded["vllm"], row["vllm"])
    for key in ("class", "experts", "lora_all"):
        assert row.get(key) == recorded.get(key)


def test_lora_all_adapts_attention_and_mlp_never_routers_heads_or_outer_projections():
    data = {r["model_type"]: r for r in matrix.load()["rows"]}
    assert data["llama"]["lora_all"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert data["gpt2"]["lora_all"] == ["c_attn", "c_fc", "c_proj"]  # Conv1D layers, fused QKV
    assert data["phi3"]["lora_all"] == ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]  # fused QKV and MLP
    assert "shared_expert_gate" not in data["qwen2_moe"]["lora_all"]  # the shared expert's gate is a router
    assert "router" not in data["jamba"]["lora_all"] and "wg" not in data["hunyuan_v1_moe"]["lora_all"]
    assert "project_in" not in data["opt"]["lora_all"]  # outside the decoder blocks
    assert "out_proj" not in data["mamba"]["lora_all"]  # read by the fused scan kernel: PEFT refuses it


def test_moe_load_balancing_loss_is_added_with_the_models_coefficient(tmp_path, matrix_tokenizer):
    """pt/sft add coef * the family's own load-balancing loss (weighted by the batch's tokens, as the loss is
    summed) and report it as aux_loss; the coefficient defaults to the model config's, 0 turns it off."""
    from transformers import AutoModelForCausalLM

    from rayft_core.train.losses import causal_lm_loss_sum, lm_objective
    from rayft_core.train.stages import STAGES

    model_dir = checks.build("mixtral", matrix_tokenizer, tmp_path / "mixtral")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    batch = checks._sft_batch(STAGES["sft"], matrix_tokenizer, matrix.run_config(model_dir, tmp_path / "run"))
    ce, n = causal_lm_loss_sum(model, batch)
    theirs = model(**batch, output_router_logits=True, use_cache=False).aux_loss
    coef = model.config.router_aux_loss_coef
    total, metrics = lm_objective(model, batch)
    assert metrics["aux_loss"][0] / metrics["aux_loss"][1] == pytest.approx(theirs.item(), rel=1e-5)
    assert total.item() == pytest.approx(ce.item() + coef * theirs.item() * n, rel=1e-5)
    assert lm_objective(model, batch, router_aux_loss_coef=0.0)[0].item() == pytest.approx(ce.item(), rel=1e-6)
    dense = AutoModelForCausalLM.from_pretrained(checks.build("llama", matrix_tokenizer, tmp_path / "llama"))
    assert set(lm_objective(dense, batch)[1]) == {"loss"}  # a dense model has no aux_loss


def test_zero3_leaves_are_moe_blocks_and_conv_mixers(matrix_tokenizer, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from rayft_core.model.zero3 import leaf_classes

    def leaves(model_type: str) -> set[str]:
        config = AutoConfig.from_pretrained(checks.build(model_type, matrix_tokenizer, tmp_path / model_type))
        with torch.device("meta"):
            return {c.__name__ for c in leaf_classes(AutoModelForCausalLM.from_config(config))}

    assert leaves("mixtral") == {"MixtralSparseMoeBlock"}
    assert leaves("mamba") == {"MambaMixer"}
    assert leaves("llama") == set()


def _moe_zero3_rank(rank: int, model_dir: str, store: str, out: str) -> None:
    """One of two gloo ranks: full-parameter SFT steps of a tiny Mixtral under ZeRO-3, each rank with its own
    short batch, recording which experts its tokens used."""
    import os

    import deepspeed
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rayft_core.model.zero3 import mark_zero3_leaves
    from rayft_core.train.losses import compute_causal_lm_loss

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", DS_ACCELERATOR="cpu")
    dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    used: list[set[int]] = [set() for _ in model.model.layers]  # per layer: the experts its tokens went to
    for layer, block in zip(used, model.model.layers):
        block.mlp.experts.register_forward_hook(
            lambda m, args, out, layer=layer: layer.update(args[1].flatten().tolist())
        )
    mark_zero3_leaves(model)
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}, "steps_per_print": 10**9}
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3), config=config, dist_init_required=False
    )
    text = "Say hello." if rank == 0 else "What do bees make? Bees make honey."
    ids = tok([text], return_tensors="pt")["input_ids"][:, : 2 if rank == 0 else None]  # rank 0: two tokens
    losses = []
    for _ in range(2):
        loss, _ = compute_causal_lm_loss(engine.module, {"input_ids": ids, "labels": ids.clone()})
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    Path(out, f"{rank}.json").write_text(json.dumps({"losses": losses, "experts": [sorted(u) for u in used]}))
    dist.destroy_process_group()


def test_moe_trains_under_zero3_on_two_ranks_with_experts_left_unused(matrix_tokenizer, tmp_path):
    import torch.multiprocessing as mp

    model_dir = checks.build("mixtral", matrix_tokenizer, tmp_path / "mixtral")
    mp.start_processes(
        _moe_zero3_rank, args=(str(model_dir), str(tmp_path / "store"), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    assert all(len(r["losses"]) == 2 and all(x == x for x in r["losses"]) for r in ranks)  # finite, no hang
    assert any(len(layer) < 4 for r in ranks for layer in r["experts"])  # some rank skipped an expert


def test_families_rayft_cannot_train_are_refused_with_the_reason():
    assert "bidirectional encoder" in matrix.family_problem("bert")
    assert "multimodal is out of scope" in matrix.family_problem("gemma3")
    assert "does not reproduce the logits" in matrix.family_problem("modernbert-decoder")
    assert matrix.family_problem("llama") is None and matrix.family_problem("my_remote_family") is None


def test_rayft_models_prints_the_table_and_a_familys_row():
    runner = CliRunner()
    table = runner.invoke(main, ["models"])
    assert table.exit_code == 0 and "mixtral" in table.output and "LoRA SFT" in table.output
    row = runner.invoke(main, ["models", "mixtral"])
    assert "experts         4" in row.output and "LoRA SFT        ok" in row.output
    assert "did you mean mixtral" in runner.invoke(main, ["models", "mixtrall"]).output
    assert "bidirectional encoder" in runner.invoke(main, ["models", "bert"]).output


def test_attention_falls_back_to_eager_where_a_family_has_no_sdpa(matrix_tokenizer, tmp_path):
    from rayft_core.model.loader import load_model, load_tokenizer

    run = matrix.run_config(checks.build("bloom", matrix_tokenizer, tmp_path / "bloom"), tmp_path / "run")
    assert load_model(run, load_tokenizer(run.model)).config._attn_implementation == "eager"


REMOTE_CONFIG = """from transformers import LlamaConfig


class RayftCustomConfig(LlamaConfig):
    model_type = "rayft_custom"
"""
REMOTE_MODEL = """from transformers import LlamaForCausalLM

from .configuration_custom import RayftCustomConfig


class RayftCustomForCausalLM(LlamaForCausalLM):
    config_class = RayftCustomConfig
"""


def test_a_remote_code_family_needs_trust_remote_code_and_then_trains(matrix_tokenizer, tmp_path):
    """A model directory that ships its own architecture (auto_map): refused without model.trust_remote_code,
    with the key named; with it, LoRA SFT passes the matrix's check."""
    from rayft.checks import RunCheckError, check_config

    model_dir = checks.build("llama", matrix_tokenizer, tmp_path / "custom")
    (model_dir / "configuration_custom.py").write_text(REMOTE_CONFIG)
    (model_dir / "modeling_custom.py").write_text(REMOTE_MODEL)
    config = json.loads((model_dir / "config.json").read_text())
    config.update(
        model_type="rayft_custom",
        architectures=["RayftCustomForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_custom.RayftCustomConfig",
            "AutoModelForCausalLM": "modeling_custom.RayftCustomForCausalLM",
        },
    )
    (model_dir / "config.json").write_text(json.dumps(config))
    run = matrix.run_config(model_dir, tmp_path / "run-untrusted")
    with pytest.raises(RunCheckError, match="model.trust_remote_code"):
        check_config(run)
    trusted = matrix.run_config(model_dir, tmp_path / "run", model={"trust_remote_code": True})
    assert trusted.model.trust_remote_code
    checks.lora_sft(model_dir, matrix_tokenizer, tmp_path / "run", model={"trust_remote_code": True})


def test_lora_on_experts_trains_and_merges(matrix_tokenizer, tmp_path):
    """tuning.target_experts: adapters on the experts' 3-D weights too (PEFT target_parameters), routers still
    frozen; LoRA SFT's loss falls and the merged export equals the adapter model. Refused on a dense model."""
    from rayft_core.methods.layers import TuningError
    from rayft_core.model.adapters import apply_tuning
    from rayft_core.model.loader import load_model, load_tokenizer

    model_dir = checks.build("mixtral", matrix_tokenizer, tmp_path / "mixtral")
    lora = {"tuning": {"method": "lora", "rank": 4, "target": "all", "target_experts": True}}
    checks.lora_sft(model_dir, matrix_tokenizer, tmp_path / "run", **lora)
    checks.export_round_trip(tmp_path / "run", matrix_tokenizer)
    run = matrix.run_config(model_dir, tmp_path / "again", **lora)
    tuned = apply_tuning(load_model(run, load_tokenizer(run.model)), run)
    trainable = [n for n, p in tuned.named_parameters() if p.requires_grad]
    assert any("experts" in n and "lora_A" in n for n in trainable)
    assert not any(".gate." in n and "lora" in n for n in trainable)  # the router
    dense = matrix.run_config(checks.build("llama", matrix_tokenizer, tmp_path / "llama"), tmp_path / "dense", **lora)
    with pytest.raises(TuningError, match="tuning.target_experts"):
        apply_tuning(load_model(dense, load_tokenizer(dense.model)), dense)


def test_config_validate_prints_what_lora_all_resolves_to(matrix_tokenizer, tmp_path):
    model_dir = checks.build("mixtral", matrix_tokenizer, tmp_path / "mixtral")
    data = tmp_path / "rows.json"
    data.write_text(json.dumps([{"instruction": "Say hello.", "input": "", "output": "Hello there!"}]))
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {{name_or_path: {model_dir}}}\n"
        f"data: {{train: [{{path: {data}, format: alpaca}}], max_seq_len: 64}}\n"
        f"output: {{storage_path: {tmp_path / 'out'}, name: run}}\n"
    )
    result = CliRunner().invoke(main, ["config", "validate", str(config)])
    assert result.exit_code == 0, result.output
    assert "tuning.target (all): k_proj, o_proj, q_proj, v_proj" in result.output
    assert "mixture of 4 experts: the routers stay frozen" in result.output


def test_resizing_a_tied_model_keeps_the_tie(matrix_tokenizer, tmp_path):
    from rayft_core.model.loader import load_model, load_tokenizer
    from rayft_core.model.tiny import build_tiny_model

    model_dir = build_tiny_model("llama", matrix_tokenizer, tmp_path / "tied", tied=True)
    run = matrix.run_config(model_dir, tmp_path / "run", model={"add_special_tokens": ["<tool_call>"]})
    model = load_model(run, load_tokenizer(run.model))
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert model.get_input_embeddings().weight.shape[0] == len(matrix_tokenizer) + 1
