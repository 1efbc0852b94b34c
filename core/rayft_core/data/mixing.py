"""How many rows each dataset gives when several are interleaved by probability (pure; the cluster
layer then takes that many rows of each)."""

from __future__ import annotations

import numpy as np


def interleave_counts(sizes: list[int], probabilities: list[float] | None, stopping: str, seed: int) -> list[int]:
    """How many rows each dataset contributes when drawing dataset i with probability p_i (seeded).

    first_exhausted stops at the first draw from a dataset with nothing left; all_exhausted goes
    on until every dataset has been drawn through once (the smaller ones repeat), as
    `datasets.interleave_datasets` does.
    """
    k = len(sizes)
    p = np.asarray(probabilities if probabilities else [1 / k] * k, dtype=np.float64)
    sizes_a = np.asarray(sizes)
    rng = np.random.default_rng(seed)
    taken = np.zeros(k, dtype=np.int64)
    live = p > 0
    while True:
        draws = rng.choice(k, size=65_536, p=p)
        counts = np.cumsum(np.eye(k, dtype=np.int64)[draws], axis=0) + taken
        if stopping == "first_exhausted":
            over = np.nonzero((counts > sizes_a).any(axis=1))[0]
            if len(over):
                return (counts[over[0] - 1] if over[0] > 0 else taken).tolist()
        else:
            done = np.nonzero(((counts >= sizes_a) | ~live).all(axis=1))[0]
            if len(done):
                return counts[done[0]].tolist()
        taken = counts[-1]
