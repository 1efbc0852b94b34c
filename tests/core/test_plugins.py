"""A user's own code named in the YAML: a tuning method (the HFT example, core/rayft_core/literature/hft.py), an optimizer and
a token loss, each loaded from a file, its keys validated by its own schema, and what it does checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rayft_core.config import RunConfig, validate_config
from rayft_core.schema import ConfigError
from tests.core.test_block_methods import _steps
from tests.helpers import run_config, unit_run

HFT = str(Path(__file__).resolve().parents[2] / "core" / "rayft_core" / "literature" / "hft.py")
MINIMAL = {"model": {"name_or_path": "m"}, "data": {"train": [{"path": "d", "format": "alpaca"}]}}

USER_CODE = """
import torch

def half(logits, ce):
    return torch.full_like(ce, 0.5)

def sgd(groups, run, model):
    return torch.optim.SGD(groups, lr=run.train.learning_rate)
"""


def _hft(tiny_model, workdir, **tuning):
    return unit_run(tiny_model("llama"), workdir, {"method": f"{HFT}:HalfFineTuning", **tuning})


def test_hft_trains_half_of_each_layers_attention_and_mlp_and_redraws_every_round(tiny_model, workdir):
    run = _hft(tiny_model, workdir, switch_interval=2)
    assert type(run.tuning).__name__ == "HalfFineTuning" and run.tuning.switch_interval == 2
    model, optimizer, changed = _steps(run, 4)
    attention = {n for n, _ in model.named_parameters() if "self_attn" in n and n.endswith("proj.weight")}
    mlp = {n for n, _ in model.named_parameters() if "mlp" in n}
    for step in changed:
        assert step <= attention | mlp  # never the embeddings, norms or head
        for layer in (0, 1):
            assert len({n for n in step & attention if f"layers.{layer}." in n}) == 2  # 2 of 4 projections
            assert len({n for n in step & mlp if f"layers.{layer}." in n}) == 2  # 2 of 3, rounded up
    assert changed[0] == changed[1] and changed[2] == changed[3]  # a round is switch_interval steps
    assert changed[0] != changed[2]  # then another half is drawn (seeded: the same on every worker)
    # after step 4 the third half is drawn: Adam state is kept only for what trained and trains on
    kept = {id(p) for p in optimizer.state}
    assert kept == {id(p) for n, p in model.named_parameters() if n in changed[3] and p.requires_grad}


def test_a_plugin_methods_keys_are_validated_by_its_schema_and_survive_the_trip_to_the_workers(tmp_path):
    with pytest.raises(ConfigError, match=r"tuning.switch_intervall: unknown key \(did you mean 'switch_interval'"):
        validate_config({**MINIMAL, "tuning": {"method": f"{HFT}:HalfFineTuning", "switch_intervall": 5}})
    with pytest.raises(ConfigError, match=r"tuning.switch_interval: Input should be greater than or equal to 1"):
        validate_config({**MINIMAL, "tuning": {"method": f"{HFT}:HalfFineTuning", "switch_interval": 0}})
    with pytest.raises(ConfigError, match="deepspeed.zero_stage: HFT"):
        validate_config({**MINIMAL, "tuning": {"method": f"{HFT}:HalfFineTuning"}, "cluster": {"num_workers": 2}})
    for method, message in [
        (f"{HFT}:HalfFinetuning", "has no 'HalfFinetuning'"),
        ("missing.py:X", "no file missing.py"),
        ("json:dumps", "not a subclass of rayft_core.methods.TuningSection"),
        ("no_such_module_here:X", "importing no_such_module_here failed: ModuleNotFoundError"),
    ]:
        with pytest.raises(ConfigError, match=f"tuning.method: tuning method '{method}': .*{message}"):
            validate_config({**MINIMAL, "tuning": {"method": method}})
    # the workers validate the run again from its JSON: the plug-in is loaded there by its (absolute) path
    (tmp_path / "plug.py").write_text(Path(HFT).read_text())
    run = validate_config({**MINIMAL, "tuning": {"method": f"{tmp_path}/plug.py:HalfFineTuning", "switch_interval": 3}})
    again = RunConfig.model_validate(run.with_absolute_paths().model_dump(mode="json"))
    assert again.tuning == run.tuning and type(again.tuning) is type(run.tuning)


def test_a_plugin_optimizer_and_token_loss(tiny_model, workdir, tmp_path):
    from rayft_core.model.loader import load_model, load_tokenizer
    from rayft_core.train.losses import causal_lm_loss_sum, token_weights
    from rayft_core.train.optim import build_optimizer
    from tests.core.test_tuning import _batch

    (tmp_path / "mine.py").write_text(USER_CODE)
    with pytest.raises(ConfigError, match=r"train.optimizer: did you mean 'adamw'\? choose one of adamw, muon"):
        validate_config({**MINIMAL, "train": {"optimizer": "adamx"}})
    run = run_config(
        tiny_model("llama"),
        [{"path": "unused.json", "format": "alpaca"}],
        workdir,
        "unit",
        tuning={"method": "full"},
        train={"optimizer": f"{tmp_path}/mine.py:sgd", "token_loss": f"{tmp_path}/mine.py:half"},
    )
    tokenizer = load_tokenizer(run.model)
    model = load_model(run, tokenizer)
    assert type(build_optimizer(model, run)).__name__ == "SGD"
    batch = _batch(tokenizer)
    with torch.no_grad():
        plain, n = causal_lm_loss_sum(model, batch)
        halved, _ = causal_lm_loss_sum(model, batch, token_weights(run.train))
    assert n > 0 and torch.allclose(halved, plain / 2)
