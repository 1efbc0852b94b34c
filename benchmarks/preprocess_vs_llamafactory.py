"""/work/main/.venv/bin/python benchmarks/preprocess_vs_llamafactory.py [--rows 100000] [--wait-idle [MAX_S]] [--skip-llamafactory] [--floor-rows N]

SFT preprocessing throughput, rayft (`rayft data prepare`) vs LLaMA-Factory 0.9.5, one after the other.

Data: alpaca_en_demo (999 rows) expanded to --rows rows that are all different: row i is demo row
i % 999 with " (request i)" appended to its instruction and " (answer i)" to its output, so neither a
cache nor de-duplication can pretend. It is written once as JSONL, with a dataset_info.json naming it.
Tokenizer: Qwen2.5 (/work/shared/fixtures/tokenizers/qwen2.5-instruct, vocab 151,665), saved beside a tiny
random Qwen2 (hidden 64, 2 layers) that neither tool trains: both only need a model directory.
Both render with LLaMA-Factory's `qwen` template (rayft: `model.template: qwen`, its own copy of it, same
text and default system prompt), SFT stage (prompt tokens masked with -100), cutoff 1024, no packing.

LLaMA-Factory: `llamafactory-cli train` (stage sft, do_train, template qwen, cutoff_len 1024,
preprocessing_num_workers 2, overwrite_cache, a fresh HF_DATASETS_CACHE, tokenized_path). LLaMA-Factory
0.9.5 does NOT exit after saving the tokenized set: it goes on to load the model and train. So its run is
timed up to the log line "Tokenized dataset is saved at" (printed after save_to_disk returns), and the
process tree is then killed: everything after that line is not preprocessing.
rayft: `rayft data prepare run.yaml -o DIR` (a local Ray cluster started by the command itself; Parquet
plus rayft_data.json), timed to process exit, Ray's start-up and shut-down included.

Each command is measured as a whole process: wall time; peak of the summed RSS (every 0.5 s) and PSS
(every 2 s) over the command's process, its descendants and every process of its session, which the
command starts anew, so Ray's GCS/raylet/workers count even if reparented (RSS double-counts shared pages
such as Ray's /dev/shm object store, PSS does not); CPU seconds of the tree; CPU seconds of all other
processes meanwhile (the machine is shared: contention shows there). Every output line is logged with its
time since start, which gives the phases (Ray start-up, tokenizing, writing). Both outputs are checked to
hold --rows rows, and their token totals are compared (same template -> nearly the same count).
Last, the tokenizer floor: the CPU seconds of rendering and of the bare Rust tokenizer over the same rows in
this one process (see tokenizer_floor; over the first --floor-rows rows, scaled), the cost neither tool can go
below, and each tool's wall time as a multiple of it.

LLaMA-Factory's own venv, /tmp/lf-venv, is made when absent, as benchmarks/sft_lora_vs_llamafactory.py
does: torch==2.13.0 (CPU wheel), llamafactory==0.9.5 --no-deps, then its requirements but
torch/torchaudio/torchvision constrained to torch==2.13.0, and an empty stub `torchaudio` package (no CPU
torchaudio exists for torch 2.13; LLaMA-Factory imports it at start-up for audio models only). It must
not run with cwd /tmp (Ray's /tmp/ray would pass for the `ray` package).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import psutil
import yaml
from _peer import (
    LF_VENV,
    TOKENIZER,
    add_idle_arguments,
    busy_cpu_s,
    ensure_lf_venv,
    fresh_dir,
    offline_env,
    process_tree,
    sample_tree,
    spawn,
    terminate_leftovers,
    wait_idle,
)

ROOT = Path(__file__).resolve().parents[1]
RAYFT = ROOT / ".venv" / "bin" / "rayft"
DEMO = Path("/work/shared/data/alpaca_en_demo.json")
WORK = Path("/tmp/preprocess-bench")
RESULTS = ROOT / "benchmarks" / "results"
MAX_LEN = 1024
LF_SAVED = "Tokenized dataset is saved at"
# Phase markers, by the first time (since start) a log line matching them appears.
LF_PHASES = {
    "dataset_read": r"Loading dataset|Generating train split",
    "convert": r"Converting format of dataset",
    "tokenize": r"Running tokenizer on dataset",
    "save": r"Saving the dataset",
    "saved": LF_SAVED,
}
RAYFT_PHASES = {
    "ray_started": r"started a local Ray cluster|Started a local Ray instance|Connecting to existing Ray",
    "data_start": r"Starting execution of Dataset|Executing DAG",
    "data_end": r"Execution finished|Dataset .* execution finished",
    "prepared": r"^prepared [\d,]+ rows",
}


def build_model(out: Path) -> None:
    """A tiny random Qwen2 saved with the Qwen2.5 tokenizer files copied verbatim (only its directory is used)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rayft_core.model.families import tiny_config

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    torch.manual_seed(0)
    config = tiny_config(
        "qwen2",
        len(tok),
        hidden_size=64,
        num_layers=2,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / name, out / name)


def write_data(rows: int, out: Path) -> Path:
    """`rows` all-different alpaca rows as JSONL, plus a dataset_info.json naming them `bench`."""
    demo = json.loads(DEMO.read_text())
    out.mkdir(parents=True, exist_ok=True)
    path = out / "bench.jsonl"
    with open(path, "w") as f:
        for i in range(rows):
            r = demo[i % len(demo)]
            f.write(
                json.dumps(
                    {
                        "instruction": f"{r['instruction']} (request {i})",
                        "input": r.get("input", ""),
                        "output": f"{r['output']} (answer {i})",
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
    (out / "dataset_info.json").write_text(json.dumps({"bench": {"file_name": path.name}}, indent=1))
    return path


def measure(
    cmd: list[str], cwd: Path, log: Path, env: dict[str, str], phases: dict[str, str], stop_at: str | None = None
) -> dict:
    """Run cmd to exit (or until a log line contains `stop_at`, then kill its session): wall time, peak
    RSS/PSS of its process tree, CPU seconds, and the time of the first line matching each phase pattern."""
    env = offline_env(env)
    marks: dict[str, float] = {}
    stopped = threading.Event()
    peak_rss = peak_pss = 0
    cpu: dict[tuple[int, float], float] = {}  # (pid, start time) -> last seen user + sys seconds
    load0, busy0, t0 = os.getloadavg()[0], busy_cpu_s(), time.perf_counter()
    proc = spawn(cmd, cwd, env)

    def read() -> None:
        with open(log, "w") as f:
            for line in proc.stdout:
                t = time.perf_counter() - t0
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                f.write(f"[{t:8.2f}s] {line}\n")
                marks.setdefault("first_output", t)
                for name, pattern in phases.items():
                    if name not in marks and re.search(pattern, line):
                        marks[name] = t
                if stop_at and stop_at in line and not stopped.is_set():
                    marks["stopped_at"] = t
                    stopped.set()
                    f.flush()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    root = psutil.Process(proc.pid)
    polls = 0
    while proc.poll() is None and not stopped.is_set():
        rss, pss = sample_tree(process_tree(root, proc.pid), cpu, full=polls % 4 == 0)  # PSS every 2 s only
        peak_rss, peak_pss, polls = max(peak_rss, rss), max(peak_pss, pss), polls + 1
        stopped.wait(0.5)
    if stopped.is_set():  # the work is done; what follows (model loading, training) is not measured
        wall = marks["stopped_at"]
        for p in process_tree(root, proc.pid):
            try:
                c = p.cpu_times()
                cpu[(p.pid, p.create_time())] = c.user + c.system
            except psutil.Error:
                pass
        busy = busy_cpu_s() - busy0
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait()
    else:
        wall, busy = time.perf_counter() - t0, busy_cpu_s() - busy0
    reader.join(timeout=10)
    leftovers = terminate_leftovers(proc.pid)
    return {
        "rc": 0 if stopped.is_set() else proc.returncode,
        "stopped_at_log_line": stopped.is_set(),
        "wall_s": wall,
        "peak_rss_gb": peak_rss / 1e9,
        "peak_pss_gb": peak_pss / 1e9,
        "cpu_s": sum(cpu.values()),
        "other_cpu_s": busy - sum(cpu.values()),
        "load1_at_start": load0,
        "phases_s": marks,
        "leftover_processes": leftovers,
        "log": str(log),
    }


def run_llamafactory(model: Path, data_dir: Path, rows: int) -> dict:
    work = WORK / "lf"
    fresh_dir(work)
    out = work / "tokenized"
    cfg = {
        "model_name_or_path": str(model),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_target": "all",
        "dataset": "bench",
        "dataset_dir": str(data_dir),
        "template": "qwen",
        "cutoff_len": MAX_LEN,
        "overwrite_cache": True,
        "preprocessing_num_workers": 2,
        "tokenized_path": str(out),
        "output_dir": str(work / "out"),
        "overwrite_output_dir": True,
        "report_to": "none",
        "per_device_train_batch_size": 1,
        "num_train_epochs": 1.0,
        "bf16": False,
        "fp16": False,
        "seed": 42,
    }
    (work / "train.yaml").write_text(yaml.safe_dump(cfg))
    env = {"HF_DATASETS_CACHE": str(work / "hf-datasets-cache")}  # fresh: no cached json/arrow from earlier runs
    res = measure(
        [str(LF_VENV / "bin" / "llamafactory-cli"), "train", "train.yaml"],
        work,
        work / "log.txt",
        env,
        LF_PHASES,
        stop_at=LF_SAVED,
    )
    if res["rc"] != 0 or not res["stopped_at_log_line"]:
        return {**res, "rc": res["rc"] or 1, "error": "did not reach the line " + repr(LF_SAVED)}
    import pyarrow as pa
    import pyarrow.compute as pc

    n = tokens = 0
    for f in sorted((out / "train").glob("*.arrow")):
        with pa.memory_map(str(f)) as src:
            t = pa.ipc.open_stream(src).read_all()
        n += t.num_rows
        tokens += pc.sum(pc.list_value_length(t["input_ids"])).as_py() or 0
    return {**res, "rows_out": n, "tokens_out": tokens, "stage_elapsed_s": _tqdm_elapsed(Path(res["log"]))}


def _tqdm_elapsed(log: Path) -> dict[str, float]:
    """LLaMA-Factory's (datasets') progress bars: each stage's own elapsed time, from its last 100% line."""
    out = {}
    for line in log.read_text().splitlines():
        m = re.search(r"\] ([A-Z][\w ]+?)(?: \([^)]*\))?: +100%.*?\[(?:(\d+):)?(\d+):(\d+)<", line)
        if m:
            out[m.group(1)] = int(m.group(2) or 0) * 3600 + int(m.group(3)) * 60 + int(m.group(4))
    return out


def run_rayft(model: Path, data: Path, rows: int) -> dict:
    work = WORK / "rayft"
    fresh_dir(work)
    out = work / "prepared"
    cfg = {
        "model": {"name_or_path": str(model), "template": "qwen"},
        "stage": {"name": "sft"},
        "data": {"train": [{"path": str(data), "format": "alpaca"}], "max_seq_len": MAX_LEN, "packing": False},
    }
    (work / "run.yaml").write_text(yaml.safe_dump(cfg))
    res = measure([str(RAYFT), "data", "prepare", "run.yaml", "-o", str(out)], work, work / "log.txt", {}, RAYFT_PHASES)
    if res["rc"] != 0:
        return res
    import pyarrow.parquet as pq

    found = sorted(out.glob("*rayft_data.json"))  # the manifest: rayft_data.json, lately _rayft_data.json
    manifest = json.loads(found[0].read_text()) if found else {}
    n = sum(pq.ParquetFile(f).metadata.num_rows for f in out.rglob("*.parquet"))
    return {
        **res,
        "rows_out": n,
        "manifest_rows": manifest.get("rows"),
        "tokens_out": manifest.get("tokens"),
        "data_exec_s": _ray_data_exec_s(Path(res["log"])),
        "tokenize_op": _tokenize_op(Path(res["log"])),
    }


def _tokenize_op(log: Path) -> dict | None:
    """The final metrics of the last operator (MapBatches(_encode)) of the first Ray Data execution, from its
    own log under /tmp/ray/session_*/logs/ray-data: how many tasks did the tokenizing, and for how long."""
    m = re.search(r"Starting execution of Dataset (\S+)\. Full logs are in (\S+)", log.read_text())
    if not m:
        return None
    try:
        last = [
            ln
            for ln in (Path(m.group(2)) / f"ray-data-{m.group(1)}.log").read_text().splitlines()
            if ln.startswith("{")
        ][-1]  # a repr, not quite a literal: pick the figures out
    except (OSError, IndexError):
        return None
    out = {}
    for key in ("num_tasks_finished", "rows_inputs_of_submitted_tasks", "function_body_time_s"):
        v = re.search(rf"'{key}': ([\d.]+)", last)
        out[key] = float(v.group(1)) if v else None
    v = re.search(r"'op_task_duration_stats': \{[^}]*'max': ([\d.]+)", last)
    out["task_s_max"] = float(v.group(1)) if v else None
    return out


def _ray_data_exec_s(log: Path) -> list[float]:
    """Ray Data's own 'execution finished in X seconds' figures, one per dataset execution, in order."""
    return [float(x) for x in re.findall(r"[Ee]xecution finished in ([\d.]+) seconds", log.read_text())]


def tokenizer_floor(model: Path, data: Path, sample: int) -> dict:
    """The CPU seconds that no preprocessing of this data can avoid: rayft's rendering of every row with the
    template, then the bare Rust tokenizer over the rendered texts (`encode_batch` in this one process, 256
    rows a call, with and without the character offsets a label mask needs). LLaMA-Factory runs the same
    Rust tokenizer over the same text, so this bounds both tools: on N cores neither can preprocess in less
    wall time than encode_no_offsets_cpu_s / N. Measured on the first `sample` rows and scaled to all of them
    (the rows are alike: row i is demo row i % 999 numbered), which `scaled_from` says."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread: CPU seconds, not a parallel speed-up
    from rayft_core.config import DatasetSpec, ModelConfig
    from rayft_core.data.formats import align_row
    from rayft_core.data.tokenize import split_turns
    from rayft_core.model.loader import load_tokenizer
    from rayft_core.stage_config import section

    tok = load_tokenizer(ModelConfig(name_or_path=str(model), template="qwen"))
    spec = DatasetSpec(path=str(data), format="alpaca")
    with data.open() as f:
        total = sum(1 for _ in f)
    with data.open() as f:
        lines = [line for _, line in zip(range(sample), f)]
    messages = [align_row(json.loads(line), spec, section("sft"))["messages"] for line in lines]
    t = time.process_time()
    texts = ["".join(p + r for p, r in split_turns(tok, m)) for m in messages]
    render = time.process_time() - t
    rust, tokens = tok._tokenizer, 0
    t = time.process_time()
    for i in range(0, len(texts), 256):
        tokens += sum(len(e.ids) for e in rust.encode_batch_fast(texts[i : i + 256], add_special_tokens=False))
    plain = time.process_time() - t
    t = time.process_time()
    for i in range(0, len(texts), 256):
        rust.encode_batch(texts[i : i + 256], add_special_tokens=False)
    with_offsets = time.process_time() - t
    scale = total / len(texts)
    return {
        "rows": total,
        "scaled_from": len(texts),
        "tokens": round(tokens * scale),
        "render_cpu_s": round(render * scale, 1),
        "encode_no_offsets_cpu_s": round(plain * scale, 1),
        "encode_with_offsets_cpu_s": round(with_offsets * scale, 1),
    }


def print_floor(floor: dict, results: dict[str, dict]) -> None:
    cores = os.cpu_count() or 1
    sampled = f", measured on {floor['scaled_from']:,} and scaled" if floor["scaled_from"] != floor["rows"] else ""
    print(
        f"\ntokenizer floor ({floor['rows']:,} rows, {floor['tokens']:,} tokens, CPU-s in one process{sampled}): render "
        f"{floor['render_cpu_s']}, encode {floor['encode_no_offsets_cpu_s']} ({floor['encode_with_offsets_cpu_s']} "
        f"with offsets): at least {floor['encode_no_offsets_cpu_s'] / cores:.1f} s of wall time on {cores} cores"
    )
    wall_floor = floor["encode_no_offsets_cpu_s"] / cores
    for name, r in results.items():
        if r.get("rc") == 0:
            print(f"{name}: {r['wall_s'] / wall_floor:.2f}x the floor's wall time")
    lf = results.get("llamafactory", {})
    if lf.get("rc") == 0:
        print(
            f"2x LLaMA-Factory's throughput = {lf['wall_s'] / 2:.1f} s for everything, start-up and shut-down "
            f"included; the encode alone leaves {lf['wall_s'] / 2 - floor['encode_no_offsets_cpu_s'] / cores:.1f} s"
        )


def print_table(rows: int, results: dict[str, dict]) -> None:
    lf = results.get("llamafactory") if results.get("llamafactory", {}).get("rc") == 0 else None
    rf = results.get("rayft") if results.get("rayft", {}).get("rc") == 0 else None
    for r in (lf, rf):
        if r:
            r["rows_per_s"] = rows / r["wall_s"]
    fields = [
        ("rows_out", "rows written", "{:,}"),
        ("tokens_out", "tokens written", "{:,}"),
        ("wall_s", "wall time (s)", "{:.1f}"),
        ("rows_per_s", "rows/s (whole process)", "{:,.0f}"),
        ("peak_rss_gb", "peak RSS, tree sum (GB)", "{:.2f}"),
        ("peak_pss_gb", "peak PSS, tree sum (GB)", "{:.2f}"),
        ("cpu_s", "CPU time of tree (s)", "{:.0f}"),
        ("other_cpu_s", "CPU-s of other processes", "{:.0f}"),
        ("load1_at_start", "load avg at start", "{:.2f}"),
    ]
    ratio_of = {"rows_per_s", "wall_s", "peak_rss_gb", "peak_pss_gb", "cpu_s"}
    print(f"\n{rows:,} rows{'':14}{'LLaMA-Factory':>16}{'rayft':>16}{'rayft/LF':>12}")
    for key, label, fmt in fields:
        a = lf.get(key) if lf else None
        b = rf.get(key) if rf else None
        cell = lambda v: f"{fmt.format(v) if v is not None else '-':>16}"  # noqa: E731
        ratio = f"{b / a:.2f}x" if key in ratio_of and a and b else ""
        print(f"{label:27}{cell(a)}{cell(b)}{ratio:>12}")
    for name, r in (("LLaMA-Factory", lf), ("rayft", rf)):
        if r:
            ph = ", ".join(f"{k} {v:.1f}" for k, v in r["phases_s"].items()) + f", exit/killed {r['wall_s']:.1f}"
            extra = f"; Ray Data executions {r['data_exec_s']} s" if r.get("data_exec_s") else ""
            if r.get("tokenize_op"):
                op = r["tokenize_op"]
                extra += (
                    f"; tokenize operator (Ray Data's own figures): {op['num_tasks_finished']:.0f} task(s), "
                    f"{op['function_body_time_s']:.1f} s in _encode in all, longest task {op['task_s_max']:.1f} s"
                )
            extra += (
                "; progress bars' own elapsed: " + ", ".join(f"{k} {v} s" for k, v in r["stage_elapsed_s"].items())
                if r.get("stage_elapsed_s")
                else ""
            )
            print(f"phases of {name} (s since start, first matching log line): {ph}{extra}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[2])
    ap.add_argument("--rows", type=int, default=100_000, help="rows of all-different alpaca data")
    ap.add_argument("--skip-llamafactory", action="store_true", help="only the rayft run (no ratios)")
    ap.add_argument(
        "--floor-rows", type=int, default=100_000, help="rows the tokenizer floor is measured on (then scaled)"
    )
    add_idle_arguments(ap, "side")
    args = ap.parse_args()
    if not (TOKENIZER / "tokenizer.json").is_file():
        print(f"skipped: the Qwen2.5 tokenizer is not at {TOKENIZER}")
        return
    WORK.mkdir(parents=True, exist_ok=True)
    model, data_dir = WORK / "model", WORK / f"data-{args.rows}"
    if not (model / "config.json").is_file():
        build_model(model)
    t = time.perf_counter()
    data = write_data(args.rows, data_dir)
    print(
        f"data: {args.rows:,} all-different alpaca rows in {data} ({data.stat().st_size / 1e6:.0f} MB, "
        f"written in {time.perf_counter() - t:.1f} s); model dir {model}",
        flush=True,
    )
    results: dict[str, dict] = {}
    if not args.skip_llamafactory:
        ensure_lf_venv(WORK)
        idle = wait_idle(args.wait_idle, args.idle_load)
        print(f"running LLaMA-Factory (load {os.getloadavg()[0]:.2f}) ...", flush=True)
        results["llamafactory"] = {**run_llamafactory(model, data_dir, args.rows), "idle_wait": idle}
        print(json.dumps(results["llamafactory"]), flush=True)
    idle = wait_idle(args.wait_idle, args.idle_load)
    print(f"running rayft (load {os.getloadavg()[0]:.2f}) ...", flush=True)
    results["rayft"] = {**run_rayft(model, data, args.rows), "idle_wait": idle}
    print(json.dumps(results["rayft"]), flush=True)
    for name, r in results.items():
        if r["rc"] != 0:
            print(f"{name} FAILED (rc {r['rc']}): see {r['log']}")
        elif r.get("rows_out") != args.rows:
            print(f"{name}: wrote {r.get('rows_out')} rows, not {args.rows}")
    print_table(args.rows, results)
    floor = tokenizer_floor(
        model, data, min(args.floor_rows, args.rows)
    )  # last: in this process, after both runs have ended
    print_floor(floor, results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"preprocess_vs_llamafactory-{args.rows}.json"
    out.write_text(
        json.dumps(
            {
                "rows": args.rows,
                "max_seq_len": MAX_LEN,
                "template": "qwen (both)",
                "machine_cpus": os.cpu_count(),
                "results": results,
                "tokenizer_floor": floor,
            },
            indent=2,
        )
    )
    print(f"results: {out}")


if __name__ == "__main__":
    main()
