"""DAPO's dynamic sampling (Yu et al. 2025, sec. 3.2), on small hand-made groups in one process: which groups are
informative, how refill rounds draw the worker's next prompts, and that a worker always ends with as many groups as
it started with (informative first, then filled)."""

from __future__ import annotations

import torch

from rayft_core.train import rl
from rayft_core.train.rollout import Groups, dynamic_sampling

N = 2  # answers per prompt


def test_informative_groups_by_hand():
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.5 + 1e-3])
    assert rl.informative_groups(scores, 2).tolist() == [False, True, False, True]


def _batch(*names: str) -> Groups:
    return Groups([[len(n)] for n in names], [], list(names), [None] * len(names))


def _sampler(scripted: dict[str, list[float]], batches: list[Groups]):
    """answer/score/more for dynamic_sampling, the score of each prompt's answers scripted by its question."""
    asked, seeds = [], []

    def answer(groups, seed):
        seeds.append(seed)
        groups.responses = [[[1], [2]] for _ in groups.prompts]

    def score(groups):
        groups.scores = [torch.tensor(scripted[q]) for q in groups.questions]

    def more():
        asked.append(len(batches))
        return batches.pop(0) if batches else None

    return answer, score, more, asked, seeds


def test_uniform_groups_are_replaced_by_the_next_prompts_until_the_batch_is_full():
    scripted = {"a": [1, 1], "b": [0, 1], "c": [0, 0], "d": [1, 0], "e": [0.2, 0.7], "f": [1, 0]}
    answer, score, more, asked, seeds = _sampler(scripted, [_batch("c", "d"), _batch("e", "f")])
    first = _batch("a", "b")
    answer(first, 100)
    score(first)
    chosen, metrics = dynamic_sampling(first, more, answer, score, N, rounds=3, seed=100, device=torch.device("cpu"))
    assert chosen.questions == ["b", "d"]  # a and c all alike: dropped; one refill round was enough
    assert [s.tolist() for s in chosen.scores] == [[0, 1], [1, 0]] and chosen.prompts == [[1], [1]]
    assert len(asked) == 1 and seeds[1] != seeds[0]  # the next batch only; a new seed for its answers
    assert metrics == {"rl/informative_groups": 0.5, "rl/sampling_rounds": 1.0}


def test_short_after_the_last_round_the_batch_is_filled_with_dropped_groups():
    scripted = {"a": [1, 1], "b": [0, 1], "c": [0, 0], "d": [1, 1]}
    answer, score, more, asked, _ = _sampler(scripted, [_batch("c"), _batch("d")])
    first = _batch("a", "b")
    answer(first, 0)
    score(first)
    chosen, metrics = dynamic_sampling(first, more, answer, score, N, rounds=2, seed=0, device=torch.device("cpu"))
    assert chosen.questions == ["b", "a"]  # the informative one first, then the first dropped one
    assert len(asked) == 2 and metrics["rl/sampling_rounds"] == 2.0
    assert metrics["rl/informative_groups"] == 0.25


def test_the_data_running_out_ends_the_rounds_with_what_there_is():
    scripted = {"a": [1, 1], "b": [1, 1]}
    answer, score, more, asked, _ = _sampler(scripted, [])
    first = _batch("a", "b")
    answer(first, 0)
    score(first)
    chosen, metrics = dynamic_sampling(first, more, answer, score, N, rounds=3, seed=0, device=torch.device("cpu"))
    assert chosen.questions == ["a", "b"] and metrics["rl/informative_groups"] == 0.0
    assert len(asked) == 3  # each round asked (a worker keeps answering with the others), and got nothing


def test_a_full_batch_takes_no_round():
    scripted = {"a": [0, 1], "b": [1, 0]}
    answer, score, more, asked, _ = _sampler(scripted, [_batch("c")])
    first = _batch("a", "b")
    answer(first, 0)
    score(first)
    chosen, metrics = dynamic_sampling(first, more, answer, score, N, rounds=3, seed=0, device=torch.device("cpu"))
    assert chosen.questions == ["a", "b"] and asked == [] and metrics["rl/sampling_rounds"] == 0.0
