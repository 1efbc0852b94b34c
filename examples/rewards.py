"""Reward functions for the RL stages (`stage.reward_functions`), named as `examples/rewards.py:answer_only`.

A reward function is called with keyword arguments and returns one float per completion: `completions`
(the decoded responses), and when it names them, `prompts` (the last user turns) and `references` (the
dataset's answers, None where a row has none). Built-ins: exact_match, number_match, regex (pattern=...).
"""

import re


def answer_only(completions, **_):
    """1 for a bare number (the format the prompts ask for), 0.5 for a number among words, 0 otherwise."""
    scores = []
    for c in completions:
        text = c.strip()
        scores.append(1.0 if re.fullmatch(r"-?\d+", text) else 0.5 if re.search(r"-?\d+", text) else 0.0)
    return scores
