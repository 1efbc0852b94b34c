"""`rayft ui`'s Sweep and Evaluate tabs in Chromium, on the session's Ray cluster: a search space built in the form,
launched as `rayft tune`, its trials table and metric-against-value plot filled as the trials report, then its
best trial launched again (`best_run.yaml`; checked running, then stopped) and served (`rayft serve --model` as a
Ray job: checked to be submitted on the best trial; serving itself is tested in tests/cluster/test_serve_ray.py);
a multiple-choice benchmark and similarity scores of a model."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.ui.test_ui_browser import run_row, wait_state

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "eval"
RATES = ["0.001", "0.01"]


@pytest.fixture
def page(browser, ui_url):
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(ui_url)
    page.locator('[id="field-train.learning_rate"]').wait_for()
    yield page
    assert not errors, errors
    page.close()


def test_sweep_from_the_form_then_its_best_trained_and_served(page, tiny_model, alpaca_file, workdir, tmp_path):
    shots = Path(os.environ.get("RAYFT_UI_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    storage, name = workdir / "ui-runs", "ui-sweep"
    page.fill(
        "#yaml",
        f"model: {{name_or_path: {tiny_model()}}}\nstage: {{name: sft}}\ntuning: {{method: lora}}\n"
        f"data: {{train: [{{path: {alpaca_file}, format: alpaca}}], max_seq_len: 64}}\n"
        "train: {max_steps: 4, logging_steps: 1, micro_batch_size: 2}\n"
        f"output: {{storage_path: {storage}, name: {name}}}\n",
    )
    page.locator("#summary.ok").wait_for()
    page.click("[data-tab=sweep]")
    page.click("#add-space")
    page.fill("#space-key-0", "train.learning_rate")
    page.select_option("#space-kind-0", "grid")
    page.fill("#space-values-0", ", ".join(RATES))
    page.locator("#space-values-0").press("Tab")
    for path, value in {"tune.search": "grid", "tune.scheduler": "fifo", "tune.num_samples": "1"}.items():
        field = page.locator(f'[id="field-{path}"]')
        field.select_option(value) if value in ("grid", "fifo") else (field.fill(value), field.press("Tab"))
    page.fill('[id="field-tune.metric"]', "train/loss")
    page.locator('[id="field-tune.metric"]').press("Tab")
    page.wait_for_function(  # the form's last change checked (the Configure tab, where the result shows, is hidden)
        "document.getElementById('yaml').value.includes('metric: train/loss') && summary.className === 'ok'"
    )
    assert "train.learning_rate:\n      grid:\n      - 0.001\n      - 0.01\n" in page.input_value("#yaml")
    page.click("#launch-sweep")
    page.locator("#trial-table tbody tr").nth(1).wait_for(timeout=240_000)
    page.locator("#sweep-state").filter(
        has_text=page.evaluate("t('sweep.finished', {n: 2, metric: 'train/loss', mode: 'min'})")
    ).wait_for(timeout=300_000)
    assert page.locator("#sweep-chart circle.trial").count() == 2
    rates = sorted(page.locator("#trial-table tbody td:nth-child(2)").all_inner_texts())
    assert rates == RATES
    page.screenshot(path=shots / "sweep.png", full_page=True)

    page.click("#train-best")
    page.locator("#best-result").filter(has_text=f"{storage / name}-best").wait_for(timeout=60_000)
    best_dir = page.evaluate("S.sweepView.best.run_dir")
    page.click("#serve-best")
    page.locator("#best-result").filter(has_text=re.compile("raysubmit_")).wait_for(timeout=60_000)
    page.click("[data-tab=runs]")
    wait_state(page, f"{name}-best", "RUNNING", timeout_s=120)
    run_row(page, f"{name}-best").get_by_role("button", name=page.evaluate("t('runs.stop')")).click()
    wait_state(page, f"{name}-best", "STOPPED", timeout_s=60)
    # the served job runs `rayft serve --model` on the best trial (this tiny model's 16-wide heads are more than
    # vLLM's CPU backend takes, so it ends there with that said: serving is tested in tests/cluster/test_serve_ray.py)
    serving = run_row(page, page.evaluate("t('kind.serve')"))
    serving.get_by_role("button", name=page.evaluate("t('runs.logs')")).click()
    page.locator("#logs").filter(has_text=f"rayft.cli serve --model {best_dir}").wait_for(timeout=60_000)
    if serving.get_by_role("button", name=page.evaluate("t('runs.stop')")).count():
        serving.get_by_role("button", name=page.evaluate("t('runs.stop')")).click()


def test_evaluate_a_model_on_a_benchmark_and_predictions(page, tiny_model, tmp_path):
    page.click("[data-tab=eval]")
    page.fill("#eval-model", str(tiny_model()))
    page.fill("#eval-task", str(EXAMPLES / "mmlu"))
    page.click("#eval-mc-go")
    total = page.locator("#eval-mc-out tr").filter(has_text=page.evaluate("t('eval.average')"))
    total.wait_for(timeout=120_000)
    assert re.search(r"\d+\.\d%", total.inner_text())
    page.fill("#eval-predictions", str(EXAMPLES / "predictions.jsonl"))
    page.click("#eval-sim-go")
    page.locator("#eval-sim-out td").filter(has_text="73.67").wait_for(timeout=60_000)  # rouge-1 of the example file
    page.screenshot(path=Path(os.environ.get("RAYFT_UI_SCREENSHOTS") or tmp_path) / "eval.png", full_page=True)
