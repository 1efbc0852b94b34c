"""One learner worker's side of an RL iteration (stages ppo and grpo): its rollouts answered (and, with tools,
played out), scored, turned into advantages, and learned from; see rayft_core.train.rlhf for the loop around it."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

from rayft_core.config import RunConfig
from rayft_core.data import IGNORE_INDEX
from rayft_core.data.collate import pad_batch
from rayft_core.infer.rollout import Sampling
from rayft_core.train import rl
from rayft_core.train.agent import Agent
from rayft_core.train.rewards import Rewards
from rayft_core.train.rollout import Groups, Rollouts, anyone, collect_everywhere, dynamic_sampling, submit_everywhere
from rayft_core.train.session import WorkerSession, begin_micro_step
from rayft_core.train.step_metrics import MetricWindow, grad_norm_before_step, reported_grad_norm


class Learner:
    """One worker's side of an iteration, and what carries over between iterations (KL coefficient, reward moments)."""

    def __init__(self, run: RunConfig, session: WorkerSession, rewards: Rewards, saved: dict[str, Any]):
        self.run, self.st, self.engine, self.model = run, run.stage, session.engine, session.model
        self.tokenizer, self.rewards, self.device = session.tokenizer, rewards, session.device
        st = self.st
        adaptive = getattr(st, "adaptive_kl_target", None) is not None
        self.kl_ctl = (
            rl.AdaptiveKLController(st.kl_coef, st.adaptive_kl_target, st.adaptive_kl_horizon)
            if adaptive
            else rl.FixedKLController(st.kl_coef)
        )
        self.kl_ctl.value = saved.get("kl_coef", self.kl_ctl.value)
        self.moments = rl.RunningMoments(*saved.get("reward_moments", ()))
        self.agent: Agent | None = None  # with stage.tools: multi-turn rollouts
        self.probe: tuple[list[int], list[int]] | None = None  # stage.rollout.check_sync's answer

    def state(self) -> dict[str, Any]:
        return {"kl_coef": self.kl_ctl.value, "reward_moments": self.moments.state}

    def sync(self, rollouts: Rollouts | None, version: int, rank: int, wait: bool = True) -> float:
        """The policy to every engine, then all wait (for the engines to load it too, with ``wait``): the adapter's
        files, or a full-parameter policy's weights a group at a time, never written to disk (rank 0 sends; under
        ZeRO-3 every rank takes part in gathering each group)."""
        started = time.perf_counter()
        if self.model.full:
            for group, last in self.model.policy_weights(rank):
                if rank == 0:
                    rollouts.load_weights(version, group, last)
        else:
            files = self.model.policy_adapter_files(rank)
            if rank == 0:
                rollouts.load_adapter(version, files, wait)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        return time.perf_counter() - started

    @torch.no_grad()
    def engine_logprob_gap(self, rollouts: Rollouts | None, rank: int) -> dict[str, float]:
        """stage.rollout.check_sync: the first answer this worker learned from, scored by the learners and by every
        engine; the largest difference of a token's log-prob (0 when the engines hold the learners' weights), and
        the answer's mean log-prob under the learners' policy (it moves with every update)."""
        prompt, answer = self.probe
        ids = prompt + answer
        batch = self._batch(Groups([prompt], [[answer]], [""], [None]))
        mine = self.model.forward_policy(batch)[0][0, len(prompt) - 1 :].tolist()  # every rank: ZeRO-3 gathers
        gap = [0.0]
        if rank == 0:
            gap = [max(abs(a - b) for theirs in rollouts.logprobs(ids, len(prompt)) for a, b in zip(mine, theirs))]
        if torch.distributed.is_initialized():
            torch.distributed.broadcast_object_list(gap, src=0)
        return {"rl/engine_logprob_gap": gap[0], "rl/probe_logprob": sum(mine) / len(mine)}

    def iteration(
        self,
        rollouts: Rollouts | None,
        groups: Groups,
        more: Callable[[], Groups | None],
        sampling: Sampling,
        seed: int,
        rank: int,
        world_size: int,
        waited: float | None = None,
    ) -> dict[str, Any]:
        """One iteration on this worker's prompts. ``waited``: the groups came answered by the previous policy
        (asynchronous rollouts), after this many seconds of waiting for them."""
        st, n = self.st, self.st.responses_per_prompt
        t0 = time.perf_counter()
        window, sampled = MetricWindow(), {}

        def generate(prompts: list[list[int]], n: int, seed: int) -> list[list[list[int]]]:
            """Every worker's prompts answered in one batch (all workers call it together)."""
            pending = submit_everywhere(rollouts, prompts, n, sampling, seed, rank, world_size)
            return collect_everywhere(rollouts, pending, rank, world_size)

        if waited is None:
            self._answer(groups, generate, seed, window)
        t1 = time.perf_counter()
        batch = self._batch(groups)
        self._score(groups, window, batch)  # the rewards logged: those of the answers as sampled
        if getattr(st, "dynamic_sampling", False):  # its refill rounds count as scoring time
            refill = lambda g, seed: self._answer(g, generate, seed, MetricWindow())  # noqa: E731
            args = (n, st.dynamic_sampling_rounds, seed, self.device)
            groups, sampled = dynamic_sampling(groups, more, refill, lambda g: self._score(g, MetricWindow()), *args)
            batch = self._batch(groups)  # the groups kept

        responses_flat = [r for group in groups.responses for r in group]
        if self.probe is None:  # stage.rollout.check_sync's answer: this worker's first
            self.probe = (groups.prompts[0], groups.responses[0][0] or [self.tokenizer.eos_token_id])
        mask = batch["labels"][:, 1:] != IGNORE_INDEX
        scores = torch.cat(groups.scores)
        rollout = self._rollout_pass(batch)
        if groups.logprobs:  # answered by the policy one update old: the ratio is taken against it, PPO's too
            rollout["logps"] = groups.sampled_logps(mask)
        advantages, returns, kl = self._advantages(scores, rollout, mask)
        t2 = time.perf_counter()

        self._learn(batch, mask, rollout, advantages, returns, window)
        t3 = time.perf_counter()

        metrics = self._metrics(window, rollout, kl, mask, len(responses_flat) * world_size) | sampled
        return metrics | self._timings(batch, mask, (t0, t1, t2, t3), waited)

    def _timings(
        self, batch: dict[str, torch.Tensor], mask: torch.Tensor, times: tuple[float, ...], waited: float | None
    ) -> dict[str, Any]:
        """The iteration's time/* and perf/* (``times``: its start, and the ends of generating, scoring, learning)."""
        t0, t1, t2, t3 = times
        totals = torch.tensor(
            [int(mask.sum()), int(batch["attention_mask"].sum())], dtype=torch.float64, device=self.device
        )
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(totals)
        generated, seen = totals.tolist()
        generate_s = t1 - t0 if waited is None else waited
        epochs = self.st.ppo_epochs
        return {
            "train/grad_norm": self.grad_norm,
            "time/generate_s": generate_s,
            "time/score_s": t2 - t1,
            "time/learn_s": t3 - t2,
            # asynchronous: the engines answered while the learners worked, so the rate the run sustains
            "perf/rollout_tokens_per_s": generated / (generate_s if waited is None else t3 - t0 + waited),
            "rl/policy_lag": float(waited is not None),
            "perf/tokens_per_s": seen * epochs / (t3 - t2),
            "_tokens": int(seen * epochs),
        }

    def _answer(self, groups: Groups, generate: Callable, seed: int, window: MetricWindow) -> None:
        """Fill groups.responses: one turn each, or with tools trajectories of turns and tool results."""
        n = self.st.responses_per_prompt
        if self.agent is None:
            groups.responses = generate(groups.prompts, n, seed)
            return
        room = self.st.max_new_tokens
        trajectories = self.agent.rollout(groups.prompts, n, seed, generate, lambda f: anyone(f, self.device), room)
        groups.responses = [[t.ids for t in group] for group in trajectories]
        groups.trained = [[t.trained for t in group] for group in trajectories]
        flat = [t for group in trajectories for t in group]
        window.add(
            {"tool_calls": (sum(t.calls for t in flat), len(flat)), "turns": (sum(t.turns for t in flat), len(flat))}
        )

    def _advantages(
        self, scores: torch.Tensor, rollout: dict[str, torch.Tensor], mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Per-token advantages, the returns (PPO's value targets) and the KL (PPO's, in the reward)."""
        st = self.st
        if st.overlong_buffer:  # DAPO's length shaping, part of the reward (all of a trajectory's turns together)
            longest = st.max_new_tokens * (st.max_turns if st.tools else 1)
            scores = scores + rl.overlong_penalty(mask.sum(dim=1), longest, st.overlong_buffer)
        if getattr(st, "normalize_reward", False):
            scores = rl.normalize_rewards(scores, self.moments, st.reward_clip)
        elif st.reward_clip:
            scores = scores.clamp(-st.reward_clip, st.reward_clip)
        if st.value_head:
            kl = rl.kl_penalty(rollout["logps"], rollout["ref"], st.kl_estimator)
            token_rewards = rl.token_rewards(scores, kl, mask, self.kl_ctl.value)
            advantages, returns = rl.gae(token_rewards, rollout["values"], mask, st.gamma, st.lam)
            if st.whiten_advantages:
                advantages = rl.masked_whiten(advantages, mask)
            return advantages, returns, kl
        n = st.responses_per_prompt
        if st.advantage.startswith("reinforce++"):  # per token already: normalised over the batch's tokens
            baseline = n if st.advantage == "reinforce++_baseline" else None
            return rl.reinforce_pp_advantages(scores, mask, baseline), None, None
        if st.advantage == "grpo":
            advantage = rl.group_advantages(scores, n, st.normalize_std)
        else:
            advantage = rl.rloo_advantages(scores, n)
        return torch.where(mask, advantage[:, None], 0.0), None, None

    def _metrics(
        self,
        window: MetricWindow,
        rollout: dict[str, torch.Tensor],
        kl: torch.Tensor | None,
        mask: torch.Tensor,
        responses: int,
    ) -> dict[str, Any]:
        """The iteration's rl/* metrics, reduced over the workers (``responses``: all workers' together)."""
        st, tokens = self.st, int(mask.sum())
        if "ref" in rollout:  # measured only where there is a reference pass (not GRPO with kl_coef 0)
            if kl is None:  # GRPO: its rollout log-probs came from the first learning pass
                kl = rl.kl_penalty(rollout["logps"], rollout["ref"], st.kl_estimator)
            window.add({"kl": (float(rl.masked_mean(kl, mask)) * tokens, tokens)})
        window.add(
            {
                "entropy": (float(rl.masked_mean(rollout["entropy"], mask)) * tokens, tokens),
                "response_length": (float(mask.sum()), mask.shape[0]),
            }
        )
        metrics = window.reduce(self.device, "rl/")
        metrics.pop("perf/tokens_per_s"), metrics.pop("perf/samples_per_s")
        metrics["rl/reward_std"] = math.sqrt(max(metrics.pop("rl/reward_sq") - metrics["rl/reward"] ** 2, 0.0))
        metrics["train/loss"] = metrics.pop("rl/loss")
        if st.value_head:
            self.kl_ctl.update(metrics["rl/kl"], responses)
        metrics["rl/kl_coef"] = self.kl_ctl.value
        return metrics

    def _batch(self, groups: Groups) -> dict[str, torch.Tensor]:
        """Each prompt + answer as a padded row on this worker's device, the model's tokens of the answer labelled
        (not the tool results in a trajectory)."""
        input_ids, labels = groups.rows()
        batch = pad_batch({"input_ids": input_ids, "labels": labels}, self.tokenizer.pad_token_id)
        return {k: v.to(self.device) for k, v in batch.items()}

    @torch.no_grad()
    def _score(self, groups: Groups, window: MetricWindow, batch: dict[str, torch.Tensor] | None = None) -> None:
        """Each answer's reward into groups.scores: the reward model's weighted score plus each function's
        (``batch``: the groups' rows as _batch makes them, when the caller has it already)."""
        st, n = self.st, self.st.responses_per_prompt
        responses = [r for group in groups.responses for r in group]
        total = torch.zeros(len(responses), dtype=torch.float32, device=self.device)
        if self.model.has_reward_model:
            batch = batch if batch is not None else self._batch(groups)
            model_scores = torch.cat([self.model.reward_scores(b) for b in self._micro_batches(batch)])
            total += st.reward_model_weight * model_scores
            window.add({"reward_model": (float(model_scores.sum()), len(responses))})
        if self.rewards.specs:
            texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
            questions = [q for q in groups.questions for _ in range(n)]
            references = [r for r in groups.references for _ in range(n)]
            for name, spec, scores in zip(
                self.rewards.names, self.rewards.specs, self.rewards(questions, texts, references)
            ):
                total += spec.weight * torch.tensor(scores, device=self.device)
                window.add({f"reward/{name}": (sum(scores), len(scores))})
        window.add(
            {"reward": (float(total.sum()), len(responses)), "reward_sq": (float((total**2).sum()), len(responses))}
        )
        groups.scores = list(total.split(n))

    @torch.no_grad()
    def _rollout_pass(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Without gradients, what the advantages and the KL need before learning: the reference's log-probs
        ("ref"), and for PPO the policy's log-probs, values and entropy. GRPO's log-probs and entropy come from its
        first learning pass instead: the policy has not stepped yet there, so it is the rollout policy."""
        passes: dict[str, list[torch.Tensor]] = {}
        for b in self._micro_batches(batch):
            parts = {}
            if self.st.value_head:
                parts["logps"], parts["values"], parts["entropy"] = self.model.forward_policy(b, entropy=True)
            if self.st.value_head or self.st.kl_coef > 0:
                parts["ref"] = self.model.reference_logps(b)
            for key, value in parts.items():
                passes.setdefault(key, []).append(value)
        return {key: torch.cat(parts) for key, parts in passes.items()}

    def _learn(
        self,
        batch: dict[str, torch.Tensor],
        mask: torch.Tensor,
        rollout: dict[str, torch.Tensor],
        advantages: torch.Tensor,
        returns: torch.Tensor | None,
        window: MetricWindow,
    ) -> None:
        """stage.ppo_epochs passes of the clipped objective; fills rollout's logps and entropy on GRPO's first."""
        st, engine = self.st, self.engine
        size = self.run.train.micro_batch_size
        self.grad_norm = float("nan")
        first_pass: dict[str, list[torch.Tensor]] = {"logps": [], "entropy": []}
        for epoch in range(st.ppo_epochs):
            for i, b in enumerate(self._micro_batches(batch)):
                rows = slice(i * size, (i + 1) * size)
                m = mask[rows]
                record = epoch == 0 and "entropy" not in rollout
                begin_micro_step(engine)
                logps, values, entropy = self.model.forward_policy(b, entropy=record)
                if record:
                    first_pass["logps"].append(logps.detach())
                    first_pass["entropy"].append(entropy)
                old_logps = rollout["logps"][rows] if "logps" in rollout else first_pass["logps"][i]
                loss, stats = rl.policy_loss(
                    logps,
                    old_logps,
                    advantages[rows],
                    m,
                    st.clip_eps,
                    st.clip_eps_high,
                    st.loss_aggregation,
                    st.max_new_tokens,
                    sequence_ratio=st.importance_ratio == "sequence",
                )
                parts = {"policy_loss": loss.item()}
                if values is not None:
                    vloss, vclip = rl.value_loss(values, rollout["values"][rows], returns[rows], m, st.value_clip)
                    loss = loss + st.vf_coef * vloss
                    parts.update(value_loss=float(vloss), value_clip_fraction=float(vclip))
                if not st.value_head and st.kl_coef > 0:  # the KL in the loss (PPO has it in the reward)
                    loss = loss + st.kl_coef * rl.masked_mean(
                        rl.kl_penalty(logps, rollout["ref"][rows], st.kl_estimator), m
                    )
                boundary = engine.is_gradient_accumulation_boundary()
                engine.backward(loss)
                computed = grad_norm_before_step(engine, self.model) if boundary else None
                engine.step()
                if boundary:
                    self.grad_norm = reported_grad_norm(engine, computed)
                n = int(m.sum())
                parts.update(loss=loss.item(), **{k: float(v) for k, v in stats.items()})
                window.add({k: (v * n, n) for k, v in parts.items()})
            if epoch == 0 and "entropy" not in rollout:  # the engines' log-probs, when they gave them, are kept
                rollout.update({key: torch.cat(parts) for key, parts in first_pass.items() if key not in rollout})

    def _micro_batches(self, batch: dict[str, torch.Tensor]) -> Iterable[dict[str, torch.Tensor]]:
        size = self.run.train.micro_batch_size
        for i in range(0, batch["input_ids"].shape[0], size):
            yield {k: v[i : i + size] for k, v in batch.items()}
