"""The RL stages' sections (ppo, grpo and its family) and what they hold: reward functions, tools, the rollout
group. Part of the run schema (rayft_core.stage_config unites them with the other stages)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from rayft_core.schema import Section
from rayft_core.stage_base import PROMPT, DataShape, StageSection


class RewardFunction(Section):
    """A verifiable reward: fn(prompts=[...], completions=[...], references=[...], **kwargs) -> one float per completion."""

    function: str = Field(
        description="A built-in (exact_match, number_match, regex, http: a scoring service at kwargs.url) or "
        "'package.module:function' or 'path/to/file.py:function' (the file must be readable where the learners run)."
    )
    weight: float = Field(1.0, description="Its weight in the reward, beside the other functions and the reward model.")
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="More keyword arguments (regex: pattern; http: url, api_key_env, batch_size, timeout, retries).",
    )


class Tool(Section):
    """A tool the policy may call in its rollouts (stage.tools)."""

    function: str = Field(
        description="python (a sandboxed Python executor: no network, no writes outside its own directory, CPU time "
        "and memory limits) or 'package.module:function' / 'path/to/file.py:function', a Python function run in the "
        "learner's process, described to the model from its type hints and its docstring's Args section."
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="python only: timeout (seconds, 10), memory_mb (1024), max_file_mb (16)."
    )


class RolloutConfig(Section):
    """The rollout group: generation engines as Ray actors beside the learners (split placement)."""

    engine: Literal["auto", "vllm", "hf"] = Field(
        "auto",
        description="vllm: vLLM engines applying the policy adapter per request; hf: transformers generate; "
        "auto: vLLM when installed and it supports the model here, else transformers.",
    )
    num_engines: int = Field(1, ge=1, description="Engines; each iteration's prompts are split between them.")
    cpus_per_engine: float = Field(1.0, ge=0, description="CPUs each engine reserves.")
    gpus_per_engine: int | Literal["auto"] = Field(
        "auto", description="GPUs each engine reserves (auto: 1 when the learners use GPUs, else 0)."
    )
    check_sync: bool = Field(
        False,
        description="After every sync, score one fixed answer on the engines and on the learners and log the largest "
        "difference of their log-probs (rl/engine_logprob_gap): a check that the engines generate from the "
        "weights the learners hold (costs a forward pass on each).",
    )
    mode: Literal["sync", "async"] = Field(
        "sync",
        description="sync: each iteration's answers come from the policy it trains; async: the engines answer the "
        "next iteration's prompts while the learners train on this one's, so answers are one policy update old, "
        "and the importance ratio is taken against the log-probs the engines sampled them with.",
    )


class _RlStage(StageSection):
    data: ClassVar[DataShape] = PROMPT
    loop: ClassVar[Literal["supervised", "rl"]] = "rl"
    # PPO's shape: a value head, GAE advantages and the KL in the reward. Without: advantages within each
    # prompt's group of responses and the KL in the loss (GRPO).
    value_head: ClassVar[bool] = False

    reward_model: str | None = Field(
        None,
        description="A `stage: rm` output. Its adapter and value head are loaded beside the policy on the same "
        "base (it must be an adapter of this run's base); a full reward model is loaded as a separate frozen model.",
    )
    reward_model_weight: float = Field(1.0, description="Weight of the reward model's score in the reward.")
    reward_functions: list[RewardFunction] = Field(
        default_factory=list,
        description="Verifiable rewards, summed with their weights (and the reward model's score).",
    )
    init_adapter: str | None = Field(
        None,
        description="Start the policy from this LoRA adapter (an SFT run's output); "
        "default: a fresh adapter shaped by `tuning`.",
    )
    max_new_tokens: int = Field(64, ge=1, description="Longest response generated; prompts get max_seq_len minus this.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling of the rollouts.")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each rollout batch; one optimizer step per pass.")
    clip_eps: float = Field(0.2, gt=0, description="The policy ratio's clip range.")
    clip_eps_high: float | None = Field(
        None, gt=0, description="The ratio's upper clip range (DAPO's clip-higher, e.g. 0.28); default: clip_eps."
    )
    importance_ratio: Literal["token", "sequence"] = Field(
        "token",
        description="token: a ratio per token (PPO, GRPO); sequence: one per answer, from its tokens' mean "
        "log-ratio, clipped as a whole (GSPO).",
    )
    loss_aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = (
        Field(
            "token-mean",
            description="How token losses make the loss: token-mean (every token weighs the same), "
            "seq-mean-token-mean (every answer does), seq-mean-token-sum, seq-mean-token-sum-norm (each answer's sum "
            "over max_new_tokens: Dr. GRPO).",
        )
    )
    overlong_buffer: int | None = Field(
        None,
        ge=1,
        description="DAPO's overlong shaping: an answer longer than max_new_tokens minus this loses up to 1 from its "
        "score, linearly.",
    )
    kl_estimator: Literal["k1", "k2", "k3", "abs"] = Field(
        "k1", description="Per-token estimator of KL(policy || reference)."
    )
    reward_clip: float | None = Field(None, gt=0, description="Clip each (normalised) score to +-this.")
    tools: list[Tool] = Field(
        default_factory=list,
        description="Tools the policy may call: multi-turn rollouts in which each call an answer makes (in the chat "
        "template's format) is run, its result appended as a tool turn, and the model goes on, up to max_turns "
        "turns. The results are not trained on; the reward reads the whole trajectory. The prompts list the tools "
        "(a template that renders tools: qwen, llama3, or the tokenizer's own).",
    )
    max_turns: int = Field(4, ge=1, description="With tools: the most model turns in a trajectory.")
    max_tool_output: int = Field(
        2000, ge=1, description="With tools: a tool's result is cut to this many characters before the model reads it."
    )
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)

    @property
    def responses_per_prompt(self) -> int:
        return 1

    def problems(self, run: Any) -> list[str]:
        problems = []
        if run.tuning.method not in ("lora", "full"):
            problems.append(
                f"tuning.method: stage {self.name} trains a LoRA policy (its roles sharing one base) or a full-parameter "
                f"one (method full), not {run.tuning.method}"
            )
        elif run.tuning.method == "full":
            problems += self._full_problems()
        if self.reward_model is None and not self.reward_functions:
            problems.append(
                f"stage.reward_model: stage {self.name} needs a reward: a reward model (a `stage: rm` "
                "output), stage.reward_functions, or both"
            )
        if self.overlong_buffer and self.overlong_buffer > self.max_new_tokens:
            problems.append(
                f"stage.overlong_buffer: {self.overlong_buffer} is more than the {self.max_new_tokens} tokens of "
                "stage.max_new_tokens it is counted back from"
            )
        if self.max_new_tokens >= run.data.max_seq_len:
            problems.append(
                f"stage.max_new_tokens: responses of up to {self.max_new_tokens} tokens leave no room for "
                f"the prompt within data.max_seq_len {run.data.max_seq_len}"
            )
        per_worker = run.train.micro_batch_size * run.train.gradient_accumulation_steps
        if per_worker % self.responses_per_prompt:
            problems.append(
                f"stage.group_size: each worker's rollout batch (micro_batch_size x "
                f"gradient_accumulation_steps = {per_worker} responses) must hold whole groups of "
                f"{self.responses_per_prompt}"
            )
        if run.data.eval or run.data.val_size:
            problems.append(f"data.eval: stage {self.name} has no evaluation loss; remove data.eval and data.val_size")
        if self.rollout.mode == "async" and (self.tools or getattr(self, "dynamic_sampling", False)):
            problems.append(
                "stage.rollout.mode: async rollouts answer the next prompts in one batch while the learners train; "
                "tools (several rounds of answers) and dynamic_sampling (more prompts on demand) need sync"
            )
        if run.data.streaming:  # a bad streamed row would have to stay in its batch, as a prompt of padding
            problems.append(
                f"data.streaming: stage {self.name} reads its prompts whole (bad rows are dropped and "
                "reported before training); set it to false"
            )
        return problems

    def _full_problems(self) -> list[str]:
        """What a full-parameter policy cannot take: what needs an adapter on the base it trains."""
        problems = []
        if self.init_adapter:
            problems.append(
                "stage.init_adapter: a full-parameter policy starts from model.name_or_path, not an adapter"
            )
        if self.reward_model and Path(self.reward_model, "adapter_config.json").is_file():
            problems.append(
                "stage.reward_model: a reward adapter rides on the base the policy shares, and a full-parameter "
                "policy changes that base; give a full reward model (stage rm with tuning.method full) or reward "
                "functions"
            )
        return problems


class PpoStage(_RlStage):
    """PPO (RLHF): a policy (LoRA, or full) and a value head on it; the reference: the base (adapter off, or a copy)."""

    value_head: ClassVar[bool] = True
    name: Literal["ppo"] = "ppo"
    kl_coef: float = Field(
        0.05,
        ge=0,
        description="Weight of the per-token KL penalty in the reward (initial value with adaptive_kl_target).",
    )
    adaptive_kl_target: float | None = Field(
        None, gt=0, description="Steer kl_coef so the KL tracks this target (Ziegler et al.); None: a fixed kl_coef."
    )
    adaptive_kl_horizon: int = Field(10000, ge=1, description="Samples over which the adaptive coefficient moves.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount of GAE.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE's lambda.")
    value_clip: float = Field(0.2, gt=0, description="The value head's clip range around its rollout values.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    normalize_reward: bool = Field(
        False,
        description="Scale scores by their running std and centre them on the "
        "running mean (TRL's score normalisation).",
    )
    whiten_advantages: bool = Field(True, description="Whiten advantages over each worker's rollout batch.")


# What stage.algorithm sets, where the stage does not set it itself (rayft_core.train.rl has each piece and its paper)
ALGORITHMS: dict[str, dict[str, Any]] = {
    "grpo": {},
    "dr_grpo": {"normalize_std": False, "loss_aggregation": "seq-mean-token-sum-norm"},
    "dapo": {
        "clip_eps_high": 0.28,
        "loss_aggregation": "token-mean",
        "overlong_buffer": "max_new_tokens / 5",
        "dynamic_sampling": True,
    },
    "gspo": {
        "importance_ratio": "sequence",
        "clip_eps": 3e-4,
        "clip_eps_high": 4e-4,
        "loss_aggregation": "seq-mean-token-mean",
    },
    "rloo": {"advantage": "rloo"},
    "reinforce++": {"advantage": "reinforce++"},
    "reinforce++_baseline": {"advantage": "reinforce++_baseline"},
}


class GrpoStage(_RlStage):
    """GRPO and its family: several responses per prompt, scored against each other; no value head."""

    name: Literal["grpo"] = "grpo"
    algorithm: Literal["grpo", "dr_grpo", "dapo", "gspo", "rloo", "reinforce++", "reinforce++_baseline"] = Field(
        "grpo",
        description="A recipe: it sets the keys below it names, where the stage does not set them. grpo: as the keys "
        "are; dr_grpo: normalize_std false, seq-mean-token-sum-norm; dapo: clip_eps_high 0.28, token-mean, "
        "overlong_buffer max_new_tokens / 5, dynamic_sampling; gspo: sequence importance ratio, clip 3e-4 / 4e-4, seq-mean-token-mean; "
        "rloo, reinforce++, reinforce++_baseline: that advantage.",
    )
    group_size: int = Field(4, description="Responses sampled per prompt (at least 2).")
    advantage: Literal["grpo", "rloo", "reinforce++", "reinforce++_baseline"] = Field(
        "grpo",
        description="grpo: score minus the group mean, over the group std; rloo: score minus the mean of the others; "
        "reinforce++: the score normalised over the whole batch; reinforce++_baseline: minus the group mean first.",
    )
    normalize_std: bool = Field(True, description="GRPO: divide by the group's std (false: Dr. GRPO).")
    dynamic_sampling: bool = Field(
        False,
        description="DAPO's dynamic sampling: a group whose answers all score the same (no advantage) is dropped, and "
        "the worker's next prompts are answered in its place, for up to dynamic_sampling_rounds more rounds per "
        "iteration (short after them, the batch is filled with dropped groups). Uses more prompts per iteration.",
    )
    dynamic_sampling_rounds: int = Field(3, ge=1, description="With dynamic_sampling: the most refill rounds.")
    kl_coef: float = Field(
        0.04, ge=0, description="Weight of the KL to the reference in the loss (0: no reference pass)."
    )
    kl_estimator: Literal["k1", "k2", "k3", "abs"] = Field(
        "k3", description="Per-token estimator of KL(policy || reference)."
    )

    @model_validator(mode="before")
    @classmethod
    def _recipe(cls, data: Any) -> Any:
        algorithm = data.get("algorithm", "grpo") if isinstance(data, dict) else None
        if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
            return data  # not a mapping, or not an algorithm's name: the field's own check says so
        recipe = dict(ALGORITHMS[algorithm])
        if "overlong_buffer" in recipe:
            tokens = data.get("max_new_tokens", 64)
            recipe["overlong_buffer"] = max(1, tokens // 5) if isinstance(tokens, int) else None
        return {**recipe, **data}

    @property
    def responses_per_prompt(self) -> int:
        return self.group_size

    @field_validator("group_size")
    @classmethod
    def _group(cls, v: int) -> int:
        if v < 2:
            raise ValueError(
                f"GRPO compares each response with the others for its prompt, so it needs at least 2 per "
                f"prompt; got {v}"
            )
        return v

    @model_validator(mode="after")
    def _sampling_needs_a_group_baseline(self) -> GrpoStage:
        if self.dynamic_sampling and self.advantage == "reinforce++":
            raise ValueError(
                "dynamic_sampling drops the groups whose answers all score the same, which have no advantage only "
                "against their group's mean: use advantage grpo, rloo or reinforce++_baseline with it"
            )
        return self
