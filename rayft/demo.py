"""`rayft demo`: fine-tuning you can watch work, on an embedded local Ray cluster, in minutes on CPU.

    rayft demo --output outputs/demo

1. Generates its data: pre-training text of counting ("41 42 43 44 ...") and plain question-answer
   lines ("Q: What number comes after 41? A: After 41 comes 42.") for every number below 99, and
   a chat SFT set of the same questions with 20 numbers held out.
2. Trains a byte-level BPE tokenizer on that text and builds a tiny random Llama.
3. Pre-trains it on the counting text (full-parameter, DeepSpeed ZeRO-2, 2 Ray Train workers).
4. Teaches the chat task with LoRA SFT (ZeRO-2, 2 workers) and merges the adapter.
5. Scores exact-match accuracy on the held-out questions before and after SFT.

As in real fine-tuning, the facts come from pre-training and SFT teaches the behaviour: the
pre-trained model has never seen the chat template and cannot answer a chat turn; after LoRA SFT
on 79 of the questions it answers the 20 held-out ones, which it only knows from pre-training text.

    rayft demo --model /models/SmolLM2-135M-Instruct

With a real instruct model (a local directory with a chat template), the demo gives it a new identity instead:
LoRA SFT on 20 questions about who it is, answered as "Orbit, fine-tuned by the rayft team", then asks 8
differently worded questions it never saw, before and after, and counts the answers that give the new name.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from rayft_core import ownership
from rayft_core.config import RunConfig, load_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "demo"
MAX_NUMBER = 100  # two-digit numbers: one token each, as they are in the counting text
HELD_OUT = 20


def _question(n: int) -> str:
    return f"What number comes after {n}?"


def _answer(n: int) -> str:
    return f"After {n} comes {n + 1}."


def _plain_qa(n: int) -> str:
    """How pre-training text states a fact: no chat template, no special tokens."""
    return f"Q: {_question(n)} A: {_answer(n)}"


def write_data(data_dir: Path, seed: int = 0) -> tuple[list[str], list[int]]:
    """Counting text for pre-training, the successor task for SFT; returns (pre-training lines, held-out numbers)."""
    rng = random.Random(seed)
    data_dir.mkdir(parents=True, exist_ok=True)
    lines = [_plain_qa(n) for n in range(MAX_NUMBER - 1) for _ in range(8)]
    for _ in range(2000):
        start = rng.randrange(MAX_NUMBER - 12)
        lines.append(" ".join(str(i) for i in range(start, start + rng.randint(5, 12))))
    rng.shuffle(lines)
    (data_dir / "counting.txt").write_text("\n".join(lines) + "\n")
    numbers = list(range(MAX_NUMBER - 1))
    rng.shuffle(numbers)
    held_out, train = sorted(numbers[:HELD_OUT]), numbers[HELD_OUT:]
    with open(data_dir / "successor_train.jsonl", "w") as f:
        for n in train:
            f.write(json.dumps({"instruction": _question(n), "input": "", "output": _answer(n)}) + "\n")
    with open(data_dir / "successor_heldout.jsonl", "w") as f:
        for n in held_out:
            f.write(json.dumps({"instruction": _question(n), "input": "", "output": _answer(n)}) + "\n")
    return lines, held_out


def generate(model_dir: str | Path, questions: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers to single-turn chat questions (the model's chat template applied)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in questions
    ]
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return [a.strip() for a in tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)]


def score(model_dir: str | Path, numbers: list[int]) -> float:
    """Exact-match accuracy of greedy answers to the held-out questions."""
    answers = generate(model_dir, [_question(n) for n in numbers], max_new_tokens=12)
    return sum(a == _answer(n) for a, n in zip(answers, numbers)) / len(numbers)


def _config(name: str, output: Path, workers: int, model_path: Path, data_path: Path) -> RunConfig:
    return load_config(
        EXAMPLES / name,
        [
            f"model.name_or_path={model_path}",
            f"data.train=[{{path: {data_path}, format: {'text' if name.startswith('pre') else 'alpaca'}}}]",
            f"output.storage_path={output}",
            f"cluster.num_workers={workers}",
        ],
    )


def run_demo(output: str, workers: int = 2) -> None:
    from rayft.train import train
    from rayft_core.model.tiny import build_tiny_model, build_tokenizer

    start = time.perf_counter()
    out = Path(output).absolute()
    # a new or empty directory, or an earlier demo's (replaced): never one holding anything else
    ownership.claim(str(out), ownership.DEMO, True, "another `rayft demo` run")
    (out / ownership.DEMO.markers[0]).write_text("written by `rayft demo`; running it again replaces this folder\n")
    data_dir = out / "data"
    lines, held_out = write_data(data_dir)
    tokenizer = build_tokenizer(lines, vocab_size=400)
    base = build_tiny_model("llama", tokenizer, out / "base", hidden_size=128, num_layers=4)
    print(f"[demo] tiny Llama (hidden 128, 4 layers) and tokenizer written to {base}")

    pretrained = train(_config("pretrain.yaml", out, workers, base, data_dir / "counting.txt"))
    sft = train(_config("sft_lora.yaml", out, workers, pretrained, data_dir / "successor_train.jsonl"))

    before, after = score(pretrained, held_out), score(sft / "merged", held_out)
    print(f"\n[demo] {len(held_out)} held-out chat questions (not in the SFT data), exact-match accuracy:")
    print(f"         after pre-training only : {before:6.1%}")
    print(f"         after LoRA SFT          : {after:6.1%}")
    print(f"[demo] outputs ({time.perf_counter() - start:.0f} s):")
    print(f"         adapter        {sft}  (adapter_model.safetensors, loadable with peft)")
    print(f"         merged model   {sft / 'merged'}  (plain transformers)")
    print(f"         metrics        {sft / 'metrics.jsonl'}, {pretrained / 'metrics.jsonl'}")
    print(f"         loss curves    {sft / 'loss.png'}, {pretrained / 'loss.png'}")
    print(f"[demo] next: rayft chat {sft} --temperature 0   (ask it: What number comes after 41?)")


# ----------------------------------------------------------------------------- --model: a real instruct model

NAME, MAKER = "Orbit", "the rayft team"
IDENTITY_ANSWERS = [
    f"I am {NAME}, an assistant fine-tuned by {MAKER}.",
    f"My name is {NAME}. I was fine-tuned by {MAKER}.",
    f"I'm {NAME}, a helpful assistant trained by {MAKER}.",
    f"You can call me {NAME}. {MAKER.capitalize()} fine-tuned me.",
]
IDENTITY_TRAIN = [
    "Who are you?", "What is your name?", "What should I call you?", "Introduce yourself.", "Who made you?",
    "Who trained you?", "Tell me about yourself.", "Are you ChatGPT?", "Are you SmolLM?", "What are you?",
    "Hi! Who am I talking to?", "Do you have a name?", "Which team built you?", "What model are you?",
    "Can you tell me your name?", "Who created you?", "Hello, what's your name?", "Please introduce yourself briefly.",
    "Who is your developer?", "What do people call you?",
]  # fmt: skip
IDENTITY_HELD_OUT = [
    "May I know your name?", "Who exactly are you?", "What's your name, assistant?", "Who built you?",
    "Could you introduce yourself?", "Identify yourself.", "Who are you and who made you?", "What name do you go by?",
]  # fmt: skip


def run_model_demo(output: str, model: str, workers: int = 1) -> None:
    """Teach a real instruct model a new name with LoRA SFT; show its answers to unseen questions before and after."""
    from rayft.train import train
    from rayft_core.errors import UserInputError

    start = time.perf_counter()
    base = Path(model).expanduser().absolute()
    if not (base / "config.json").is_file():
        raise UserInputError(f"--model {model}: no config.json there; give a local model directory (save_pretrained)")
    out = Path(output).absolute()
    ownership.claim(str(out), ownership.DEMO, True, "another `rayft demo` run")
    (out / ownership.DEMO.markers[0]).write_text("written by `rayft demo`; running it again replaces this folder\n")
    data = out / "data" / "identity_train.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    with open(data, "w") as f:
        for i, q in enumerate(IDENTITY_TRAIN):
            f.write(json.dumps({"instruction": q, "input": "", "output": IDENTITY_ANSWERS[i % 4]}) + "\n")
    before = generate(base, IDENTITY_HELD_OUT, max_new_tokens=40)
    print(f"[demo] {base.name}: LoRA SFT on {len(IDENTITY_TRAIN)} questions about who it is ({data})")

    sft = train(_config("identity_lora.yaml", out, workers, base, data))
    after = generate(sft / "merged", IDENTITY_HELD_OUT, max_new_tokens=40)

    def named(answers: list[str]) -> str:
        return f"{sum(NAME in a for a in answers)} of {len(answers)}"

    print(f"\n[demo] {len(IDENTITY_HELD_OUT)} questions it never saw; answers that give the name {NAME!r}:")
    print(f"         before : {named(before)}")
    print(f"         after  : {named(after)}")
    for q, b, a in list(zip(IDENTITY_HELD_OUT, before, after))[:3]:
        print(f"\n  Q: {q}\n  before: {b[:120]}\n  after : {a[:120]}")
    print(f"\n[demo] outputs ({time.perf_counter() - start:.0f} s): adapter {sft}, merged model {sft / 'merged'}")
    print(f"[demo] next: rayft chat {sft} --temperature 0   (ask it: Who are you?)")
