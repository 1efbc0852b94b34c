"""Pack tokenized examples into rows of at most max_seq_len tokens, each example kept apart.

Position ids restart at 0 for every example in a row. The model sees the row with position ids and
no attention mask, and transformers then builds a block-diagonal causal mask from where the
positions restart (sdpa/eager), or runs flash-attention's variable-length kernel: no token attends
across an example boundary. The first label of each example is masked, so the last token of one
example is never asked to predict the first token of the next: the loss of a packed row equals the
losses of its examples computed apart.
"""

from __future__ import annotations

from rayft_core.data import IGNORE_INDEX


def pack_examples(input_ids: list[list[int]], labels: list[list[int]], max_len: int) -> dict[str, list]:
    """First-fit decreasing into rows of <= max_len tokens (examples longer than max_len must be cut first)."""
    order = sorted(range(len(input_ids)), key=lambda i: -len(input_ids[i]))
    rows: list[list[int]] = []  # example indices per row
    room: list[int] = []
    for i in order:
        n = len(input_ids[i])
        if n > max_len:
            raise ValueError(f"an example of {n} tokens is longer than max_seq_len {max_len}; cut it before packing")
        row = next((r for r, free in enumerate(room) if free >= n), None)
        if row is None:
            rows.append([])
            room.append(max_len)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= n
    out: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": [], "num_examples": []}
    for members in rows:
        ids, lab, pos = [], [], []
        for i in sorted(members):  # keep the data order inside a row
            ids += input_ids[i]
            lab += [IGNORE_INDEX] + list(labels[i][1:])
            pos += range(len(input_ids[i]))
        out["input_ids"].append(ids)
        out["labels"].append(lab)
        out["position_ids"].append(pos)
        out["num_examples"].append(len(members))
    return out
