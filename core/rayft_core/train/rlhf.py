"""Stages ppo and grpo: the learner's loop. Each iteration, on every learner worker:

1. generate: the worker's prompts go to the rollout engines (all workers' prompts gathered on rank 0,
   split between the engines, answers sent back), sampled from the current policy adapter;
2. score: the reward (reward model on the shared base, and/or reward functions on the decoded text),
   the rollout's log-probs, values (PPO) and the reference's log-probs, without gradients;
3. learn: advantages (PPO: KL-penalised token rewards and GAE; GRPO: the score against its group),
   then stage.ppo_epochs passes of the clipped objective, one optimizer step each (DeepSpeed ZeRO);
4. sync: the new adapter goes to every engine (PEFT's files; vLLM loads them as a new LoRA).

With asynchronous rollouts the engines answer iteration k+1's prompts during steps 2-4 of iteration k, so the
learners train on answers one update old; the engines return each sampled token's log-prob with it, the behaviour
policy's that the importance ratio is taken against (see _iterations and rl_learner.Learner._rollout_pass).

It knows nothing of Ray: the cluster layer hands it the prompt batches, a ``Rollouts`` and ``report``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rayft_core.config import RunConfig
from rayft_core.infer.rollout import Sampling
from rayft_core.train.agent import Agent, Tools
from rayft_core.train.plan import TrainPlan
from rayft_core.train.rewards import Rewards
from rayft_core.train.rl_learner import Learner
from rayft_core.train.rollout import Groups, Rollouts, collect_everywhere, submit_everywhere
from rayft_core.train.session import Report, WorkerSession
from rayft_core.train.stages import STAGES

logger = logging.getLogger(__name__)


def stop_token_ids(tokenizer: Any, model_dir: str) -> tuple[int, ...]:
    """Where a response ends: the tokenizer's end token and the model's generation config's."""
    from transformers import GenerationConfig

    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    try:
        eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
        ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    except OSError:
        pass
    return tuple(sorted(ids))


def rl_worker(
    run: RunConfig,
    plan: TrainPlan,
    epoch_batches: Callable[[int], Iterable[dict[str, Any]]],
    rollouts: Rollouts | None,
    report: Report,
    rank: int,
    world_size: int,
    resume_from: str | Path | None = None,
    node: str | None = None,
) -> None:
    """Train plan.total_steps iterations; ``rollouts`` is used on rank 0 only (None elsewhere). The batches are
    each iteration's prompts (the stage's columns); the rest: see WorkerSession."""
    session = WorkerSession(run, plan, report, rank, world_size, resume_from, node)
    session.setup(STAGES[run.stage.name])
    learner = Learner(run, session, Rewards(run.stage.reward_functions), session.state.stage_state)
    session.stage_state = learner.state
    stop_ids = stop_token_ids(session.tokenizer, run.model.name_or_path)
    sampling = Sampling(run.stage.max_new_tokens, run.stage.temperature, run.stage.top_p, stop_ids)
    if run.stage.tools:
        tools = Tools(run.stage.tools, run.stage.max_tool_output)
        learner.agent = Agent(session.tokenizer, tools, stop_ids, run.stage.max_turns, run.data.max_seq_len)
    with session:
        learner.sync(rollouts, version=session.step, rank=rank)
        _iterations(run, plan, session, learner, session.batches(epoch_batches, what="prompts"), rollouts, sampling)
    session.finish()


def _iterations(
    run: RunConfig,
    plan: TrainPlan,
    session: WorkerSession,
    learner: Learner,
    batches: Iterator[dict[str, Any]],
    rollouts: Rollouts | None,
    sampling: Sampling,
) -> None:
    """The iterations. Asynchronous rollouts (stage.rollout.mode: async): once an iteration's answers are in, the
    next iteration's prompts go to the engines, which answer them with the policy as it is (before this iteration's
    update) while the learners train; the adapter sent after the update applies to the submit after that one."""
    rank, world_size, n = session.rank, session.world_size, run.stage.responses_per_prompt
    asynchronous = run.stage.rollout.mode == "async"
    # each batch as groups to answer, and where it was in its epoch
    positioned = ((_groups(rows), (session.epoch, session.index)) for rows in batches)
    current, ahead = next(positioned, None), None
    since_logged: list[dict[str, float]] = []  # the iterations' metrics since the last record, averaged in it
    while current is not None:
        (groups, position), step = current, session.step + 1
        waited = None
        if ahead is not None:  # answered by the engines while the last iteration trained
            started = time.perf_counter()
            groups.take_sampled(collect_everywhere(rollouts, ahead, rank, world_size))
            waited = time.perf_counter() - started
        if asynchronous:
            current = next(positioned, None) if step < plan.total_steps else None
            ahead = None
            if current is not None:
                prompts = current[0].prompts
                ahead = submit_everywhere(rollouts, prompts, n, sampling, _seed(run, step + 1), rank, world_size, True)
        metrics = learner.iteration(
            rollouts,
            groups,
            lambda: next(positioned, (None, None))[0],  # DAPO's dynamic sampling: this worker's next prompts
            sampling,
            seed=_seed(run, step),
            rank=rank,
            world_size=world_size,
            waited=waited,
        )
        metrics["time/sync_s"] = learner.sync(rollouts, version=step, rank=rank, wait=not asynchronous)
        if run.stage.rollout.check_sync:
            metrics.update(learner.engine_logprob_gap(rollouts, rank))
        metrics["time/iteration_s"] = sum(metrics[f"time/{p}_s"] for p in ("generate", "score", "learn", "sync"))
        session.tokens += metrics.pop("_tokens")
        since_logged.append(metrics)
        if session.logs_at(step) or session.saves_at(step):
            metrics = {k: sum(m[k] for m in since_logged) / len(since_logged) for k in metrics}
            since_logged = []
        else:
            metrics = {}
        if asynchronous:  # the position saved is the batch trained, not the one being answered
            session.epoch, session.index = position
        session.end_step(metrics)
        if not asynchronous:
            current = next(positioned, None)
        elif session.done:  # stopped early (a stop request, early stopping): the batch being answered is not trained
            current = None


def _seed(run: RunConfig, step: int) -> int:
    return run.train.seed + 1_000_003 * (step - 1)


def _groups(rows: dict[str, Any]) -> Groups:
    """A batch of prompt rows as groups yet to be answered."""
    prompts = [[int(t) for t in p] for p in rows["prompt_input_ids"]]
    return Groups(prompts, [], list(rows["prompt"]), list(rows["reference"]))
