"""Scoring a model: multiple-choice benchmarks (MMLU, CMMLU, C-Eval) and generation metrics (ROUGE, BLEU).

    rayft eval mc --model outputs/sft-lora --task-dir data/mmlu --n-shot 5
    rayft eval similarity predictions.jsonl

tasks.py reads benchmark files, mc.py builds the prompts and scores the choices, similarity.py computes
ROUGE-1/2/L and BLEU-4 of predictions against references.
"""

from pathlib import Path

from rayft_core.errors import UserInputError


class EvalError(UserInputError):
    """Bad evaluation input (a benchmark file, a predictions file, a model directory) or a missing package."""


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """A benchmark or predictions file as text; one that is not UTF-8 (binary, or another encoding) is an EvalError."""
    data = Path(path).read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise EvalError(f"{path}: not UTF-8 text (byte {e.start} is 0x{data[e.start]:02x}); save it as UTF-8") from None
