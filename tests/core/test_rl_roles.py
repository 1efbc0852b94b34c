"""The RL stages without Ray: roles on one base, reward functions, prompts, the config's refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rayft_core.config import validate_config
from rayft_core.errors import UserInputError
from rayft_core.schema import ConfigError
from tests.helpers import make_reward_adapter


def _rl_run(base: Path, data: Path, out: Path, stage: dict, **sections):
    raw = {
        "model": {"name_or_path": str(base)},
        "tuning": {"method": "lora", "rank": 4, "dropout": 0.0},
        "stage": {"max_new_tokens": 16, **stage},
        "data": {"train": [{"path": str(data), "format": "alpaca"}], "max_seq_len": 128},
        "train": {"micro_batch_size": 2, "gradient_accumulation_steps": 2},
        "output": {"storage_path": str(out), "name": "rl"},
        **sections,
    }
    return validate_config(raw)


@pytest.fixture(scope="module")
def reward_adapter(tiny_model, tokenizer, workdir: Path) -> Path:
    return make_reward_adapter(tiny_model("llama"), tokenizer, workdir / "reward-adapter")


def _batch(tokenizer) -> dict[str, torch.Tensor]:
    from rayft_core.data.collate import pad_batch

    a = tokenizer("What do bees make? Bees make honey.")["input_ids"]
    b = tokenizer("Say hello. Hello there!")["input_ids"]
    return pad_batch({"input_ids": [a, b], "labels": [[-100] * 4 + a[4:], [-100] * 3 + b[3:]]}, tokenizer.pad_token_id)


def test_roles_share_one_base_and_each_matches_its_own_model(
    tiny_model, tokenizer, alpaca_file, workdir, reward_adapter
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rayft_core.model.loader import load_model
    from rayft_core.model.value_head import load_reward_model
    from rayft_core.train.losses import sequence_logps
    from rayft_core.train.rl_model import POLICY, REWARD, RlModel

    run = _rl_run(tiny_model("llama"), alpaca_file, workdir, {"name": "ppo", "reward_model": str(reward_adapter)})
    model = RlModel.build(load_model(run, tokenizer), run)
    batch = _batch(tokenizer)
    base_params = [
        n for n, _ in model.named_parameters() if "lora_" not in n and not n.startswith(("value_head.", "reward_head."))
    ]
    assert len(base_params) == len(
        [n for n, _ in AutoModelForCausalLM.from_pretrained(tiny_model("llama")).named_parameters()]
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(f".{POLICY}." in n or n.startswith("value_head.") for n in trainable)
    assert any(n.startswith("value_head.") for n in trainable)

    # reward: the adapter + head on the shared base scores as the reward model loaded on its own copy
    alone, _ = load_reward_model(reward_adapter)
    with torch.no_grad():
        torch.testing.assert_close(model.reward_scores(batch), alone.score(batch), rtol=1e-5, atol=1e-5)
    assert {
        n for n, p in model.named_parameters() if p.requires_grad
    } == trainable  # switching adapters changed nothing
    assert model.lm.active_adapter == POLICY and REWARD in model.lm.peft_config

    # reference: the plain base
    plain = AutoModelForCausalLM.from_pretrained(tiny_model("llama"))
    with torch.no_grad():
        torch.testing.assert_close(
            model.reference_logps(batch).sum(-1), sequence_logps(plain, batch)[0], rtol=1e-5, atol=1e-5
        )
        logps, values, entropy = model.forward_policy(batch, entropy=True)
    mask = batch["labels"][:, 1:] != -100
    assert values.shape == logps.shape == entropy.shape == mask.shape
    assert (logps[~mask] == 0).all() and (logps[mask] < 0).all() and (entropy[mask] > 0).all()

    # the output is the policy adapter alone, an ordinary PEFT adapter; the engines get the same files
    with torch.no_grad():
        for n, p in model.lm.named_parameters():
            if f"lora_B.{POLICY}" in n:
                p.normal_(std=0.1)
    out = workdir / "rl-policy"
    model.save_pretrained(out)
    files = model.policy_adapter_files(rank=0)
    assert set(files) == {"adapter_model.safetensors", "adapter_config.json"}
    assert files["adapter_model.safetensors"] == (out / "adapter_model.safetensors").read_bytes()
    assert not (out / REWARD).exists()
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model("llama")), out)
    with torch.no_grad():
        torch.testing.assert_close(sequence_logps(reloaded, batch)[0], model.forward_policy(batch)[0].sum(-1))


def test_reward_model_from_another_base_is_refused(tiny_model, reward_adapter, tokenizer) -> None:
    from rayft_core.train.rl_model import check_reward_model

    check_reward_model(reward_adapter, tiny_model("llama"), len(tokenizer))  # its own base: fine
    with pytest.raises(UserInputError, match=r"trained on another base .*model_type llama vs qwen2"):
        check_reward_model(reward_adapter, tiny_model("qwen2"), len(tokenizer))
    with pytest.raises(UserInputError, match="holds no value_head.safetensors"):
        check_reward_model(tiny_model("llama"), tiny_model("llama"), len(tokenizer))


def test_reward_functions(tmp_path: Path) -> None:
    from rayft_core.rl_stage_config import RewardFunction
    from rayft_core.train.rewards import Rewards

    code = tmp_path / "my_rewards.py"
    code.write_text(
        "def short(completions, limit=5):\n    return [float(len(c) <= limit) for c in completions]\n"
        "def wrong(completions):\n    return [1.0]\n"
        "def needs(completions, scale):\n    return [scale] * len(completions)\n"
    )
    rewards = Rewards(
        [
            RewardFunction(function="number_match"),
            RewardFunction(function=f"{code}:short", kwargs={"limit": 3}),
            RewardFunction(function="regex", kwargs={"pattern": r"^\d"}),
        ]
    )
    assert rewards.read_references()
    scores = rewards(["2+2?", "3+3?"], ["4 it is", "seven"], ["The answer is 4", "6"])
    assert scores == [[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]
    assert not Rewards([RewardFunction(function=f"{code}:short")]).read_references()
    trajectory = "<tool_call>print(2 + 2)</tool_call> 4 The answer is 4"
    last = Rewards([RewardFunction(function="number_match", kwargs={"which": "last"})])
    assert last(["q"], [trajectory], ["4"]) == [[1.0]] and rewards(["q"], [trajectory], ["4"])[0] == [0.0]

    with pytest.raises(UserInputError, match="must return one finite number per completion"):
        Rewards([RewardFunction(function=f"{code}:wrong")])(["a", "b"], ["x", "y"], [None, None])
    with pytest.raises(UserInputError, match="its argument 'scale' has no value"):
        Rewards([RewardFunction(function=f"{code}:needs")])
    with pytest.raises(UserInputError, match="takes no argument 'limt'"):
        Rewards([RewardFunction(function=f"{code}:short", kwargs={"limt": 2})])
    with pytest.raises(UserInputError, match="has no 'nope'"):
        Rewards([RewardFunction(function=f"{code}:nope")])
    with pytest.raises(UserInputError, match="importing no_such_module failed"):
        Rewards([RewardFunction(function="no_such_module:f")])
    with pytest.raises(UserInputError, match="name a built-in"):
        Rewards([RewardFunction(function="exact")])


def test_prompts_render_as_the_chat_template_does(tokenizer, tiny_model, workdir) -> None:
    from rayft_core.data.formats import align_row
    from rayft_core.model.loader import load_tokenizer
    from rayft_core.stage_config import section
    from rayft_core.train.rl_stage import GRPO

    data = workdir / "rl-prompts.jsonl"
    rows = [{"instruction": "What is 2 plus 2?", "output": "4"}, {"instruction": "Say hello."}]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    run = _rl_run(
        tiny_model("llama"),
        data,
        workdir,
        {"name": "grpo", "group_size": 2, "reward_functions": [{"function": "number_match"}]},
    )
    spec = run.data.train[0]
    aligned = [align_row({**r, "path": str(data), "__row__": i}, spec, section("grpo")) for i, r in enumerate(rows)]
    enc = GRPO.encode_rows(aligned, load_tokenizer(run.model), run)
    for row, ids in zip(rows, enc["prompt_input_ids"]):
        want = tokenizer.apply_chat_template(
            [{"role": "user", "content": row["instruction"]}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
        )["input_ids"]
        assert ids == list(want)
    assert enc["prompt"] == ["What is 2 plus 2?", "Say hello."] and enc["reference"] == ["4", None]

    long = run.model_copy(update={"stage": run.stage.model_copy(update={"max_new_tokens": 124})})
    with pytest.raises(Exception, match=r"the prompt has \d+ tokens, more than the 4"):
        GRPO.encode_rows(aligned, load_tokenizer(run.model), long)


def test_config_refuses_what_cannot_run(tiny_model, alpaca_file, workdir) -> None:
    base = tiny_model("llama")
    with pytest.raises(ConfigError, match="stage.group_size: .*needs at least 2 per prompt; got 1"):
        _rl_run(
            base,
            alpaca_file,
            workdir,
            {"name": "grpo", "group_size": 1, "reward_functions": [{"function": "exact_match"}]},
        )
    with pytest.raises(ConfigError, match="stage.reward_model: stage ppo needs a reward"):
        _rl_run(base, alpaca_file, workdir, {"name": "ppo"})
    with pytest.raises(ConfigError, match=r"must hold whole groups of 3"):
        _rl_run(
            base,
            alpaca_file,
            workdir,
            {"name": "grpo", "group_size": 3, "reward_functions": [{"function": "exact_match"}]},
        )
    with pytest.raises(ConfigError, match=r"tuning.method: stage ppo trains a LoRA policy .* not freeze"):
        _rl_run(
            base,
            alpaca_file,
            workdir,
            {"name": "ppo", "reward_functions": [{"function": "exact_match"}]},
            tuning={"method": "freeze"},
        )
    # a full-parameter policy: nothing that rides on the base it trains
    adapter = workdir / "an-adapter"
    adapter.mkdir(exist_ok=True)
    (adapter / "adapter_config.json").write_text("{}")
    full = {"name": "ppo", "reward_functions": [{"function": "exact_match"}]}
    _rl_run(base, alpaca_file, workdir, full, tuning={"method": "full"})
    for extra, message in [
        ({"init_adapter": str(adapter)}, "stage.init_adapter: a full-parameter policy starts from model.name_or_path"),
        ({"reward_model": str(adapter)}, "stage.reward_model: a reward adapter rides on the base"),
    ]:
        with pytest.raises(ConfigError, match=message):
            _rl_run(base, alpaca_file, workdir, {**full, **extra}, tuning={"method": "full"})
    with pytest.raises(ConfigError, match=r"stage.rollout.engine: .*'vllm'"):
        _rl_run(
            base,
            alpaca_file,
            workdir,
            {"name": "ppo", "reward_functions": [{"function": "exact_match"}], "rollout": {"engine": "sglang"}},
        )


def test_hf_rollout_engine_answers_from_the_adapter_it_was_sent_last(tokenizer, workdir) -> None:
    """Sent twice under the same version (a learner group restarted from a checkpoint does that), the engine
    still takes the second adapter; its near-greedy answers are transformers' greedy ones with that adapter."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from rayft_core.infer.rollout import HFRollout, Sampling
    from rayft_core.model.tiny import build_tiny_model
    from rayft_core.train.rl_model import ADAPTER_FILES

    base = build_tiny_model("llama", tokenizer, workdir / "rollout-base", initializer_range=0.2)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say hello."}], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    engine = HFRollout(str(base), tokenizer.pad_token_id, seed=0)
    sampling = Sampling(max_new_tokens=6, temperature=1.0, top_p=1.0, stop_token_ids=(tokenizer.eos_token_id,))
    answers = engine.generate([prompt, prompt[:4]], 3, sampling, seed=0)
    assert [len(group) for group in answers] == [3, 3] and all(1 <= len(a) <= 6 for g in answers for a in g)
    assert engine.generate([prompt], 2, sampling, seed=5) == engine.generate([prompt], 2, sampling, seed=5)

    def adapter(seed: int) -> tuple[dict[str, bytes], list[int]]:
        torch.manual_seed(seed)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, init_lora_weights=False))
        out = workdir / f"rollout-adapter-{seed}"
        model.save_pretrained(out)
        greedy = (
            PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out)
            .generate(
                input_ids=torch.tensor([prompt]),
                do_sample=False,
                max_new_tokens=6,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )[0, len(prompt) :]
            .tolist()
        )
        return {name: (out / name).read_bytes() for name in ADAPTER_FILES}, greedy

    (first, greedy_first), (second, greedy_second) = adapter(1), adapter(2)
    assert greedy_first != greedy_second
    near_greedy = Sampling(max_new_tokens=6, temperature=1e-4, top_p=1.0, stop_token_ids=(tokenizer.eos_token_id,))
    engine.load_adapter(0, first)
    assert engine.generate([prompt], 1, near_greedy, seed=0)[0][0] == greedy_first
    engine.load_adapter(0, second)
    assert engine.generate([prompt], 1, near_greedy, seed=0)[0][0] == greedy_second


def test_a_full_reward_model_and_an_initial_adapter(tiny_model, tokenizer, alpaca_file, workdir) -> None:
    """A full-parameter `stage: rm` output is held as its own frozen model; stage.init_adapter starts the policy
    from an adapter (e.g. an SFT run's), trainable."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rayft_core.model.loader import load_model
    from rayft_core.model.value_head import ValueHeadModel, load_reward_model
    from rayft_core.train.losses import sequence_logps
    from rayft_core.train.rl_model import POLICY, RlModel, check_reward_model

    base = tiny_model("llama")
    torch.manual_seed(3)
    full = ValueHeadModel(AutoModelForCausalLM.from_pretrained(base), 64)
    torch.nn.init.normal_(full.v_head.weight, std=0.5)
    full.save_pretrained(workdir / "full-reward")
    tokenizer.save_pretrained(workdir / "full-reward")
    check_reward_model(workdir / "full-reward", base, len(tokenizer))
    sft = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, init_lora_weights=False))
    sft.save_pretrained(workdir / "sft-adapter")

    run = _rl_run(
        base,
        alpaca_file,
        workdir,
        {
            "name": "grpo",
            "group_size": 2,
            "reward_model": str(workdir / "full-reward"),
            "init_adapter": str(workdir / "sft-adapter"),
        },
    )
    model = RlModel.build(load_model(run, tokenizer), run)
    batch = _batch(tokenizer)
    alone, _ = load_reward_model(workdir / "full-reward")
    with torch.no_grad():
        torch.testing.assert_close(model.reward_scores(batch), alone.score(batch), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            model.forward_policy(batch)[0].sum(-1), sequence_logps(sft, batch)[0], rtol=1e-5, atol=1e-5
        )
    assert model.value_head is None  # GRPO has no critic
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(f".{POLICY}." in n for n in trainable)


def test_the_engine_returns_the_log_probs_it_sampled_with(tokenizer, workdir) -> None:
    """Asynchronous rollouts take the importance ratio against the log-probs the engine sampled with: the
    transformers engine's, laid out by Groups.sampled_logps, equal the learners' own log-probs of the rows they
    build from those answers (the adapter's, and the model's raw distribution: sampling at temperature 0.7 and top-p
    0.9 does not change them); asking for them changes nothing sampled."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from rayft_core.data.collate import pad_batch
    from rayft_core.infer.rollout import HFRollout, Sampling
    from rayft_core.model.tiny import build_tiny_model
    from rayft_core.train.losses import decoder_hidden, labelled_logps
    from rayft_core.train.rl_model import ADAPTER_FILES
    from rayft_core.train.rollout import Groups

    base = build_tiny_model("llama", tokenizer, workdir / "logprob-base", initializer_range=0.2)
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, init_lora_weights=False))
    model.save_pretrained(workdir / "logprob-adapter")
    engine = HFRollout(str(base), tokenizer.pad_token_id, seed=0)
    engine.load_adapter(0, {name: (workdir / "logprob-adapter" / name).read_bytes() for name in ADAPTER_FILES})

    prompts = [tokenizer("What do bees make?")["input_ids"], tokenizer("Say hello.")["input_ids"][:3]]
    sampling = Sampling(max_new_tokens=8, temperature=0.7, top_p=0.9, stop_token_ids=(tokenizer.eos_token_id,))
    answers = engine.generate(prompts, 3, sampling, seed=4, logprobs=True)
    assert [[ids for ids, _ in group] for group in answers] == engine.generate(prompts, 3, sampling, seed=4)
    assert all(len(ids) == len(lps) >= 1 for group in answers for ids, lps in group)
    groups = Groups(prompts, [], ["", ""], [None, None])
    groups.take_sampled(answers)

    batch = pad_batch(dict(zip(("input_ids", "labels"), groups.rows())), tokenizer.pad_token_id)
    mask = batch["labels"][:, 1:] != -100
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), workdir / "logprob-adapter")
    with torch.no_grad():
        learners = labelled_logps(*decoder_hidden(policy.eval(), batch), batch["labels"])[0]
    sampled = groups.sampled_logps(mask)
    assert int(mask.sum()) == sum(len(lps) for g in groups.logprobs for lps in g)
    assert torch.allclose(sampled, learners, atol=1e-5), (sampled - learners).abs().max()
    assert (sampled[mask] < 0).all() and (sampled[~mask] == 0).all()


def test_async_rollouts_are_refused_with_tools_and_dynamic_sampling(tiny_model, alpaca_file, workdir) -> None:
    """Asynchronous rollouts need every answer of an iteration in one batch; a full-parameter policy runs them
    (its behaviour log-probs come from the engines, no second copy of the model is kept)."""
    stage = {"name": "grpo", "group_size": 2, "reward_functions": [{"function": "number_match"}]}
    base = tiny_model("llama")
    run = _rl_run(base, alpaca_file, workdir, {**stage, "rollout": {"mode": "async"}}, tuning={"method": "full"})
    assert run.stage.rollout.mode == "async" and run.tuning.method == "full"
    with pytest.raises(ConfigError, match="stage.rollout.mode: async rollouts .* need sync"):
        _rl_run(base, alpaca_file, workdir, {**stage, "algorithm": "dapo", "rollout": {"mode": "async"}})
