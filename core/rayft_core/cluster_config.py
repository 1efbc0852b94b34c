"""The `deepspeed:` and `cluster:` sections of a run config: how its workers shard the model and where they run."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from rayft_core.schema import Section


class DeepSpeedConfig(Section):
    zero_stage: Literal[0, 1, 2, 3] | None = Field(
        None,
        description="ZeRO stage: 0 = data parallel, 1 = optimizer, 2 = + gradients, 3 = + parameters sharded. "
        "Unset: 0 with one worker (nothing to shard across, and ZeRO's optimizer step costs time), 2 with several "
        "or with offload_optimizer.",
    )
    offload_optimizer: bool = Field(False, description="Keep optimizer states in CPU memory (ZeRO >= 1, GPU runs).")
    offload_params: bool = Field(False, description="Keep parameters in CPU memory (ZeRO-3, GPU runs).")
    offload_nvme_path: str | None = Field(
        None,
        description="ZeRO-Infinity: what offload_optimizer / offload_params move out goes to files in this "
        "directory on a fast local disk instead of CPU memory (GPU runs; DeepSpeed's async_io op needs libaio).",
    )
    max_live_parameters: int | None = Field(
        None,
        gt=0,
        description="ZeRO-3: the most parameters a worker holds gathered at once, and the reuse distance within "
        "which a gathered one is kept (DeepSpeed's stage3_max_live_parameters and stage3_max_reuse_distance, "
        "default 1e9 each); lower it when gathering runs out of memory.",
    )
    prefetch_bucket_size: int | None = Field(
        None,
        gt=0,
        description="ZeRO-3: parameters fetched ahead of the layer that needs them (DeepSpeed's "
        "stage3_prefetch_bucket_size, default 5e7); lower it to save memory, raise it to hide communication.",
    )
    config_file: str | None = Field(
        None, description="A DeepSpeed JSON of your own; rayft fills its 'auto' values from the run."
    )

    def problems(self) -> list[str]:
        """The section's own rules (after RunConfig has resolved zero_stage), each as 'path: what to change'."""
        zero, problems = self.zero_stage, []
        if self.offload_params and zero != 3:
            problems.append(f"deepspeed.offload_params: parameter offload needs zero_stage 3, got {zero}")
        if self.offload_optimizer and zero == 0:
            problems.append("deepspeed.offload_optimizer: optimizer offload needs zero_stage >= 1, got 0")
        if self.offload_nvme_path and not (self.offload_optimizer or self.offload_params):
            problems.append(
                "deepspeed.offload_nvme_path: nothing is offloaded; set offload_optimizer and/or offload_params"
            )
        for key in ("max_live_parameters", "prefetch_bucket_size"):
            if getattr(self, key) is not None and zero != 3:
                problems.append(f"deepspeed.{key}: a ZeRO-3 setting; set zero_stage 3, got {zero}")
        return problems


class ClusterConfig(Section):
    num_workers: int = Field(1, ge=1, description="Ray Train workers (one process each, one GPU each when use_gpu).")
    use_gpu: bool | Literal["auto"] = Field("auto", description="auto: use GPUs when the cluster has any.")
    cpus_per_worker: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        "auto",
        description="CPUs reserved per worker, and its torch threads. auto: the nodes' free CPUs shared among the "
        "workers, less what runs beside them while they train (a stream's tokenizing, RL's rollout engines).",
    )
    sequence_parallel_size: int = Field(
        1,
        ge=1,
        description="Split each sequence across this many workers (DeepSpeed Ulysses): each holds 1/N of its tokens, "
        "attention exchanges heads with an all-to-all, activation memory per worker falls about N times. It divides "
        "num_workers and the model's attention heads; stages pt and sft, without packing.",
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="How workers are placed on nodes."
    )
    max_failures: int = Field(
        0,
        ge=-1,
        description="Restart the workers this many times after a worker or its node "
        "dies (-1: without limit); they continue from the latest checkpoint (see checkpoint.save_steps).",
    )
