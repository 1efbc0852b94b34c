"""The `http` reward function: scores from a service on loopback (a reward model served anywhere)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rayft_core.errors import UserInputError
from rayft_core.rl_stage_config import RewardFunction
from rayft_core.train.rewards import Rewards


@pytest.fixture
def service():
    """Scores each completion by its length; needs the key "s3cret"; the first request with it gets a 503, and a
    completion "slow" makes the answer wait 2 s, "bad" makes it answer too few scores."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"auth": self.headers.get("Authorization"), **body})
            if self.headers.get("Authorization") != "Bearer s3cret":
                return self._answer(401, {"error": "bad key"})
            if sum(s["auth"] == "Bearer s3cret" for s in seen) == 1:  # the first request it accepts
                return self._answer(503, {"error": "warming up"})
            if "slow" in body["completions"]:
                time.sleep(2)
            scores = [float(len(c)) for c in body["completions"]]
            return self._answer(200, {"scores": scores[:1] if "bad" in body["completions"] else scores})

        def _answer(self, code: int, value: dict) -> None:
            data = json.dumps(value).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/score", seen
    server.shutdown()
    server.server_close()


def _http(url: str, **kwargs) -> Rewards:
    return Rewards([RewardFunction(function="http", kwargs={"url": url, "api_key_env": "RM_KEY", **kwargs})])


def test_scores_come_in_batches_after_a_retry(service, monkeypatch):
    url, seen = service
    monkeypatch.setenv("RM_KEY", "s3cret")
    completions = ["a", "bb", "ccc", "dddd", "eeeee"]
    scores = _http(url, batch_size=2, retries=2)(["q"] * 5, completions, ["r"] * 5)
    assert scores == [[1.0, 2.0, 3.0, 4.0, 5.0]]
    assert [len(s["completions"]) for s in seen] == [2, 2, 2, 1]  # the 503, then 3 batches of at most 2
    assert seen[1] == {
        "auth": "Bearer s3cret",
        "prompts": ["q", "q"],
        "completions": ["a", "bb"],
        "references": ["r", "r"],
    }


def test_a_failing_service_stops_the_run_with_the_reason(service, monkeypatch):
    url, seen = service
    with pytest.raises(UserInputError, match="environment variable RM_KEY .* is not set"):
        _http(url)(["q"], ["a"], [None])
    monkeypatch.setenv("RM_KEY", "wrong")
    with pytest.raises(UserInputError, match="answered 401 Unauthorized"):
        _http(url, retries=3)(["q"], ["a"], [None])
    assert len(seen) == 1  # a refused key is not tried again
    monkeypatch.setenv("RM_KEY", "s3cret")
    with pytest.raises(UserInputError, match="answered 503"):
        _http(url, retries=0)(["q"], ["a"], [None])
    with pytest.raises(UserInputError, match=r'must answer \{"scores": \[...\]\} with 2 numbers'):
        _http(url)(["q", "q"], ["a", "bad"], [None, None])
    start = time.monotonic()
    with pytest.raises(UserInputError, match="did not answer after 1 tries"):
        _http(url, timeout=0.3, retries=0)(["q"], ["slow"], [None])
    assert time.monotonic() - start < 2
