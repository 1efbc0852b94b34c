"""Multiple-choice accuracy the way MMLU's harness and LLaMA-Factory's evaluator measure it.

    model, tokenizer = load_eval_model("outputs/sft-lora")           # an adapter directory loads on its base
    results = evaluate(model, tokenizer, load_task("data/mmlu"), n_shot=5, style=STYLES["en"])
    summarize(results)["overall"]["accuracy"]

Each question becomes a conversation: k solved dev examples as user/assistant turns, then the question as
the last user turn, the instruction ("The following are multiple choice questions (with answers) about
{subject}.") opening the first; the model's chat template renders it with the generation prompt. The
answer is the letter among A-D whose token has the highest next-token logit there, so no text is
generated and nothing is parsed. The k shots are the first k dev rows in file order (as Hendrycks'
original harness; LLaMA-Factory draws them at random per question), so two runs score the same prompts.
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rayft_core.eval import EvalError, read_text
from rayft_core.eval.tasks import CHOICES, Question, Subject

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptStyle:
    system: str  # opens the first user turn; {subject} is the subject's name
    choice: str  # one option: {choice} is its letter, {content} its text
    answer: str  # closes every question


STYLES = {  # LLaMA-Factory's eval templates, word for word
    "en": PromptStyle(
        "The following are multiple choice questions (with answers) about {subject}.\n\n",
        "\n{choice}. {content}",
        "\nAnswer:",
    ),
    "zh": PromptStyle(
        "以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n", "\n{choice}. {content}", "\n答案："
    ),
}


@dataclass
class SubjectResult:
    subject: Subject
    predictions: list[str]  # a letter per question

    @property
    def correct(self) -> int:
        return sum(p == q.answer for p, q in zip(self.predictions, self.subject.questions))


def format_question(q: Question, style: PromptStyle) -> str:
    options = "".join(style.choice.format(choice=c, content=text) for c, text in zip(CHOICES, q.options))
    return q.question + options + style.answer


def build_messages(q: Question, shots: list[Question], subject_name: str, style: PromptStyle) -> list[dict[str, str]]:
    """The conversation asking ``q`` after the solved ``shots``; it ends with the user turn."""
    messages = []
    for shot in shots:
        messages += [
            {"role": "user", "content": format_question(shot, style)},
            {"role": "assistant", "content": shot.answer},
        ]
    messages.append({"role": "user", "content": format_question(q, style)})
    messages[0]["content"] = style.system.format(subject=subject_name) + messages[0]["content"]
    return messages


def render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool = True) -> str:
    if not tokenizer.chat_template:
        raise EvalError("the tokenizer has no chat template; name one with --template (e.g. default for a base model)")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]  # the template writes BOS itself where it has one


def encode_question(
    tokenizer: Any,
    q: Question,
    shots: list[Question],
    subject_name: str,
    style: PromptStyle,
    max_len: int | None = None,
) -> list[int]:
    """Token ids of the prompt; shots are dropped from the last until it fits in ``max_len`` (as MMLU's harness)."""
    for k in range(len(shots), -1, -1):
        ids = _ids(tokenizer, render(tokenizer, build_messages(q, shots[:k], subject_name, style)))
        if max_len is None or len(ids) <= max_len:
            return ids
    logger.warning("line %d: the prompt has %d tokens even without examples, more than %d", q.line, len(ids), max_len)
    return ids


def choice_token_ids(tokenizer: Any) -> list[int]:
    """The token each letter's answer starts with right after the prompt.

    Which token that is depends on the template: 'B' after ChatML's 'assistant\\n', but ' B' after the
    default template's 'Assistant:' (it writes a space before an answer). So a one-turn conversation is
    rendered with and without each letter as the answer and the first token after the prompt is taken;
    where that token is not the letter (a tokenizer merged it with what follows) the letter's own
    last token is used, as LLaMA-Factory does.
    """
    probe = [{"role": "user", "content": "?"}]
    prompt = _ids(tokenizer, render(tokenizer, probe))
    ids = []
    for letter in CHOICES:
        full = _ids(
            tokenizer, render(tokenizer, probe + [{"role": "assistant", "content": letter}], generation_prompt=False)
        )
        after = full[len(prompt)] if full[: len(prompt)] == prompt and len(full) > len(prompt) else None
        if after is None or tokenizer.decode([after]).strip() != letter:
            after = tokenizer.encode(letter, add_special_tokens=False)[-1]
        ids.append(after)
    if len(set(ids)) != len(CHOICES):
        raise EvalError(f"the tokenizer gives the letters A-D the tokens {ids}; they must differ")
    return ids


@torch.inference_mode()
def score_choices(
    model: torch.nn.Module, prompts: list[list[int]], choice_ids: list[int], batch_size: int = 4, pad_id: int = 0
) -> torch.Tensor:
    """Next-token logits of the choice tokens after each prompt: [num_prompts, num_choices], float32."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    keeps_logits = (
        "logits_to_keep" in inspect.signature(getattr(model, "get_base_model", lambda: model)().forward).parameters
    )
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths share a batch: little padding
    scores = torch.empty(len(prompts), len(choice_ids))
    choices = torch.tensor(choice_ids, device=device)
    for start in tqdm(range(0, len(order), batch_size), desc="scoring", unit="batch", leave=False):
        rows = order[start : start + batch_size]
        lengths = torch.tensor([len(prompts[i]) for i in rows], device=device)
        # Right padding: a causal model's logits at a real token do not depend on the pads after it.
        ids = torch.full((len(rows), int(lengths.max())), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(rows):
            ids[r, : len(prompts[i])] = torch.tensor(prompts[i])
            mask[r, : len(prompts[i])] = 1
        last = lengths - 1
        # Only the last real position of each row is needed: asking for those few positions keeps the
        # [batch, seq, vocab] logits (GBs at a 150k vocabulary) from ever being built.
        keep = torch.unique(last) if keeps_logits else None
        kwargs = {"logits_to_keep": keep} if keeps_logits else {}
        logits = model(
            input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs
        ).logits  # [batch, kept, vocab]
        column = torch.searchsorted(keep, last) if keeps_logits else last
        picked = logits[torch.arange(len(rows), device=device), column]  # [batch, vocab]
        scores[rows] = picked[:, choices].float().cpu()
    return scores


def evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    subjects: list[Subject],
    n_shot: int = 5,
    style: PromptStyle = STYLES["en"],
    batch_size: int = 4,
    max_len: int | None = None,
) -> list[SubjectResult]:
    """The letter the model picks for every question of every subject."""
    choice_ids = choice_token_ids(tokenizer)
    results = []
    for subject in subjects:
        shots = subject.shots[:n_shot]
        if len(shots) < n_shot:
            logger.warning(
                "%s: %d dev example(s) for %d shots; using %d", subject.key, len(subject.shots), n_shot, len(shots)
            )
        prompts = [encode_question(tokenizer, q, shots, subject.name, style, max_len) for q in subject.questions]
        scores = score_choices(model, prompts, choice_ids, batch_size, tokenizer.pad_token_id or 0)
        predictions = [CHOICES[i] for i in scores.argmax(-1).tolist()]
        results.append(SubjectResult(subject, predictions))
        logger.info("%s: %d/%d correct", subject.key, results[-1].correct, len(predictions))
    return results


def summarize(results: list[SubjectResult]) -> dict[str, Any]:
    """Accuracy per subject, per category (over all its questions) and overall (over all questions)."""

    def entry(correct: int, total: int) -> dict[str, Any]:
        return {"questions": total, "correct": correct, "accuracy": correct / total if total else 0.0}

    subjects, categories = {}, {}
    for r in results:
        s = r.subject
        subjects[s.key] = {
            "name": s.name,
            "category": s.category,
            **entry(r.correct, len(r.predictions)),
            "predictions": "".join(r.predictions),
        }
        if s.category is not None:
            c = categories.setdefault(s.category, [0, 0])
            c[0], c[1] = c[0] + r.correct, c[1] + len(r.predictions)
    correct, total = sum(r.correct for r in results), sum(len(r.predictions) for r in results)
    return {
        "subjects": subjects,
        "categories": {k: entry(*v) for k, v in sorted(categories.items())},
        "overall": entry(correct, total),
    }


def load_eval_model(
    path: str | Path,
    base_model: str | None = None,
    template: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
) -> tuple[torch.nn.Module, Any]:
    """A model directory, or a PEFT adapter directory (adapter_config.json) loaded on its base, with its tokenizer
    (the adapter's own when it has one: a rayft run saves it with its chat template)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from rayft_core.config import ModelConfig
    from rayft_core.model.loader import load_tokenizer, resize_embeddings, resolve_attn_implementation, resolve_dtype

    path = Path(path)
    adapter = path / "adapter_config.json"
    base = path
    if adapter.is_file():
        if not base_model:
            try:
                base_model = json.loads(read_text(adapter)).get("base_model_name_or_path")
            except (json.JSONDecodeError, AttributeError):
                raise EvalError(
                    f"{adapter}: not a JSON object as PEFT writes; give the base with --base-model"
                ) from None
        base = Path(base_model or "")
        if not (base / "config.json").is_file():
            raise EvalError(
                f"{path} is an adapter whose base model {str(base)!r} has no config.json here; "
                "give the base directory with --base-model"
            )
    elif not (path / "config.json").is_file():
        raise EvalError(
            f"{path}: no config.json or adapter_config.json; point --model at a directory written by "
            "save_pretrained or at a rayft run's output"
        )
    tokenizer_dir = path if (path / "tokenizer_config.json").is_file() else base
    tokenizer = load_tokenizer(
        ModelConfig(name_or_path=str(tokenizer_dir), template=template, trust_remote_code=trust_remote_code)
    )
    model = AutoModelForCausalLM.from_pretrained(
        base,
        dtype=resolve_dtype(dtype),
        trust_remote_code=trust_remote_code,
        attn_implementation=resolve_attn_implementation(
            "auto", AutoConfig.from_pretrained(base, trust_remote_code=trust_remote_code)
        ),
    )
    if adapter.is_file():
        from peft import PeftModel

        resize_embeddings(model, len(tokenizer))  # a run that added tokens saved its resized embeddings in the adapter
        model = PeftModel.from_pretrained(model, str(path))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), tokenizer
