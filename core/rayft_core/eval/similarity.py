"""ROUGE-1/2/L and BLEU-4 of generated text against references, as LLaMA-Factory's ComputeSimilarity scores them.

    rows = read_predictions("outputs/predictions.jsonl")   # {"prediction": ..., "reference": ...} per line
    compute_similarity(rows)                                # {"rows": 200, "rouge-1": 41.3, ..., "bleu-4": 22.0}

- ROUGE: F1 of rouge-chinese over words cut by jieba (Chinese is segmented into words; English and other
  space-separated text comes out as its words). ROUGE-N counts distinct n-grams, ROUGE-L the longest
  common subsequence; an empty prediction or reference scores 0.
- BLEU-4: nltk's sentence BLEU over characters with smoothing method 3 (NIST: an n-gram order without a
  match counts 1/2^k of a match instead of zeroing the score); no unigram in common gives 0.
- every score is x100 and rounded to 4 decimals per row; the result is the mean over rows.

Needs `pip install 'rayft[eval]'` (jieba, rouge-chinese, nltk); nltk's BLEU needs none of its data
files, so nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rayft_core.eval import EvalError, read_text

METRICS = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")
FIELDS = ("prediction", "reference")


def _scorers() -> tuple[Callable, Any, Callable, Any]:
    try:
        import jieba
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
        from rouge_chinese import Rouge
    except ImportError as e:
        raise EvalError(f"generation metrics need {e.name}: pip install 'rayft[eval]'") from e
    jieba.setLogLevel(logging.WARNING)  # not its "Building prefix dict..." lines on every start
    return jieba.lcut, Rouge(), sentence_bleu, SmoothingFunction().method3


def score_pair(prediction: str, reference: str, scorers: tuple | None = None) -> dict[str, float]:
    """The four scores of one prediction against its reference, each in [0, 100]."""
    cut, rouge, sentence_bleu, smoothing = scorers or _scorers()
    hypothesis, truth = " ".join(cut(prediction)), " ".join(cut(reference))
    if not hypothesis.split() or not truth.split():  # rouge-chinese raises on an empty side
        scores = {m: 0.0 for m in METRICS[:3]}
    else:
        scores = {m: s["f"] for m, s in rouge.get_scores(hypothesis, truth)[0].items()}
    scores["bleu-4"] = sentence_bleu([list(reference)], list(prediction), smoothing_function=smoothing)
    return {m: round(scores[m] * 100, 4) for m in METRICS}


def compute_similarity(rows: list[tuple[str, str]]) -> dict[str, Any]:
    """{"rows": n, metric: mean score} over (prediction, reference) pairs."""
    from tqdm import tqdm

    if not rows:
        raise EvalError("no rows to score")
    scorers = _scorers()
    totals = dict.fromkeys(METRICS, 0.0)
    for prediction, reference in tqdm(rows, desc="scoring", unit="row", leave=False, disable=len(rows) < 1000):
        for m, v in score_pair(prediction, reference, scorers).items():
            totals[m] += v
    return {"rows": len(rows), **{m: round(v / len(rows), 4) for m, v in totals.items()}}


def read_predictions(path: str | Path) -> list[tuple[str, str]]:
    """(prediction, reference) of every line of a JSONL file such as `rayft infer` writes; blank lines are skipped."""
    path = Path(path)
    rows = []
    # split on newlines only: splitlines() would also cut at a U+2028 inside a JSON string
    for number, line in enumerate(read_text(path, "utf-8-sig").split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalError(f"{path} line {number}: not valid JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise EvalError(
                f"{path} line {number}: expected a JSON object with prediction and reference, got {row!r:.60}"
            )
        for name in FIELDS:
            if name not in row:
                hint = " (rayft infer writes one only when the dataset has answers)" if name == "reference" else ""
                raise EvalError(f"{path} line {number}: no {name!r} field{hint}")
            if not isinstance(row[name], str):
                raise EvalError(f"{path} line {number}: {name!r} must be a string, got {row[name]!r:.60}")
        rows.append((row["prediction"], row["reference"]))
    if not rows:
        raise EvalError(f"{path}: no rows; expected one JSON object per line with 'prediction' and 'reference'")
    return rows
