"""An RL iteration's rollouts: every learner worker's prompts answered by the engines in one batch (at once, or
started now and collected later: asynchronous rollouts), and DAPO's dynamic sampling, which keeps only the groups
whose answers score differently and samples more prompts for the rest.

Every worker takes part in every generation round (rank 0 holds the engines), so the workers agree on the number of
rounds; each ends with exactly as many groups as it started with, so every worker runs the same number of micro-steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from rayft_core.data import IGNORE_INDEX
from rayft_core.infer.rollout import Sampling
from rayft_core.train import rl

REFILL_SEED = 7_919  # the seed step between a refill round's sampling and the round before it


@dataclass
class Groups:
    """Prompts with their sampled answers, their rows' text and reference, and (once scored) each answer's score.
    With tools an answer is a trajectory, and ``trained`` says which of its ids are the model's (the rest are tool
    results, not trained on); without, it is empty and every id is the model's."""

    prompts: list[list[int]]
    responses: list[list[list[int]]]
    questions: list[str]
    references: list[str | None]
    scores: list[torch.Tensor] = field(default_factory=list)  # one [group_size] tensor per group
    trained: list[list[list[bool]]] = field(default_factory=list)
    logprobs: list[list[list[float]]] = field(default_factory=list)  # as the engines sampled (asynchronous rollouts)

    def __len__(self) -> int:
        return len(self.prompts)

    def rows(self) -> tuple[list[list[int]], list[list[int]]]:
        """Each prompt + answer as input ids, and its labels: the model's tokens of the answer (not a trajectory's
        tool results, nor the prompt, which are IGNORE_INDEX)."""
        pairs = [(p, r) for p, group in zip(self.prompts, self.responses) for r in group]
        trained = [m for group in self.trained for m in group] or [None] * len(pairs)
        labels = [
            [IGNORE_INDEX] * len(p) + (r if m is None else [t if keep else IGNORE_INDEX for t, keep in zip(r, m)])
            for (p, r), m in zip(pairs, trained)
        ]
        return [p + r for p, r in pairs], labels

    def take_sampled(self, answers: list[list[tuple[list[int], list[float]]]]) -> None:
        """The engines' answers with each token's log-prob as sampled (asynchronous rollouts: the behaviour
        policy's), as responses and logprobs."""
        self.responses = [[ids for ids, _ in group] for group in answers]
        self.logprobs = [[logps for _, logps in group] for group in answers]

    def sampled_logps(self, mask: torch.Tensor) -> torch.Tensor:
        """The engines' log-probs of the answers' tokens as they sampled them, laid out as the learners' own are for
        the rows() of these groups: [rows, longest - 1], position i scoring token i + 1 of its row, 0 outside ``mask``
        (the answers' labelled positions)."""
        logps = torch.zeros(mask.shape, dtype=torch.float32)
        answers = ((p, lp) for p, group in zip(self.prompts, self.logprobs) for lp in group)
        for i, (prompt, sampled) in enumerate(answers):
            logps[i, len(prompt) - 1 : len(prompt) - 1 + len(sampled)] = torch.tensor(sampled)
        return logps.to(mask.device) * mask

    def extend(self, other: Groups) -> None:
        for name in _FIELDS:
            getattr(self, name).extend(getattr(other, name))

    def pick(self, indices: list[int]) -> Groups:
        return Groups(*([getattr(self, n)[i] for i in indices] if getattr(self, n) else [] for n in _FIELDS))


_FIELDS = ("prompts", "responses", "questions", "references", "scores", "trained", "logprobs")


class Rollouts(Protocol):
    """The rollout group as rank 0 of the learners sees it."""

    def submit(self, prompts: list[list[int]], n: int, sampling: Sampling, seed: int, logprobs: bool = False) -> Any:
        """Start answering: n responses per prompt, split between the engines; a handle for collect."""

    def collect(self, handle: Any) -> list[list[Any]]:
        """The answers of a submit, [prompt][sample] -> token ids (with ``logprobs``: token ids and each token's
        log-prob as the engine sampled it), once the engines have them."""

    def load_adapter(self, version: int, files: dict[str, bytes], wait: bool = True) -> float:
        """Every engine loads the policy adapter after what it was sent before; with ``wait`` the slowest engine's
        seconds, without it 0 at once (a failure is raised by the next collect)."""

    def load_weights(self, version: int, weights: list[tuple[str, Any]], last: bool) -> float:
        """Every engine takes this group of a full-parameter policy's weights (in use from the ``last`` group on);
        the slowest engine's seconds."""

    def logprobs(self, ids: list[int], start: int) -> list[list[float]]:
        """Each engine's log p of the tokens of ``ids`` from ``start`` on (the policy it holds)."""


@dataclass
class Pending:
    """Every worker's prompts, being answered: rank 0's handle, and how many prompts each worker sent."""

    handle: Any
    sizes: list[int]


def submit_everywhere(
    rollouts: Rollouts | None,
    prompts: list[list[int]],
    n: int,
    sampling: Sampling,
    seed: int,
    rank: int,
    world_size: int,
    logprobs: bool = False,
) -> Pending:
    """Every worker's prompts gathered on rank 0 and sent to the engines in one batch (each worker calls this)."""
    everyone: list[Any] = [None] * world_size
    if torch.distributed.is_initialized() and world_size > 1:
        torch.distributed.all_gather_object(everyone, prompts)
    else:
        everyone = [prompts]
    flat = [p for ps in everyone for p in ps]
    handle = rollouts.submit(flat, n, sampling, seed, logprobs) if rank == 0 and flat else None
    return Pending(handle, [len(ps) for ps in everyone])


def collect_everywhere(rollouts: Rollouts | None, pending: Pending, rank: int, world_size: int) -> list[Any]:
    """This worker's answers of a submit_everywhere (rank 0 collects them and sends each worker its own)."""
    answers: list[Any] = [None]
    if rank == 0:
        flat = rollouts.collect(pending.handle) if pending.handle is not None else []
        split, at = [], 0
        for size in pending.sizes:
            split.append(flat[at : at + size])
            at += size
        answers = [split]
    if torch.distributed.is_initialized() and world_size > 1:
        torch.distributed.broadcast_object_list(answers, src=0)
    return answers[0][rank]


def dynamic_sampling(
    first: Groups,
    more: Callable[[], Groups | None],
    answer: Callable[[Groups, int], None],
    score: Callable[[Groups], None],
    group_size: int,
    rounds: int,
    seed: int,
    device: torch.device,
) -> tuple[Groups, dict[str, float]]:
    """DAPO's dynamic sampling: keep ``first``'s informative groups (rl.informative_groups) and, while a worker has
    fewer than it started with, answer (``answer(groups, seed)`` fills their responses) and score more prompts (``more()``: this worker's next batch, None once its
    data ran out), at most ``rounds`` rounds. Returns as many groups as ``first`` held, informative ones first (short
    of them after the last round, the batch is filled with uninformative ones, which add no gradient), and the
    share of informative groups among those sampled and the rounds taken."""
    want, pool = len(first), Groups([], [], [], [])
    pool.extend(first)
    kept = _informative(first, group_size, offset=0)
    taken = 0
    for round_ in range(1, rounds + 1):
        if not anyone(len(kept) < want, device):
            break
        extra = more() if len(kept) < want else None
        extra = extra or Groups([], [], [], [])
        answer(extra, seed + REFILL_SEED * round_)  # every worker joins every round
        if len(extra):
            score(extra)
        kept += _informative(extra, group_size, offset=len(pool))
        pool.extend(extra)
        taken = round_
    chosen = kept[:want] + [i for i in range(len(pool)) if i not in kept][: max(want - len(kept), 0)]
    informative = len(kept) / max(len(pool), 1)
    return pool.pick(chosen), {"rl/informative_groups": informative, "rl/sampling_rounds": float(taken)}


def _informative(groups: Groups, group_size: int, offset: int) -> list[int]:
    if not len(groups):
        return []
    flags = rl.informative_groups(torch.cat(groups.scores), group_size)
    return [offset + i for i, keep in enumerate(flags.tolist()) if keep]


def anyone(flag: bool, device: torch.device) -> bool:
    """True on every worker when ``flag`` is true on any of them."""
    if not (torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
        return flag
    value = torch.tensor([int(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())
