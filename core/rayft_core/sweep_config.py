"""The tune section of a run config: a hyperparameter sweep (`rayft tune`), each trial a whole training run.
Part of the run schema (rayft_core.config)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from rayft_core.schedule import SCHEDULABLE
from rayft_core.schema import Section

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform")


class SweepConfig(Section):
    """A hyperparameter sweep over run keys: `rayft tune`. Each trial is a whole training run."""

    space: dict[str, dict[str, Any]] = Field(
        ...,
        min_length=1,
        description="Run key -> distribution: {choice: [..]}, {grid: [..]} (every value, each "
        "combined with the other grid keys), {uniform: [low, high]} or {loguniform: [low, high]}. "
        "Example: {tuning.rank: {choice: [8, 16]}, train.learning_rate: {loguniform: [1e-5, 1e-3]}}.",
    )
    num_samples: int = Field(4, ge=1, description="Trials to sample (with grid keys: samples per grid point).")
    search: Literal["random", "grid", "optuna"] = Field(
        "random",
        description="random and grid: Ray Tune's variant generator (grid needs only grid/choice keys); "
        "optuna: TPE (pip install 'rayft[tune]'), no grid keys.",
    )
    scheduler: Literal["fifo", "asha", "pbt", "pb2"] = Field(
        "asha",
        description="asha stops trials whose metric trails the others' at the same step (their workers are freed); "
        "fifo runs every trial to the end; pbt (Population Based Training, Jaderberg et al. 2017): every "
        "perturbation_interval steps a trial in the bottom quantile_fraction continues from the checkpoint of one in "
        "the top with perturbed values of the space's keys (those train.schedule can change: "
        f"{', '.join(SCHEDULABLE)}); pb2 (Parker-Holder et al. 2020): the same, the new values chosen by a Gaussian "
        "process bandit over the trials' results instead of random perturbation (ranges only; pip install "
        "'rayft[tune]').",
    )
    perturbation_interval: int | None = Field(
        None,
        ge=1,
        description="PBT: steps between a trial's decisions to continue or to take a better trial's checkpoint; "
        "the trials evaluate (eval/* metric) and checkpoint at these steps. None: train.eval_steps for an eval/* "
        "metric, train.logging_steps for train/*.",
    )
    quantile_fraction: float = Field(
        0.25, gt=0, le=0.5, description="PBT: the share of trials at the bottom that take a checkpoint from the top."
    )
    resample_probability: float = Field(
        0.25,
        ge=0,
        le=1,
        description="PBT: the chance that a value is drawn anew from the space instead of perturbed (a range's "
        "value times 0.8 or 1.2, kept inside the range; a list's value moved to a neighbour).",
    )
    metric: str = Field(
        "eval/loss",
        description="What the sweep optimizes: a metric the runs report (train/* at "
        "logging steps, eval/* at evaluation steps).",
    )
    mode: Literal["min", "max"] = Field("min", description="Minimize or maximize the metric.")
    max_concurrent_trials: int | None = Field(
        None,
        ge=1,
        description="Trials at once. None: as many as the cluster's "
        "CPUs (GPUs) hold, each trial taking cluster.num_workers workers.",
    )
    grace_period: int | None = Field(
        None,
        ge=1,
        description="ASHA: optimizer steps every trial runs before it can "
        "be stopped. None: the first step that reports the metric.",
    )
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: the share of trials kept at each rung is 1/this.")
    keep_top: int = Field(
        1,
        ge=1,
        description="Trials whose trained model files are kept (best first); the others "
        "keep their metrics, summary and config only.",
    )

    @field_validator("space")
    @classmethod
    def _distributions(cls, space: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        problems = []
        for key, dist in space.items():
            kinds = [k for k in dist if k in DISTRIBUTIONS]
            if len(dist) != 1 or len(kinds) != 1:
                problems.append(f"{key}: give exactly one of {', '.join(DISTRIBUTIONS)}, got {sorted(dist)}")
                continue
            kind, values = kinds[0], dist[kinds[0]]
            if kind in ("choice", "grid") and not (isinstance(values, list) and values):
                problems.append(f"{key}: {kind} needs a non-empty list of values, got {values!r}")
            elif kind in ("uniform", "loguniform"):
                ok = isinstance(values, list) and len(values) == 2 and all(isinstance(v, (int, float)) for v in values)
                if not ok or values[0] >= values[1] or (kind == "loguniform" and values[0] <= 0):
                    problems.append(
                        f"{key}: {kind} needs [low, high] with low < high"
                        + (" and low > 0" if kind == "loguniform" else "")
                        + f", got {values!r}"
                    )
        if problems:
            raise ValueError("; ".join(problems))
        return space

    @model_validator(mode="after")
    def _search_fits_space(self) -> SweepConfig:
        kinds = {next(iter(d)) for d in self.space.values()}
        if self.search == "grid" and kinds - {"grid", "choice"}:
            raise ValueError(
                "search: grid enumerates values; every space key needs grid or choice, got "
                f"{sorted(kinds - {'grid', 'choice'})}"
            )
        if self.search == "optuna" and "grid" in kinds:
            raise ValueError("search: optuna samples; use choice instead of grid")
        if self.population_based:
            name = self.scheduler
            if self.search == "optuna":
                raise ValueError(f"scheduler: {name} chooses the values itself after the first ones; use search random")
            fixed = [k for k in self.space if k not in SCHEDULABLE]
            if fixed:
                raise ValueError(
                    f"scheduler: {name} changes values in the middle of a trial, which {', '.join(fixed)} cannot do "
                    f"(it changes the model, the data or what a checkpoint holds); {name} can change: "
                    f"{', '.join(SCHEDULABLE)}; use asha or fifo to sweep the others"
                )
            lists = [k for k, d in self.space.items() if name == "pb2" and next(iter(d)) in ("choice", "grid")]
            if lists:
                raise ValueError(
                    f"scheduler: pb2 models each key as a range; give {', '.join(lists)} uniform or loguniform bounds, "
                    "or use pbt"
                )
        return self

    @property
    def population_based(self) -> bool:
        """PBT or PB2: trials continue each other's checkpoints (rayft.tune_trial)."""
        return self.scheduler in ("pbt", "pb2")
