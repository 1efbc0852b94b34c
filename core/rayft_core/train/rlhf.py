"""Stages ppo and grpo: the learner's loop. Each iteration, on every learner worker:

1. generate: the worker's prompts go to the rollout engines (all workers' prompts gathered on rank 0,
   split between the engines, answers sent back), sampled from the current policy adapter;
2. score: the reward (reward model on the shared base, and/or reward functions on the decoded text),
   the rollout's log-probs, values (PPO) and the reference's log-probs, without gradients;
3. learn: advantages (PPO: KL-penalised token rewards and GAE; GRPO: the score against its group),
   then stage.ppo_epochs passes of the clipped objective, one optimizer step each (DeepSpeed ZeRO);
4. sync: the new adapter goes to every engine (PEFT's files; vLLM loads them as a new LoRA).

It knows nothing of Ray: the cluster layer hands it the prompt batches, a ``Rollouts`` and ``report``.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from typing import Any, Callable, Iterable, Protocol

import torch

from rayft_core.config import RunConfig
from rayft_core.data import IGNORE_INDEX
from rayft_core.data.collate import pad_batch
from rayft_core.errors import UserInputError
from rayft_core.infer.rollout import Sampling
from rayft_core.train import outputs, rl
from rayft_core.train.loop import (TrainerState, TrainPlan, _grad_norm, _open_run_dir, _publish, _reported_grad_norm,
                                   _save, _summarize, _Window, load_checkpoint, peak_memory_gb, save_checkpoint,
                                   seed_everything)
from rayft_core.train.rewards import Rewards
from rayft_core.train.rl_model import RlModel
from rayft_core.train.tracking import Trackers

logger = logging.getLogger(__name__)


def responses_per_prompt(run: RunConfig) -> int:
    return run.stage.group_size if run.stage.name == "grpo" else 1


def prompts_per_worker(run: RunConfig) -> int:
    """Each worker's prompts per iteration: its rollout batch (micro_batch_size x gradient_accumulation_steps
    responses, one optimizer step per ppo epoch) over the responses per prompt."""
    return run.train.micro_batch_size * run.train.gradient_accumulation_steps // responses_per_prompt(run)


def rl_plan(run: RunConfig, num_prompts: int) -> TrainPlan:
    """Iterations (the plan's steps) and prompt batches per epoch (RL prompts are never streamed)."""
    per_iteration = prompts_per_worker(run) * run.cluster.num_workers
    batches = num_prompts // per_iteration
    if batches == 0:
        raise UserInputError(f"{num_prompts} prompts are fewer than one iteration takes ({per_iteration} = "
                             f"{prompts_per_worker(run)} per worker x {run.cluster.num_workers} workers); lower "
                             "train.micro_batch_size or gradient_accumulation_steps, or add prompts")
    total = run.train.max_steps or max(1, int(batches * run.train.num_epochs))
    return TrainPlan(micro_batches_per_epoch=batches, num_epochs=-(-total // batches), total_steps=total)


class Rollouts(Protocol):
    """The rollout group as rank 0 of the learners sees it."""

    def generate(self, prompts: list[list[int]], n: int, sampling: Sampling, seed: int) -> list[list[list[int]]]:
        """n responses per prompt, [prompt][sample] -> token ids, split between the engines."""

    def load_adapter(self, version: int, files: dict[str, bytes]) -> float:
        """Every engine loads the policy adapter; the slowest engine's seconds."""


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


def rl_worker(run: RunConfig, plan: TrainPlan, epoch_batches: Callable[[int], Iterable[dict[str, Any]]],
              rollouts: Rollouts | None, report: Callable[..., None], rank: int, world_size: int,
              resume_from: str | None = None, node: str | None = None) -> None:
    """Train plan.total_steps iterations; ``rollouts`` is used on rank 0 only (None elsewhere)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    from rayft_core.model.adapters import count_parameters
    from rayft_core.model.loader import load_model, load_tokenizer, resolve_dtype
    from rayft_core.train.deepspeed_config import build_deepspeed_config
    from rayft_core.train.optim import build_optimizer, build_scheduler
    from rayft_core.train.preference import without_dropout

    seed_everything(run.train.seed)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    tokenizer = load_tokenizer(run.model)
    model = RlModel.build(without_dropout(load_model(run, tokenizer)), run)
    trainable, total = count_parameters(model)
    if rank == 0:
        logger.info("trainable parameters: %s of %s (%.3f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    ds_config = build_deepspeed_config(run, resolve_dtype(run.model.dtype), world_size)
    optimizer = None if "optimizer" in ds_config else build_optimizer(model, run)
    scheduler = build_scheduler(optimizer, run, plan.total_steps * run.stage.ppo_epochs) if optimizer else None
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                           config=ds_config, dist_init_required=False)
    engine.train()
    out = _open_run_dir(run, resumed=resume_from is not None) if rank == 0 else None
    state = load_checkpoint(engine, resume_from, run, out) if resume_from is not None else TrainerState()
    learner = _Learner(run, engine, model, tokenizer, Rewards(run.stage.reward_functions), device, state.stage_state)
    trackers = Trackers(run, out, resumed=resume_from is not None) if rank == 0 else None
    sampling = Sampling(run.stage.max_new_tokens, run.stage.temperature, run.stage.top_p,
                        stop_token_ids(tokenizer, run.model.name_or_path))
    step, first_step, tokens = state.step, state.step, 0
    since_logged: list[dict[str, float]] = []  # the iterations' metrics since the last report, averaged in it
    started = time.perf_counter()
    try:
        learner.sync(rollouts, version=step, rank=rank)
        for epoch in range(state.epoch, plan.num_epochs):
            batch_index = -1
            for batch_index, rows in enumerate(epoch_batches(epoch)):
                if batch_index >= plan.micro_batches_per_epoch or step >= plan.total_steps:
                    break
                if epoch == state.epoch and batch_index < state.micro_batches_done:
                    continue
                prompts = [[int(t) for t in p] for p in rows["prompt_input_ids"]]
                metrics = learner.iteration(rollouts, prompts, list(rows["prompt"]), list(rows["reference"]), sampling,
                                            seed=run.train.seed + 1_000_003 * step, rank=rank, world_size=world_size)
                step += 1
                metrics["time/sync_s"] = learner.sync(rollouts, version=step, rank=rank)
                metrics["time/iteration_s"] = sum(metrics[f"time/{p}_s"] for p in ("generate", "score", "learn", "sync"))
                tokens += metrics.pop("_tokens")
                since_logged.append(metrics)
                logging_step = step % run.train.logging_steps == 0 or step == plan.total_steps
                save_step = run.checkpoint.save_steps and step % run.checkpoint.save_steps == 0 and step < plan.total_steps
                if not (logging_step or save_step):
                    continue
                metrics = {"step": step, **{k: sum(m[k] for m in since_logged) / len(since_logged) for k in metrics},
                           "train/epoch": epoch + (batch_index + 1) / plan.micro_batches_per_epoch,
                           "train/lr": scheduler.get_last_lr()[0] if scheduler else run.train.learning_rate,
                           "mem/peak_gb": peak_memory_gb()}
                since_logged = []
                if rank == 0:
                    outputs.append_metrics(out, metrics)
                    trackers.log(metrics, step)
                if save_step:
                    state.step, state.epoch, state.micro_batches_done = step, epoch, batch_index + 1
                    state.stage_state = learner.state()
                    report(metrics, checkpoint_dir=save_checkpoint(engine, rank, state))
                    if rank == 0:
                        _publish(out, run, f"the metrics of step {step}")
                else:
                    report(metrics)
            if step >= plan.total_steps:
                break
            if batch_index < 0:
                raise UserInputError("the prompts ran out: an epoch gave this worker no batches")
        _summarize(run, out, device, rank, steps=step - first_step, first_step=first_step, tokens=tokens,
                   seconds=time.perf_counter() - started, best_eval=None, node=node or socket.gethostname(),
                   stopped_early=False)
    finally:
        if trackers is not None:
            trackers.close()
    _save(engine, tokenizer, run, rank, out)


class _Learner:
    """One worker's side of an iteration, and what carries over between iterations (KL coefficient, reward moments)."""

    def __init__(self, run: RunConfig, engine: Any, model: RlModel, tokenizer: Any, rewards: Rewards,
                 device: torch.device, saved: dict[str, Any]):
        self.run, self.st, self.engine, self.model, self.tokenizer = run, run.stage, engine, model, tokenizer
        self.rewards, self.device = rewards, device
        st = self.st
        adaptive = st.name == "ppo" and st.adaptive_kl_target is not None
        self.kl_ctl = (rl.AdaptiveKLController(st.kl_coef, st.adaptive_kl_target, st.adaptive_kl_horizon) if adaptive
                       else rl.FixedKLController(st.kl_coef))
        self.kl_ctl.value = saved.get("kl_coef", self.kl_ctl.value)
        self.moments = rl.RunningMoments(*saved.get("reward_moments", ()))

    def state(self) -> dict[str, Any]:
        return {"kl_coef": self.kl_ctl.value, "reward_moments": self.moments.state}

    def sync(self, rollouts: Rollouts | None, version: int, rank: int) -> float:
        """The policy adapter to every engine (rank 0 sends; every rank gathers under ZeRO-3), then all wait."""
        started = time.perf_counter()
        files = self.model.policy_adapter_files(self.run.deepspeed.zero_stage == 3, rank)
        if rank == 0:
            rollouts.load_adapter(version, files)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        return time.perf_counter() - started

    def iteration(self, rollouts: Rollouts | None, prompts: list[list[int]], questions: list[str],
                  references: list[str | None], sampling: Sampling, seed: int, rank: int, world_size: int) -> dict[str, Any]:
        st, n = self.st, responses_per_prompt(self.run)
        t0 = time.perf_counter()
        responses = _generate_everywhere(rollouts, prompts, n, sampling, seed, rank, world_size)
        t1 = time.perf_counter()

        responses_flat = [r for group in responses for r in group]
        window = _Window()
        batch = pad_batch({"input_ids": [p + r for p, group in zip(prompts, responses) for r in group],
                           "labels": [[IGNORE_INDEX] * len(p) + r for p, group in zip(prompts, responses) for r in group]},
                          self.tokenizer.pad_token_id)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        mask = batch["labels"][:, 1:] != IGNORE_INDEX
        scores = self._score(batch, responses_flat, [q for q in questions for _ in range(n)],
                             [r for r in references for _ in range(n)], window)
        if st.name == "ppo" and st.normalize_reward:
            scores = rl.normalize_rewards(scores, self.moments, st.reward_clip)
        elif st.reward_clip:
            scores = scores.clamp(-st.reward_clip, st.reward_clip)
        rollout, kl = self._rollout_pass(batch), None
        if st.name == "ppo":
            kl = rl.kl_penalty(rollout["logps"], rollout["ref"], st.kl_estimator)
            token_rewards = rl.token_rewards(scores, kl, mask, self.kl_ctl.value)
            advantages, returns = rl.gae(token_rewards, rollout["values"], mask, st.gamma, st.lam)
            if st.whiten_advantages:
                advantages = rl.masked_whiten(advantages, mask)
        else:
            advantage = rl.group_advantages(scores, n, st.normalize_std) if st.advantage == "grpo" \
                else rl.rloo_advantages(scores, n)
            advantages, returns = torch.where(mask, advantage[:, None], 0.0), None
        t2 = time.perf_counter()

        self._learn(batch, mask, rollout, advantages, returns, window)
        t3 = time.perf_counter()

        tokens = int(mask.sum())
        if "ref" in rollout:  # measured only where there is a reference pass (not GRPO with kl_coef 0)
            if kl is None:  # GRPO: its rollout log-probs came from the first learning pass
                kl = rl.kl_penalty(rollout["logps"], rollout["ref"], st.kl_estimator)
            window.add({"kl": (float(rl.masked_mean(kl, mask)) * tokens, tokens)}, 0, 0)
        window.add({"entropy": (float(rl.masked_mean(rollout["entropy"], mask)) * tokens, tokens),
                    "response_length": (float(mask.sum()), mask.shape[0])}, 0, 0)
        metrics = window.reduce(self.device, "rl/")
        metrics.pop("perf/tokens_per_s"), metrics.pop("perf/samples_per_s")
        metrics["rl/reward_std"] = math.sqrt(max(metrics.pop("rl/reward_sq") - metrics["rl/reward"] ** 2, 0.0))
        metrics["train/loss"] = metrics.pop("rl/loss")
        if st.name == "ppo":
            self.kl_ctl.update(metrics["rl/kl"], len(responses_flat) * world_size)
        metrics["rl/kl_coef"] = self.kl_ctl.value
        totals = torch.tensor([sum(len(r) for r in responses_flat), int(batch["attention_mask"].sum())],
                              dtype=torch.float64, device=self.device)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(totals)
        generated, seen = totals.tolist()
        metrics.update({"train/grad_norm": self.grad_norm, "time/generate_s": t1 - t0, "time/score_s": t2 - t1,
                        "time/learn_s": t3 - t2, "perf/rollout_tokens_per_s": generated / (t1 - t0),
                        "perf/tokens_per_s": seen * st.ppo_epochs / (t3 - t2), "_tokens": int(seen * st.ppo_epochs)})
        return metrics

    @torch.no_grad()
    def _score(self, batch: dict[str, torch.Tensor], responses: list[list[int]], questions: list[str],
               references: list[str | None], window: _Window) -> torch.Tensor:
        """The reward of each response [N]: the reward model's weighted score plus each function's."""
        st, total = self.st, torch.zeros(len(responses), dtype=torch.float32, device=self.device)
        if self.model.has_reward_model:
            model_scores = torch.cat([self.model.reward_scores(b) for b in self._micro_batches(batch)])
            total += st.reward_model_weight * model_scores
            window.add({"reward_model": (float(model_scores.sum()), len(responses))}, 0, 0)
        if self.rewards.specs:
            texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
            for name, spec, scores in zip(self.rewards.names, self.rewards.specs, self.rewards(questions, texts, references)):
                total += spec.weight * torch.tensor(scores, device=self.device)
                window.add({f"reward/{name}": (sum(scores), len(scores))}, 0, 0)
        window.add({"reward": (float(total.sum()), len(responses)), "reward_sq": (float((total**2).sum()), len(responses))}, 0, 0)
        return total

    @torch.no_grad()
    def _rollout_pass(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Without gradients, what the advantages and the KL need before learning: the reference's log-probs
        ("ref"), and for PPO the rollout policy's log-probs, values and entropy. GRPO's come from its first
        learning pass instead: the policy has not stepped yet there, so it is the rollout policy."""
        passes: dict[str, list[torch.Tensor]] = {}
        for b in self._micro_batches(batch):
            if self.st.name == "ppo":
                for key, value in zip(("logps", "values", "entropy"), self.model.forward_policy(b, entropy=True)):
                    passes.setdefault(key, []).append(value)
            if self.st.name == "ppo" or self.st.kl_coef > 0:
                passes.setdefault("ref", []).append(self.model.reference_logps(b))
        return {key: torch.cat(parts) for key, parts in passes.items()}

    def _learn(self, batch: dict[str, torch.Tensor], mask: torch.Tensor, rollout: dict[str, torch.Tensor],
               advantages: torch.Tensor, returns: torch.Tensor | None, window: _Window) -> None:
        """stage.ppo_epochs passes of the clipped objective; fills rollout's logps and entropy on GRPO's first."""
        st, engine = self.st, self.engine
        size = self.run.train.micro_batch_size
        self.grad_norm = float("nan")
        first_pass: dict[str, list[torch.Tensor]] = {"logps": [], "entropy": []}
        for epoch in range(st.ppo_epochs):
            for i, b in enumerate(self._micro_batches(batch)):
                rows = slice(i * size, (i + 1) * size)
                m = mask[rows]
                record = epoch == 0 and "logps" not in rollout
                logps, values, entropy = self.model.forward_policy(b, entropy=record)
                if record:
                    first_pass["logps"].append(logps.detach())
                    first_pass["entropy"].append(entropy)
                old_logps = first_pass["logps"][i] if "logps" not in rollout else rollout["logps"][rows]
                loss, stats = rl.policy_loss(logps, old_logps, advantages[rows], m, st.clip_eps)
                parts = {"policy_loss": loss.item()}
                if values is not None:
                    vloss, vclip = rl.value_loss(values, rollout["values"][rows], returns[rows], m, st.value_clip)
                    loss = loss + st.vf_coef * vloss
                    parts.update(value_loss=float(vloss), value_clip_fraction=float(vclip))
                if st.name == "grpo" and st.kl_coef > 0:
                    loss = loss + st.kl_coef * rl.masked_mean(rl.kl_penalty(logps, rollout["ref"][rows], st.kl_estimator), m)
                boundary = engine.is_gradient_accumulation_boundary()
                engine.backward(loss)
                computed = _grad_norm(engine, self.model) if boundary else None
                engine.step()
                if boundary:
                    self.grad_norm = _reported_grad_norm(engine, computed)
                n = int(m.sum())
                parts.update(loss=loss.item(), **{k: float(v) for k, v in stats.items()})
                window.add({k: (v * n, n) for k, v in parts.items()}, 0, 0)
            if epoch == 0 and "logps" not in rollout:
                rollout.update({key: torch.cat(parts) for key, parts in first_pass.items()})

    def _micro_batches(self, batch: dict[str, torch.Tensor]) -> Iterable[dict[str, torch.Tensor]]:
        size = self.run.train.micro_batch_size
        for i in range(0, batch["input_ids"].shape[0], size):
            yield {k: v[i : i + size] for k, v in batch.items()}


def _generate_everywhere(rollouts: Rollouts | None, prompts: list[list[int]], n: int, sampling: Sampling, seed: int,
                         rank: int, world_size: int) -> list[list[list[int]]]:
    """Every worker's prompts, answered in one batch per engine: gathered on rank 0, sent back to each worker."""
    distributed = torch.distributed.is_initialized() and world_size > 1
    everyone: list[Any] = [None] * world_size
    if distributed:
        torch.distributed.all_gather_object(everyone, prompts)
    else:
        everyone = [prompts]
    answers: list[Any] = [None]
    if rank == 0:
        flat = rollouts.generate([p for ps in everyone for p in ps], n, sampling, seed)
        split, at = [], 0
        for ps in everyone:
            split.append(flat[at : at + len(ps)])
            at += len(ps)
        answers = [split]
    if distributed:
        torch.distributed.broadcast_object_list(answers, src=0)
    return answers[0][rank]
