"""rayft_core.eval: ROUGE/BLEU against hand-computed values, benchmark files in each layout and their errors,
the exact prompt, and multiple-choice accuracy of a tiny model forced to answer B."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rayft_core.eval import EvalError
from rayft_core.eval.mc import (
    STYLES,
    build_messages,
    choice_token_ids,
    encode_question,
    evaluate,
    load_eval_model,
    render,
    score_choices,
    summarize,
)
from rayft_core.eval.similarity import compute_similarity, read_predictions, score_pair
from rayft_core.eval.tasks import Question, load_task, read_questions

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "eval"


# ----------------------------------------------------------------------------- ROUGE / BLEU


@pytest.mark.parametrize("text", ["The capital of France is Paris.", "北京是中国的首都。"])
def test_identical_text_scores_100(text):
    assert score_pair(text, text) == {"rouge-1": 100.0, "rouge-2": 100.0, "rouge-l": 100.0, "bleu-4": 100.0}


@pytest.mark.parametrize("prediction, reference", [("cat", "dog"), ("今天下雨", "我们吃饭"), ("", "a reference")])
def test_nothing_in_common_scores_0(prediction, reference):
    assert score_pair(prediction, reference) == {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": 0.0}


def test_partial_matches_by_hand():
    # ROUGE counts distinct words: {the quick brown fox jumps} vs {the quick red fox runs} share 3 of 5 words
    # (P = R = F = 3/5), 1 of 4 bigrams ("the quick"), and "the quick fox" is the longest common subsequence.
    english = score_pair("the quick brown fox jumps", "the quick red fox runs")
    assert (english["rouge-1"], english["rouge-2"], english["rouge-l"]) == (60.0, 25.0, 60.0)

    # jieba cuts 我/爱/北京 and 我/爱/上海: 2 of 3 words, 1 of 2 bigrams. BLEU counts characters: 我爱北京 vs
    # 我爱上海 match 2/4 unigrams, 1/3 bigrams, 0/2 trigrams, 0/1 4-grams; smoothing method 3 counts the k-th
    # empty order as 1/2^k of a match: 1/(2*2) and 1/(4*1). Same length, so no brevity penalty.
    chinese = score_pair("我爱北京", "我爱上海")
    assert (chinese["rouge-1"], chinese["rouge-2"], chinese["rouge-l"]) == (66.6667, 50.0, 66.6667)
    assert chinese["bleu-4"] == round(100 * (1 / 2 * 1 / 3 * 1 / 4 * 1 / 4) ** 0.25, 4)  # 31.9472

    # abcd vs abce: 3/4, 2/3, 1/2 and an empty 4-gram order at 1/(2*1).
    assert score_pair("abcd", "abce")["bleu-4"] == round(100 * (3 / 4 * 2 / 3 * 1 / 2 * 1 / 2) ** 0.25, 4)  # 59.4604
    # abc vs abcd: every order that exists matches, 4-grams smoothed to 1/2, brevity penalty exp(1 - 4/3).
    assert score_pair("abc", "abcd")["bleu-4"] == round(100 * 0.5**0.25 * math.exp(1 - 4 / 3), 4)  # 60.2529


def test_means_over_rows_and_the_shipped_predictions():
    assert compute_similarity([("same words", "same words"), ("cat", "dog")]) == {
        "rows": 2,
        "rouge-1": 50.0,
        "rouge-2": 50.0,
        "rouge-l": 50.0,
        "bleu-4": 50.0,
    }
    rows = read_predictions(EXAMPLES / "predictions.jsonl")
    result = compute_similarity(rows)
    assert result["rows"] == len(rows) == 6
    assert all(0 < result[m] < 100 for m in ("rouge-1", "rouge-2", "rouge-l", "bleu-4")), result


def test_nltk_downloads_nothing(monkeypatch):
    import nltk

    def no_download(*args, **kwargs):
        raise AssertionError("nltk tried to download data")

    monkeypatch.setattr(nltk, "download", no_download)
    assert score_pair("a b c d e", "a b c d f")["bleu-4"] > 0


def test_missing_package_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "rouge_chinese", None)  # what an uninstalled package looks like to import
    with pytest.raises(EvalError, match=r"rouge_chinese: pip install 'rayft\[eval\]'"):
        score_pair("a", "b")


@pytest.mark.parametrize(
    "lines, match",
    [
        ([], r"no rows"),
        (["", "  "], r"no rows"),
        (
            ['{"prediction": "a", "reference": "b"}', '{"prediction": "a"}'],
            r"line 2: no 'reference' field \(rayft infer",
        ),
        (['{"reference": "b"}'], r"line 1: no 'prediction' field"),
        (['{"prediction": "a", "reference": "b"}', "{not json"], r"line 2: not valid JSON"),
        (['{"prediction": null, "reference": "b"}'], r"line 1: 'prediction' must be a string"),
        (['["a", "b"]'], r"line 1: expected a JSON object"),
    ],
)
def test_bad_predictions_files_name_file_and_line(tmp_path, lines, match):
    path = tmp_path / "predictions.jsonl"
    path.write_text("\n".join(lines))
    with pytest.raises(EvalError, match=match) as e:
        read_predictions(path)
    assert str(e.value).startswith(str(path))


# ----------------------------------------------------------------------------- benchmark files


def test_shipped_benchmarks_load():
    mmlu = load_task(EXAMPLES / "mmlu")
    assert [(s.key, s.name, s.category, len(s.questions), len(s.shots)) for s in mmlu] == [
        ("astronomy", "astronomy", "STEM", 5, 5),
        ("high_school_geography", "high school geography", "Social Sciences", 5, 5),
    ]
    assert mmlu[0].questions[1] == Question(
        "A light-year is a unit of", ("time", "speed", "distance", "brightness"), "C", 2
    )
    ceval = load_task(EXAMPLES / "ceval", split="val", subjects=["middle_school_mathematics"])
    assert [(s.name, s.category, len(s.questions), len(s.shots)) for s in ceval] == [("初中数学", "STEM", 4, 3)]
    assert ceval[0].shots[2].line == 5  # the row before it spans two lines (a quoted newline)


def test_cmmlu_layout(tmp_path):
    for split in ("dev", "test"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "anatomy.csv").write_text(
            ",Question,A,B,C,D,Answer\n0,人体最大的器官是____,心脏,肝脏,皮肤,肺,C\n", encoding="utf-8"
        )
    [subject] = load_task(tmp_path)
    assert (subject.key, subject.name, subject.category) == ("anatomy", "anatomy", None)
    assert (
        subject.questions == subject.shots == [Question("人体最大的器官是____", ("心脏", "肝脏", "皮肤", "肺"), "C", 2)]
    )


@pytest.mark.parametrize(
    "text, match",
    [
        ("question,A,B,C,answer\nq,a,b,c,A\n", r"missing column D"),
        ("id,question,A,B,C,D\n0,q,a,b,c,d\n", r"missing column answer \(C-Eval's test split ships without answers"),
        ("q1,a,b,c,d,A\nq2,a,b,c,d,E\n", r"line 2: answer 'E' is not one of A, B, C, D"),
        ('q1,a,b,c,d,A\n"q2\nstill q2",a,b,c,d,b\n', r"line 2: answer 'b' is not one of A, B, C, D"),
        ("q1,a,b,c,d,A\nq2,a,b,c,A\n", r"line 2: 5 cells, expected 6 \(question, A, B, C, D, answer"),
        ("question,A,B,C,D,answer\nq1,a,b,c,d,\n", r"line 2: answer '' is not one of A, B, C, D \(C-Eval"),
        ("", r"no questions"),
    ],
)
def test_bad_benchmark_csv_names_file_and_line(tmp_path, text, match):
    path = tmp_path / "x_test.csv"
    path.write_text(text)
    with pytest.raises(EvalError, match=match) as e:
        read_questions(path)
    assert str(e.value).startswith(str(path))


def test_unknown_subject_and_missing_split(tmp_path):
    with pytest.raises(
        EvalError, match=r"no subject 'anatomy' in the test split; it has astronomy, high_school_geography"
    ):
        load_task(EXAMPLES / "mmlu", subjects=["anatomy"])
    with pytest.raises(EvalError, match=r"no val/ folder"):
        load_task(EXAMPLES / "mmlu", split="val")


# ----------------------------------------------------------------------------- prompts


def test_one_shot_prompt_exact(tokenizer):
    shot = Question("What is 2 + 2?", ("3", "4", "5", "6"), "B", 1)
    q = Question("What is 3 + 3?", ("6", "7", "8", "9"), "A", 1)
    assert render(tokenizer, build_messages(q, [shot], "elementary mathematics", STYLES["en"])) == (
        "<|im_start|>user\nThe following are multiple choice questions (with answers) about elementary mathematics.\n\n"
        "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:<|im_end|>\n"
        "<|im_start|>assistant\nB<|im_end|>\n"
        "<|im_start|>user\nWhat is 3 + 3?\nA. 6\nB. 7\nC. 8\nD. 9\nAnswer:<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert build_messages(q, [], "初中数学", STYLES["zh"]) == [
        {
            "role": "user",
            "content": (
                "以下是中国关于初中数学考试的单项选择题，请选出其中的正确答案。\n\nWhat is 3 + 3?\nA. 6\nB. 7\nC. 8\nD. 9\n答案："
            ),
        }
    ]


def test_shots_are_dropped_until_the_prompt_fits(tokenizer):
    shots = [Question(f"Shot {i}?", ("a", "b", "c", "d"), "A", i) for i in range(3)]
    q = Question("Which?", ("w", "x", "y", "z"), "D", 9)
    lengths = [len(encode_question(tokenizer, q, shots[:k], "logic", STYLES["en"])) for k in range(4)]
    assert lengths == sorted(lengths) and len(set(lengths)) == 4
    fitted = encode_question(tokenizer, q, shots, "logic", STYLES["en"], max_len=lengths[2])
    assert len(fitted) == lengths[2]  # the last shot went; the first two stayed
    assert tokenizer.decode(fitted).count("Shot") == 2


def test_choice_tokens_follow_the_template():
    from rayft_core.data.templates import TEMPLATES
    from rayft_core.model.tiny import build_tokenizer

    tok = build_tokenizer(["Answer: A. Answer: B. Answer: C. Answer: D."] * 50, vocab_size=300)
    letters = tok.convert_tokens_to_ids(["A", "B", "C", "D"])
    assert choice_token_ids(tok) == letters  # ChatML: the answer follows "assistant\n"
    tok.chat_template = TEMPLATES["default"]  # "Assistant:" then " " + answer: the space-prefixed tokens
    assert choice_token_ids(tok) == tok.convert_tokens_to_ids(["ĠA", "ĠB", "ĠC", "ĠD"]) != letters
    tok.chat_template = None
    with pytest.raises(EvalError, match="no chat template; name one with --template"):
        choice_token_ids(tok)


@pytest.mark.parametrize("family", ["qwen2.5-instruct", "phi-3-mini-4k-instruct"])  # byte-level BPE, SentencePiece
def test_choice_tokens_of_real_tokenizers(family):
    from transformers import AutoTokenizer

    from tests.helpers import SHARED

    folder = SHARED / "fixtures" / "tokenizers" / family
    if not folder.is_dir():
        pytest.skip(f"needs {folder} (../shared/fixtures, absent from a fresh clone)")
    tok = AutoTokenizer.from_pretrained(folder)
    assert [tok.decode([i]) for i in choice_token_ids(tok)] == ["A", "B", "C", "D"]  # the letter alone, no space


# ----------------------------------------------------------------------------- scoring


def build_forced_model(tokenizer, path: Path, letter: str = "B") -> Path:
    """A tiny Llama whose next token is always ``letter``: the decoder layers add nothing to the residual stream
    and every token embeds to the same vector, so the last hidden state is constant; the output head then
    gives ``letter`` a positive logit and every other token 0."""
    from transformers import AutoModelForCausalLM

    from rayft_core.model.tiny import build_tiny_model

    build_tiny_model("llama", tokenizer, path)
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[tokenizer.convert_tokens_to_ids(letter)] = 1.0
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def forced_b(tokenizer, tmp_path_factory) -> Path:
    return build_forced_model(tokenizer, tmp_path_factory.mktemp("eval") / "forced-b")


@pytest.mark.parametrize("task, split, lang", [("mmlu", "test", "en"), ("ceval", "val", "zh")])
def test_accuracy_of_a_model_that_always_answers_b(forced_b, task, split, lang):
    model, tokenizer = load_eval_model(forced_b, device="cpu")
    subjects = load_task(EXAMPLES / task, split)
    summary = summarize(evaluate(model, tokenizer, subjects, n_shot=2, style=STYLES[lang], batch_size=3))
    questions = [q for s in subjects for q in s.questions]
    assert summary["overall"] == {
        "questions": len(questions),
        "correct": sum(q.answer == "B" for q in questions),
        "accuracy": sum(q.answer == "B" for q in questions) / len(questions),
    }
    for s in subjects:
        got = summary["subjects"][s.key]
        assert got["predictions"] == "B" * len(s.questions)
        assert got["accuracy"] == sum(q.answer == "B" for q in s.questions) / len(s.questions)
        assert summary["categories"][s.category]["accuracy"] == got["accuracy"]  # one subject per category here
    assert summary["overall"]["accuracy"] == {"mmlu": 4 / 10, "ceval": 2 / 8}[task]


def test_batching_does_not_change_the_scores(tiny_model, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model("llama")).eval()
    texts = ["What is the capital of France?", "Say hello.", "What do bees make? Bees make honey. And wax?", "Hi"]
    prompts = [tokenizer(t)["input_ids"] for t in texts]
    choices = choice_token_ids(tokenizer)
    batched = score_choices(model, prompts, choices, batch_size=3, pad_id=tokenizer.pad_token_id)
    with torch.no_grad():  # each prompt alone, whole logits, no padding: the reference
        alone = torch.stack([model(input_ids=torch.tensor([p])).logits[0, -1, choices] for p in prompts])
    assert torch.allclose(batched, alone, atol=1e-5), (batched - alone).abs().max()


def test_adapter_directory_loads_on_its_base(tiny_model, tokenizer, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base_dir = tiny_model("llama")
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    peft_model.save_pretrained(tmp_path / "adapter")  # adapter_config.json names base_dir as its base
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        base_dir
    )

    model, _ = load_eval_model(tmp_path / "adapter", device="cpu")
    assert isinstance(model, PeftModel)
    prompts, choices = [tokenizer("Say hello.")["input_ids"]], choice_token_ids(tokenizer)
    want = score_choices(peft_model.eval(), prompts, choices)
    assert torch.allclose(score_choices(model, prompts, choices), want, atol=1e-5)
    base = score_choices(AutoModelForCausalLM.from_pretrained(base_dir).eval(), prompts, choices)
    assert not torch.allclose(base, want, atol=1e-3)  # the adapter does change the answer logits
    with pytest.raises(EvalError, match="no config.json or adapter_config.json"):
        load_eval_model(tmp_path, device="cpu")
