"""`rayft export`: merged weights give the adapter's logits (QLoRA: against the dequantized base it was
trained on), shards by size, tokenizer, chat template, value head and Modelfile travel with them."""

import json

import pytest
import torch
from click.testing import CliRunner

from rayft_core.export import ExportError, export_model, read_run
from rayft_core.model.adapters import apply_tuning
from rayft_core.model.loader import load_model
from rayft_core.ownership import OutputError
from rayft_core.train.outputs import save_model
from tests.core.test_losses import _batch, load_tokenizer_for
from tests.helpers import run_config


def _trained_adapter(tiny_model, tmp_path, name, **tuning):
    """An adapter saved the way training saves it, with B moved off its zero init so the merge matters."""
    run = run_config(
        tiny_model("llama"),
        [{"path": "x.json"}],
        tmp_path,
        name,
        tuning={"method": "lora", "rank": 4, **tuning},
        deepspeed={"zero_stage": 0},
    )
    tokenizer = load_tokenizer_for(tiny_model("llama"))
    model = apply_tuning(load_model(run, tokenizer), run)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    out = tmp_path / name
    save_model(model, tokenizer, run, out)
    return model.eval(), tokenizer, out


def _logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize("tuning", [{}, {"use_dora": True}, {"quantization_bit": 4}], ids=["lora", "dora", "qlora"])
def test_merged_logits_equal_adapter_logits(tiny_model, tmp_path, tuning):
    from transformers import AutoModelForCausalLM

    adapter, tokenizer, out = _trained_adapter(tiny_model, tmp_path, "run", **tuning)
    batch = _batch(tokenizer)
    dest = export_model(out, tmp_path / "exported")
    merged = AutoModelForCausalLM.from_pretrained(dest, dtype=torch.float32)
    want = _logits(adapter, batch)
    got = _logits(merged, batch)
    assert not (dest / "adapter_config.json").exists()
    if not tuning.get("quantization_bit"):
        assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
        return
    # 4-bit: the adapter was trained on the quantized base, so the merge starts from its dequantized weights.
    # bitsandbytes' CPU kernel leaves ~3e-3 (logits ~0.13); merging into the original weights is 25x+ further off.
    from peft import PeftModel

    naive = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model("llama")), out).merge_and_unload()
    error, naive_error = (got - want).abs().max().item(), (_logits(naive, batch) - want).abs().max().item()
    assert error < 1e-2 and error * 10 < naive_error, (error, naive_error)


def test_shards_template_and_modelfile(tiny_model, tmp_path):
    _, tokenizer, out = _trained_adapter(tiny_model, tmp_path, "run")
    dest = export_model(out, tmp_path / "exported", max_shard_size="100KB", dtype="bfloat16", ollama=True)
    shards = sorted(p.name for p in dest.glob("model-*.safetensors"))
    index = json.loads((dest / "model.safetensors.index.json").read_text())
    assert len(shards) > 1 and sorted(set(index["weight_map"].values())) == shards
    assert json.loads((dest / "config.json").read_text())["dtype"] == "bfloat16"
    assert (dest / "chat_template.jinja").read_text() == tokenizer.chat_template
    modelfile = (dest / "Modelfile").read_text()
    assert "FROM ." in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile


def test_refuses_what_is_not_a_run(tmp_path, tiny_model):
    with pytest.raises(ExportError, match="holds no rayft_run.yaml: it is not a finished rayft run"):
        export_model(tiny_model("llama"), tmp_path / "x")


def test_cli_export(tiny_model, tmp_path):
    from rayft.cli import main

    _, _, out = _trained_adapter(tiny_model, tmp_path, "run")
    result = CliRunner().invoke(main, ["export", str(out), "-o", str(tmp_path / "cli"), "--ollama"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli" / "model.safetensors").is_file() and (tmp_path / "cli" / "Modelfile").is_file()
    assert str(tmp_path / "cli") in result.output

    # again: refused without --overwrite, replaced with it; a user's file beside the export blocks both
    again = CliRunner().invoke(main, ["export", str(out), "-o", str(tmp_path / "cli")])
    assert again.exit_code == 2 and "already holds an export written by rayft" in again.output
    assert CliRunner().invoke(main, ["export", str(out), "-o", str(tmp_path / "cli"), "--overwrite"]).exit_code == 0
    assert not (tmp_path / "cli" / "Modelfile").exists()  # the earlier export's files did not linger
    (tmp_path / "cli" / "notes.txt").write_text("mine")
    for flags in ([], ["--overwrite"]):
        refused = CliRunner().invoke(main, ["export", str(out), "-o", str(tmp_path / "cli"), *flags])
        assert refused.exit_code == 2 and "notes.txt" in refused.output and "Traceback" not in refused.output
    assert (tmp_path / "cli" / "notes.txt").read_text() == "mine"


def test_export_never_writes_into_a_base_model_folder(tiny_model, tmp_path):
    import shutil

    _, _, out = _trained_adapter(tiny_model, tmp_path, "run")
    base = shutil.copytree(tiny_model("llama"), tmp_path / "base")
    before = {p.name: p.stat().st_mtime_ns for p in base.iterdir()}
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="holds files rayft did not write"):
            export_model(out, base, overwrite=overwrite)
    assert {p.name: p.stat().st_mtime_ns for p in base.iterdir()} == before


def test_trust_remote_code_comes_from_the_caller_not_the_run_directory(tiny_model, tmp_path, monkeypatch):
    import yaml
    from transformers import AutoModelForCausalLM

    _, _, out = _trained_adapter(tiny_model, tmp_path, "run", use_dora=True)  # merged on the whole model
    config = yaml.safe_load((out / "rayft_run.yaml").read_text())
    config["model"]["trust_remote_code"] = True  # a run directory from someone else asks for it
    (out / "rayft_run.yaml").write_text(yaml.safe_dump(config))
    seen, load = [], AutoModelForCausalLM.from_pretrained

    def recording(*args, **kwargs):  # the real loader, with the flag it was given written down
        seen.append(kwargs.get("trust_remote_code"))
        return load(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", recording)
    export_model(out, tmp_path / "exported")
    assert seen == [False]
    export_model(out, tmp_path / "trusted", trust_remote_code=True)
    assert seen == [False, True]


def test_a_full_model_is_recut_and_cast_tensor_by_tensor(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    run = run_config(tiny_model("llama"), [{"path": "x.json"}], tmp_path, "full", tuning={"method": "full"})
    tokenizer = load_tokenizer_for(tiny_model("llama"))
    model = load_model(run, tokenizer).eval()
    save_model(model, tokenizer, run, tmp_path / "full")
    dest = export_model(tmp_path / "full", tmp_path / "exported", max_shard_size="100KB", dtype="bfloat16")
    assert len(list(dest.glob("model-*.safetensors"))) > 1
    assert json.loads((dest / "config.json").read_text())["dtype"] == "bfloat16"
    exported = AutoModelForCausalLM.from_pretrained(dest)
    assert exported.dtype == torch.bfloat16
    want = model.to(torch.bfloat16).state_dict()
    assert all(torch.equal(t, want[k]) for k, t in exported.state_dict().items())


@pytest.mark.parametrize(
    "arch, tuning",
    [("llama", {}), ("llama", {"use_rslora": True}), ("gpt2", {}), ("llama", {"dora": True})],
    ids=["lora", "rslora", "gpt2-conv1d", "dora-whole"],
)
def test_a_lora_adapter_merges_weight_by_weight_as_peft_merges_it(tiny_model, tmp_path, monkeypatch, arch, tuning):
    """The streamed merge (rayft_core.model.merge) writes the weights PEFT's merge_and_unload gives, without ever
    loading the base model; what it cannot reproduce (DoRA) goes to PEFT on the whole model."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    dora = tuning.pop("dora", False)
    run = run_config(
        tiny_model(arch), [{"path": "x.json"}], tmp_path, "run",
        tuning={"method": "lora", "rank": 4, "use_dora": dora, **tuning}, deepspeed={"zero_stage": 0},
    )  # fmt: skip
    tokenizer = load_tokenizer_for(tiny_model(arch))
    model = apply_tuning(load_model(run, tokenizer), run)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
    save_model(model, tokenizer, run, tmp_path / "run")
    want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model(arch)), tmp_path / "run")
    want = want.merge_and_unload().state_dict()
    loads, load = [], AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: loads.append(a) or load(*a, **k))
    dest = export_model(tmp_path / "run", tmp_path / "merged")
    assert (loads != []) == dora  # only DoRA loaded the base model
    got = load_file(str(dest / "model.safetensors"))
    assert set(got) <= set(want) and "lm_head.weight" in want
    assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in got)


def test_a_run_that_added_tokens_merges_weight_by_weight_with_its_trained_embeddings(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from rayft_core.model.loader import load_tokenizer

    run = run_config(
        tiny_model("llama"), [{"path": "x.json"}], tmp_path, "run", tuning={"method": "lora", "rank": 4},
        model={"name_or_path": str(tiny_model("llama")), "add_special_tokens": ["<tool>", "</tool>"]},
    )  # fmt: skip
    tokenizer = load_tokenizer(run.model)
    model = apply_tuning(load_model(run, tokenizer), run)
    save_model(model, tokenizer, run, tmp_path / "run")
    dest = export_model(tmp_path / "run", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(dest)
    assert (
        merged.config.vocab_size
        == len(tokenizer)
        > AutoModelForCausalLM.from_pretrained(tiny_model("llama")).config.vocab_size
    )
    ids = torch.tensor([tokenizer.convert_tokens_to_ids(["<tool>", "</tool>"]) + [5, 9]])
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, model.eval()(input_ids=ids).logits, atol=1e-5)


def test_a_base_whose_checkpoint_names_differ_from_the_model_is_merged_whole(tiny_model, tmp_path):
    """transformers renames some families' checkpoint keys when loading (the matrix found six): the weight-by-weight
    merge cannot match them, so the export merges on the whole model, which transformers loads with the renames."""
    import shutil

    from safetensors.torch import load_file, save_file

    from rayft_core.model.merge import streaming_problem

    base = shutil.copytree(tiny_model("llama"), tmp_path / "base")
    weights = load_file(str(base / "model.safetensors"))
    save_file({k.replace("mlp.", "ffn."): v for k, v in weights.items()}, str(base / "model.safetensors"))
    _, _, out = _trained_adapter(tiny_model, tmp_path, "run")
    run = read_run(out)
    assert streaming_problem(run, out) is None
    run.model.name_or_path = str(base)
    assert "names its weights otherwise" in streaming_problem(run, out)


def test_a_saved_adapter_continues_from_its_weights_and_earlier_ones_merge_into_the_base(tiny_model, tmp_path):
    """tuning.adapter (LLaMA-Factory's adapter_name_or_path): the saved adapter is the start, trainable; with
    merge_adapters the base the new adapter sits on is the merged one."""
    from rayft_core.config import validate_config
    from rayft_core.schema import ConfigError

    trained, tokenizer, saved = _trained_adapter(tiny_model, tmp_path, "first")
    batch = _batch(tokenizer)

    def tuned(**tuning):
        run = run_config(
            tiny_model("llama"), [{"path": "x.json"}], tmp_path, "next", tuning={"method": "lora", **tuning}
        )
        return apply_tuning(load_model(run, tokenizer), run).eval()

    continued = tuned(adapter=str(saved))
    lora = {n: p for n, p in continued.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    assert torch.allclose(_logits(continued, batch), _logits(trained, batch), atol=1e-6)  # its weights are the start
    stacked = tuned(merge_adapters=[str(saved)], rank=2)  # a new adapter (B = 0) on the merged base
    assert torch.allclose(_logits(stacked, batch), _logits(trained, batch), atol=1e-5)
    assert {p.shape[0] for n, p in stacked.named_parameters() if "lora_A" in n} == {2}
    base = {"model": {"name_or_path": str(tiny_model("llama"))}, "data": {"train": [{"path": "x.json"}]}}
    with pytest.raises(ConfigError, match="tuning.rank: comes from the adapter being continued"):
        validate_config({**base, "tuning": {"method": "lora", "adapter": str(saved), "rank": 16}})
    with pytest.raises(ConfigError, match="tuning.merge_adapters: merging changes the base"):
        validate_config(
            {**base, "tuning": {"method": "lora", "merge_adapters": [str(saved)]}, "deepspeed": {"zero_stage": 3}}
        )
    with pytest.raises(ConfigError, match=r"tuning.adapter: '/nowhere' holds no adapter_config.json"):
        validate_config({**base, "tuning": {"method": "lora", "adapter": "/nowhere"}})
