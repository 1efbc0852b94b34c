"""`rayft ui` in Chromium, end to end on the session's Ray cluster: a tiny LoRA SFT run configured in the form from
its defaults (the YAML checked live), its data previewed, launched as a Ray job, its loss curve watched as it gains
points, stopped and resumed from its checkpoint, then chatted with and exported; the page in Chinese and Russian.
Screenshots of every tab go to $RAYFT_UI_SCREENSHOTS (docs/ui/ is made this way), else the test's own folder."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from rayft.ui.forms import describe_fields

STEPS, SAVE_EVERY = 60, 10


def field(page, path: str):
    return page.locator(f'[id="field-{path}"]')


def fill(page, path: str, value: str) -> None:
    field(page, path).fill(value)
    field(page, path).press("Tab")  # the change event: the form updates the YAML and it is checked


def run_row(page, name: str):
    return page.locator("#run-table tbody tr", has_text=name)


def wait_state(page, name: str, *states: str, timeout_s: float = 240) -> None:
    from playwright.sync_api import TimeoutError

    words = "|".join(re.escape(page.evaluate(f"t('state.{s}')")) for s in states)
    try:
        run_row(page, name).locator("td.state").filter(has_text=re.compile(f"^({words})$")).wait_for(
            timeout=timeout_s * 1000
        )
    except TimeoutError:  # say where the runs stood, and why a failed one failed
        failed = page.eval_on_selector_all("#run-table td.state.FAILED", "tds => tds.map(td => td.title)")
        raise AssertionError(f"{name} not {states}:\n{page.inner_text('#run-table')}\n{failed}") from None


def test_configure_launch_watch_stop_resume_chat_export(browser, ui_url, tiny_model, alpaca_file, workdir, tmp_path):
    shots = Path(os.environ.get("RAYFT_UI_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    storage, name = workdir / "ui-runs", "ui-sft"
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(ui_url)

    # Configure: the schema's own help text; the starter's one problem (no data yet) shown by its field
    help_text = describe_fields()["fields"]["train.learning_rate"]["description"]
    assert field(page, "train.learning_rate").get_attribute("title") == help_text
    page.locator("#configure .field small", has_text=help_text).wait_for()
    page.locator('[id="err-data.train"]').filter(has_text="give exactly one of").wait_for()
    fill(page, "model.name_or_path", str(tiny_model()))
    page.click("#load-model")
    page.locator("#model-facts").filter(has_text="LlamaForCausalLM").wait_for()
    fill(page, "data.train.0.path", str(alpaca_file))
    for path, value in {
        "data.max_seq_len": "64",
        "train.max_steps": str(STEPS),
        "train.logging_steps": "1",
        "train.micro_batch_size": "2",
        "output.storage_path": str(storage),
        "output.name": name,
    }.items():
        fill(page, path, value)
    fill(page, "train.learning_rate", "fast")  # a bad value: its error appears beside it
    page.locator('[id="err-train.learning_rate"]').filter(has_text=re.compile(".+")).wait_for()
    fill(page, "train.learning_rate", "0.001")
    # the form's change reaches the YAML once the server has checked it: wait for it before editing the YAML
    page.wait_for_function("document.getElementById('yaml').value.includes('learning_rate: 0.001')")
    # keys the form does not show are written in the YAML, and the form follows it
    page.fill("#yaml", page.input_value("#yaml") + f"checkpoint:\n  save_steps: {SAVE_EVERY}\n")
    page.locator("#summary.ok").wait_for()
    page.click("#validate")  # everything `rayft config validate` checks: the model, targets, data, output folder
    page.locator("#launch-result").filter(has_text=page.evaluate("t('yaml.checked')")).wait_for(timeout=60_000)
    assert field(page, "train.max_steps").input_value() == str(STEPS)
    assert f"save_steps: {SAVE_EVERY}" in page.input_value("#yaml") and f"name: {name}" in page.input_value("#yaml")
    page.screenshot(path=shots / "configure.png", full_page=True)

    # Data: the rows rendered with their trained-on tokens marked, counts and lengths
    page.click("[data-tab=data]")
    page.click("#preview")
    page.locator("#preview-out mark").first.wait_for(timeout=120_000)
    assert page.locator("#preview-out table tr").count() == 2  # a header and the one dataset
    page.screenshot(path=shots / "data.png", full_page=True)

    # Launch: a Ray job; the runs table and the curve follow it live
    page.click("[data-tab=configure]")
    page.click("#launch")  # the checks of `rayft train`, then the job's submission (its folder uploaded)
    page.wait_for_function(
        "!['', t('run.launching')].includes(document.getElementById('launch-result').textContent)", timeout=180_000
    )
    assert "raysubmit_" in page.inner_text("#launch-result"), page.inner_text("#launch-result")
    page.locator("#runs.tab.active").wait_for()
    wait_state(page, name, "RUNNING")
    page.wait_for_function("document.querySelectorAll('#chart circle.point').length >= 3", timeout=240_000)
    first_points = page.locator("#chart circle.point").count()
    page.wait_for_function(f"document.querySelectorAll('#chart circle.point').length > {first_points}", timeout=60_000)
    page.screenshot(path=shots / "runs.png", full_page=True)

    # Stop once a checkpoint is saved, then resume from it
    page.wait_for_function(
        f"[...document.querySelectorAll('#run-table tbody td:nth-child(4)')].some(td => +td.textContent > {SAVE_EVERY + 1})",
        timeout=120_000,
    )
    run_row(page, name).get_by_role("button", name=page.evaluate("t('runs.stop')")).click()
    wait_state(page, name, "STOPPED")
    run_row(page, name).get_by_role("button", name=page.evaluate("t('runs.resume')")).click()
    wait_state(page, name, "SUCCEEDED", timeout_s=300)
    output = storage / name
    events = [json.loads(line) for line in (output / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "resumed" and e["step"] >= SAVE_EVERY for e in events), events
    summary = json.loads((output / "summary.json").read_text())
    assert summary["resumed_from_step"] >= SAVE_EVERY and summary["resumed_from_step"] + summary["steps"] == STEPS
    run_row(page, name).get_by_role("button", name=page.evaluate("t('runs.logs')")).click()
    page.locator("#logs").filter(has_text="finished").wait_for(timeout=30_000)

    # Chat with the result, streamed
    page.click("[data-tab=chat]")
    page.fill("#chat-model", str(output))
    page.fill("#chat-model-b", str(tiny_model()))  # and the base beside it, answering the same turn
    page.fill("#chat-input", "what is two plus two?")
    page.click("#chat-form button.primary")
    for side in "ab":
        page.locator(f"#conversation-{side} .assistant").filter(has_text=re.compile(r"\S")).wait_for(timeout=120_000)
    page.screenshot(path=shots / "chat.png", full_page=True)

    # Export it as one model
    page.click("[data-tab=export]")
    exported = tmp_path / "exported"
    page.fill("#export-run", str(output))
    page.fill("#export-output", str(exported))
    page.click("#export-go")
    page.locator("#export-result").filter(has_text=str(exported)).wait_for(timeout=120_000)
    assert (exported / "config.json").exists() and list(exported.glob("*.safetensors"))
    page.screenshot(path=shots / "export.png", full_page=True)

    # Chinese and Russian, from their locale files
    for code, configure in (("zh", "配置"), ("ru", "Настройка")):
        page.select_option("#language", code)
        page.locator("[data-tab=configure]").filter(has_text=configure).wait_for()
        page.click("[data-tab=runs]")
        page.screenshot(path=shots / f"runs-{code}.png", full_page=True)
    assert not errors, errors
