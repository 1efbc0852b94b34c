"""Launch a run on Ray Train: checks on the driver, the data on Ray Data, DeepSpeed on the workers.

    rayft train examples/sft_lora.yaml train.learning_rate=2e-4
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig as RayRunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.train.v2.api.callback import UserCallback

from rayft.checks import check_run
from rayft.cluster import connect
from rayft.data import build_run_data
from rayft_core.config import RunConfig, dump_config
from rayft_core.train.loop import TrainPlan
from rayft_core.train.outputs import CONFIG_FILE, format_summary, read_summary

logger = logging.getLogger(__name__)


def _train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs in every Ray Train worker: the engine's loop fed by this worker's shards."""
    import transformers

    from rayft.data import StreamChecker
    from rayft_core.model.loader import load_tokenizer
    from rayft_core.train.loop import train_worker
    from rayft_core.train.stages import STAGES

    transformers.logging.disable_progress_bar()
    run = RunConfig.model_validate(config["run"])
    plan = TrainPlan(**config["plan"])
    ctx = ray.train.get_context()
    shard = ray.train.get_dataset_shard("train")
    eval_shard = ray.train.get_dataset_shard("eval") if config["has_eval"] else None
    check = StreamChecker(run.data.max_bad_fraction, load_tokenizer(run.model).pad_token_id) if run.data.streaming else None
    columns = list(STAGES[run.stage.name].columns) + (["position_ids"] if run.packing else []) + (["error"] if check else [])

    def epoch_batches(epoch: int):
        batches = shard.iter_batches(batch_size=run.train.micro_batch_size, batch_format="numpy", drop_last=True,
                                     local_shuffle_buffer_size=256 if run.data.shuffle else None,
                                     local_shuffle_seed=run.train.seed + epoch if run.data.shuffle else None)
        for batch in batches:
            batch = {k: batch[k] for k in columns}
            yield check(batch) if check else batch

    def eval_batches():
        for batch in eval_shard.iter_batches(batch_size=run.train.micro_batch_size, batch_format="numpy"):
            batch = {k: batch[k] for k in columns}
            yield check(batch) if check else batch

    def report(metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        if checkpoint_dir is None:
            ray.train.report(metrics)
        else:  # uploaded into the run's directory in storage_path, then the local copy is deleted
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir),
                             delete_local_checkpoint_after_upload=True)

    checkpoint = ray.train.get_checkpoint()  # the latest, after a worker failure or with --resume
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as resume_from:
        train_worker(run, plan, epoch_batches, report=report, rank=ctx.get_world_rank(), world_size=ctx.get_world_size(),
                     eval_batches=eval_batches if eval_shard is not None else None, resume_from=resume_from,
                     node=ray.get_runtime_context().get_node_id())


class _Progress(UserCallback):
    """A progress bar of optimizer steps with the latest loss, drawn on the driver (tqdm_ray)."""

    def __init__(self, total_steps: int, name: str):
        self.total_steps, self.name = total_steps, name
        self.bar = None

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        from ray.experimental.tqdm_ray import tqdm

        if self.bar is None:
            self.bar = tqdm(total=self.total_steps, desc=f"train {self.name}", unit="step")
        m = metrics[0]
        if "train/loss" in m:
            self.bar.set_description(f"train {self.name} loss={m['train/loss']:.4f} tok/s={m['perf/tokens_per_s']:.0f}")
        self.bar.update(m["step"] - self.bar.n)
        if m["step"] >= self.total_steps:
            self.bar.close()


def train(run: RunConfig, resume: bool = False) -> Path:
    """Run one training job to completion; return the output directory.

    resume: continue the run in storage_path/name from its latest checkpoint (the same config).
    """
    run = run.with_absolute_paths()
    connect()
    resources = ray.cluster_resources()
    use_gpu = resources.get("GPU", 0) > 0 if run.cluster.use_gpu == "auto" else bool(run.cluster.use_gpu)
    check_run(run, resources, use_gpu, resume=resume)

    data = build_run_data(run)
    plan = TrainPlan.from_rows(run, data.train_rows)
    logger.info("plan: %d optimizer steps over %d epoch(s), global batch %d", plan.total_steps, plan.num_epochs,
                run.global_batch_size)
    out = Path(run.output.dir)
    if out.exists() and run.output.overwrite and not resume:  # only now: a run that fails its checks replaces nothing
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(dump_config(run))  # first: `--resume` compares against it

    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={"run": run.model_dump(mode="json"), "plan": plan.__dict__, "has_eval": data.eval is not None},
        scaling_config=ScalingConfig(num_workers=run.cluster.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": run.cluster.cpus_per_worker},
                                     placement_strategy=run.cluster.placement_strategy),
        # Ray Train keeps its checkpoint list in the run's directory: a run started again under the same
        # name and storage_path (--resume) hands the workers the latest checkpoint, as after a failure.
        run_config=RayRunConfig(name=run.output.name, storage_path=run.output.storage_path,
                                failure_config=FailureConfig(max_failures=run.cluster.max_failures),
                                checkpoint_config=_checkpoint_config(run),
                                callbacks=[_Progress(plan.total_steps, run.output.name)]),
        datasets={"train": data.train, **({"eval": data.eval} if data.eval is not None else {})},
    )
    trainer.fit()
    summary = read_summary(out)
    if summary:
        logger.info("run %s finished:\n%s", run.output.name, format_summary(summary))
    return out


def _checkpoint_config(run: RunConfig) -> CheckpointConfig:
    c = run.checkpoint
    if c.keep_best:
        return CheckpointConfig(num_to_keep=c.keep, checkpoint_score_attribute="eval/loss", checkpoint_score_order="min")
    return CheckpointConfig(num_to_keep=c.keep)
