"""Scoring a model: multiple-choice benchmarks (MMLU, CMMLU, C-Eval) and generation metrics (ROUGE, BLEU).

    rayft eval mc --model outputs/sft-lora --task-dir data/mmlu --n-shot 5
    rayft eval similarity predictions.jsonl

tasks.py reads benchmark files, mc.py builds the prompts and scores the choices, similarity.py computes
ROUGE-1/2/L and BLEU-4 of predictions against references.
"""

from rayft_core.errors import UserInputError


class EvalError(UserInputError):
    """Bad evaluation input (a benchmark file, a predictions file, a model directory) or a missing package."""
