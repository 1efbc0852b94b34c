"""`rayft export RUN --merge-with RUN2`: TIES and DARE on small tensors by hand, and runs of one base (LoRA adapters
and a full fine-tune) merged weight by weight into a model transformers loads."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from rayft_core.export import ExportError, export_merged
from rayft_core.model.adapters import apply_tuning
from rayft_core.model.loader import load_model
from rayft_core.model.merge_models import merge_deltas
from rayft_core.train.outputs import save_model
from tests.core.test_losses import load_tokenizer_for
from tests.helpers import run_config


def test_ties_trims_elects_a_sign_and_averages_the_agreeing_entries():
    d1, d2 = torch.tensor([1.0, -2.0, 0.1, 3.0]), torch.tensor([2.0, 1.5, -0.2, -1.0])
    # trimmed to 2 of 4: d1 -> [0, -2, 0, 3], d2 -> [2, 1.5, 0, 0]; elected signs of the sum [2, -0.5, 0, 3]: + - 0 +
    merged = merge_deltas([d1, d2], [1.0, 1.0], "ties", 0.5, torch.Generator())
    assert torch.equal(merged, torch.tensor([2.0, -2.0, 0.0, 3.0]))
    # weights: entry 1's sum is -2 + 1.5 x 2 = +1, so d2's +1.5 wins (weighted 2, divided by its weight 2)
    assert torch.allclose(
        merge_deltas([d1, d2], [1.0, 2.0], "ties", 0.5, torch.Generator()), torch.tensor([2.0, 1.5, 0.0, 3.0])
    )
    assert torch.equal(merge_deltas([d1, d2], [0.5, 0.5], "linear", 1.0, torch.Generator()), (d1 + d2) / 2)


def test_dare_drops_at_random_and_rescales_what_it_keeps():
    d = torch.randn(20_000)
    merged = merge_deltas([d], [1.0], "dare_linear", 0.3, torch.Generator().manual_seed(0))
    kept = merged != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.02  # the density's share survives
    assert torch.allclose(merged[kept], d[kept] / 0.3)  # rescaled, so the expected change is the run's own
    again = merge_deltas([d], [1.0], "dare_linear", 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(merged, again)


def _lora_run(tiny_model, tmp_path, name, seed):
    run = run_config(tiny_model("llama"), [{"path": "x.json"}], tmp_path, name, tuning={"method": "lora", "rank": 4})
    tokenizer = load_tokenizer_for(tiny_model("llama"))
    model = apply_tuning(load_model(run, tokenizer), run)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    save_model(model, tokenizer, run, tmp_path / name)
    return tmp_path / name, model.merge_and_unload().state_dict()


def _full_run(tiny_model, tmp_path, name):
    run = run_config(tiny_model("llama"), [{"path": "x.json"}], tmp_path, name, tuning={"method": "full"})
    tokenizer = load_tokenizer_for(tiny_model("llama"))
    model = load_model(run, tokenizer)
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.01)
    save_model(model, tokenizer, run, tmp_path / name)
    return tmp_path / name, model.state_dict()


def test_adapters_and_a_full_run_merge_weight_by_weight(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    (a, wa), (b, wb), (c, wc) = (
        _lora_run(tiny_model, tmp_path, "a", 1),
        _lora_run(tiny_model, tmp_path, "b", 2),
        _full_run(tiny_model, tmp_path, "c"),
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_model("llama")).state_dict()
    dest = export_merged([a, b, c], tmp_path / "linear", "linear", [0.5, 0.3, 0.2])
    merged = AutoModelForCausalLM.from_pretrained(dest).state_dict()
    for key, w in base.items():
        want = w + 0.5 * (wa[key] - w) + 0.3 * (wb[key] - w) + 0.2 * (wc[key] - w)
        assert torch.allclose(merged[key], want, atol=1e-6), key
    record = json.loads((dest / "rayft_export.json").read_text())
    assert record["method"] == "linear" and record["merged_weights"] == len(base)
    dest = export_merged([a, b, c], tmp_path / "ties", "ties", None, 0.4)
    merged = AutoModelForCausalLM.from_pretrained(dest).state_dict()
    key = "model.layers.1.mlp.down_proj.weight"  # adapted by both adapters and changed by the full run
    want = base[key] + merge_deltas(
        [wa[key] - base[key], wb[key] - base[key], wc[key] - base[key]], [1.0] * 3, "ties", 0.4, torch.Generator()
    )
    assert torch.allclose(merged[key], want, atol=1e-6)


def test_merges_refuse_what_they_cannot_do(tiny_model, tmp_path):
    from rayft.cli import main

    (a, _), (b, _) = _lora_run(tiny_model, tmp_path, "a", 1), _lora_run(tiny_model, tmp_path, "b", 2)
    with pytest.raises(ExportError, match="--merge-weights: one per run"):
        export_merged([a, b], tmp_path / "x", "ties", [1.0])
    other = run_config(tiny_model("gpt2"), [{"path": "x.json"}], tmp_path, "g", tuning={"method": "full"})
    save_model(
        load_model(other, load_tokenizer_for(tiny_model("gpt2"))),
        load_tokenizer_for(tiny_model("gpt2")),
        other,
        tmp_path / "g",
    )
    with pytest.raises(ExportError, match="fine-tuned different bases"):
        export_merged([a, tmp_path / "g"], tmp_path / "y")
    result = CliRunner().invoke(main, ["export", str(a), "-o", str(tmp_path / "z"), "--density", "0.3"])
    assert (
        result.exit_code == 2
        and "--density: options of a merge; name the runs to merge with --merge-with" in result.output
    )
    result = CliRunner().invoke(
        main,
        [
            "export",
            str(a),
            "-o",
            str(tmp_path / "z"),
            "--merge-with",
            str(b),
            "--merge-method",
            "dare_ties",
            "--density",
            "0.5",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "merged:" in result.output
