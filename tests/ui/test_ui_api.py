"""`rayft ui`'s server without a browser: the locale files, the help texts, live checking, the LLaMA-Factory import,
sign-in, the refusal to listen beyond this machine without it, and the runs table built from run folders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from rayft.cli import main
from rayft.ui import forms
from rayft.ui.app import LOCALES, create_app
from rayft.ui.runs import Board, metrics, run_row
from rayft_core.config import RunConfig

STATIC = Path(forms.__file__).parent / "static"


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return TestClient(create_app(Board("http://127.0.0.1:1", tmp_path)))  # nothing here reaches the job server


def test_every_locale_has_every_key_the_page_uses():
    locales = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in LOCALES.glob("*.json")}
    assert set(locales) >= {"en", "zh", "ru"}
    keys = set(locales["en"])
    for code, text in locales.items():
        assert set(text) == keys, f"{code}.json: missing {keys - set(text)}, extra {set(text) - keys}"
        assert all(isinstance(v, str) and v for v in text.values()), code
    page = (STATIC / "index.html").read_text()
    script = "".join(p.read_text() for p in STATIC.glob("*.js"))
    used = set(re.findall(r'data-i18n="([^"]+)"', page)) | set(re.findall(r'\bt\("([^"]+)"', script))
    used |= {f"field.{p}" for section in forms.FORM_FIELDS.values() for p in section}
    used |= {f"field.{p}" for p in forms.SWEEP_FIELDS} | {f"kind.{k}" for k in ("run", "sweep", "serve")}
    used |= {f"section.{s}" for s in forms.FORM_FIELDS} | {f"dataset.{n}" for n in forms.DATASET_FIELDS}
    used |= {f"state.{s}" for s in ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED", "FINISHED", "INCOMPLETE")}
    assert used <= keys, f"used by the page, in no locale: {sorted(used - keys)}"
    # a placeholder a translation drops would print nothing where the English prints a value
    for key, english in locales["en"].items():
        for code, text in locales.items():
            assert set(re.findall(r"\{\w+\}", text[key])) == set(re.findall(r"\{\w+\}", english)), (code, key)


def test_every_help_text_is_the_schema_description(client: TestClient):
    described = client.get("/api/fields").json()
    assert described["fields"]["train.learning_rate"]["description"] == (
        RunConfig.model_fields["train"].annotation.model_fields["learning_rate"].description
    )
    assert described["fields"]["train.learning_rate"]["default"] == 1e-4
    assert "lora" in described["fields"]["tuning.method"]["choices"]
    assert described["fields"]["stage.name"]["type"] == "choice"
    assert described["fields"]["data.train.format"]["choices"] == ["alpaca", "sharegpt", "openai", "text", "tokenized"]
    assert all(f["description"] for f in described["fields"].values())


def test_check_gives_the_problems_of_config_validate_by_key(client: TestClient):
    result = client.post(
        "/api/check",
        json={
            "yaml": "model: {name_or_path: m}\ndata: {train: [{path: a.json}]}\n"
            "train: {max_step: 3, learning_rate: fast}\n"
        },
    ).json()
    problems = {p["path"]: p["message"] for p in result["problems"]}
    assert "did you mean 'max_steps'" in problems["train.max_step"]
    assert "train.learning_rate" in problems
    assert result["summary"] is None
    starter = client.post("/api/check", json={"config": forms.STARTER}).json()
    assert starter["problems"][0]["path"] == "data.train.0"  # list items by index, so the page finds the row
    good = client.post(
        "/api/check", json={"config": {"model": {"name_or_path": "m"}, "data": {"train": [{"path": "a"}]}}}
    )
    assert good.json()["problems"] == [] and good.json()["yaml"].startswith("model:")
    assert client.post("/api/check", json={"yaml": "a: [1"}).json()["problems"][0]["message"].startswith("not YAML")


def test_a_llamafactory_yaml_is_translated_with_its_notes(client: TestClient):
    lf = "model_name_or_path: m\nstage: sft\ndo_train: true\nfinetuning_type: lora\nlora_rank: 16\ndataset: alpaca_en\n"
    result = client.post("/api/import-llamafactory", json={"yaml": lf}).json()
    assert result["config"]["tuning"]["rank"] == 16 and "rank: 16" in result["yaml"]
    refused = client.post("/api/import-llamafactory", json={"yaml": "model: {name_or_path: m}\n"})
    assert refused.status_code == 400 and "not a LLaMA-Factory" in refused.json()["error"]


def test_a_password_or_a_token_is_asked_for_every_request(tmp_path: Path):
    board = Board("http://127.0.0.1:1", tmp_path)
    with TestClient(create_app(board, basic="ann:secret")) as c:
        refused = c.get("/api/fields")
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
        assert c.get("/api/fields", auth=("ann", "secret")).status_code == 200
        assert c.get("/api/fields", auth=("ann", "wrong")).status_code == 401
    with TestClient(create_app(board, token="t0ken")) as c:
        assert c.get("/").status_code == 401
        assert c.get("/api/fields", headers={"authorization": "Bearer t0ken"}).status_code == 200
        assert c.get("/?token=t0ken").status_code == 200  # and the browser keeps it
        assert c.get("/api/fields").status_code == 200
        c.cookies.clear()
        assert c.get("/?token=nope").status_code == 401


def test_ui_refuses_to_listen_beyond_this_machine_without_sign_in():
    result = CliRunner().invoke(main, ["ui", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "--auth USER:PASSWORD or --token" in result.output
    result = CliRunner().invoke(main, ["ui", "--host", "0.0.0.0", "--auth", "nopassword"])
    assert result.exit_code == 2 and "USER:PASSWORD" in result.output


def test_a_run_folder_from_the_command_line_is_a_row(tmp_path: Path):
    run = tmp_path / "cli-run"
    run.mkdir()
    (run / "rayft_run.yaml").write_text("model: {name_or_path: m}\n")
    lines = [
        {"step": 1, "train/loss": 2.5, "perf/tokens_per_s": 90.0},
        {"step": 2, "train/loss": 2.0, "eval/loss": 2.2},
    ]
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps(m) + "\n" for m in lines) + '{"step": 3, "tra'
    )  # being written
    assert [m["step"] for m in metrics(str(run))] == [1, 2]
    row = run_row(str(run), "run", None)
    assert (row["name"], row["state"], row["step"], row["loss"], row["job_id"]) == (
        "cli-run",
        "INCOMPLETE",
        2,
        2.0,
        None,
    )
    assert row["resumable"]
    (run / "summary.json").write_text("{}")
    assert run_row(str(run), "run", None)["state"] == "FINISHED"


def test_check_everything_gives_the_checks_of_rayft_train(client: TestClient, tiny_model, alpaca_file, tmp_path):
    config = {
        "model": {"name_or_path": str(tiny_model())},
        "data": {"train": [{"path": str(alpaca_file), "format": "alpaca"}], "max_seq_len": 64},
        "tuning": {"method": "lora", "target": ["q_proj", "no_such_proj"]},
        "output": {"storage_path": str(tmp_path), "name": "r"},
    }
    refused = client.post("/api/validate", json={"config": config})
    assert refused.status_code == 400 and "the run cannot start" in refused.json()["error"]
    assert any("no_such_proj" in p["message"] or "no_such_proj" in p["path"] for p in refused.json()["problems"])
    config["tuning"]["target"] = "all"
    assert client.post("/api/validate", json={"config": config}).json()["problems"] == []


def test_dataset_names_come_from_dataset_info(client: TestClient):
    examples = Path(__file__).resolve().parents[2] / "examples" / "data"
    names = client.get("/api/datasets", params={"dir": str(examples)}).json()
    assert names and names == sorted(json.loads((examples / "dataset_info.json").read_text()))
    assert client.get("/api/datasets", params={"dir": "/no/such/dir"}).json() == []


def test_a_remote_cluster_preview_says_it_needs_ray_address(tiny_model, alpaca_file, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    client = TestClient(create_app(Board("http://127.0.0.1:1", tmp_path, remote=True)))
    config = {"model": {"name_or_path": str(tiny_model())}, "data": {"train": [{"path": str(alpaca_file)}]}}
    refused = client.post("/api/preview", json={"config": config})
    assert refused.status_code == 400 and "RAY_ADDRESS" in refused.json()["error"]


def test_a_request_missing_a_field_is_a_400_naming_it(client: TestClient):
    for path, field in (("/api/stop", "job_id"), ("/api/export", "run_dir"), ("/api/eval/similarity", "predictions")):
        answer = client.post(path, json={})
        assert answer.status_code == 400 and answer.json()["error"].startswith(f"{field}: required"), answer.text
