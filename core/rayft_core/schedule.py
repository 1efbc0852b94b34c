"""train.schedule: hyperparameters that change at given steps of one run.

    train:
      learning_rate: 1.0e-4
      schedule:
        - {after_step: 20, set: {train.learning_rate: 1.2e-4, tuning.dropout: 0.05}}

A PBT sweep (`rayft tune`, scheduler pbt) writes its winner's history this way, so that `rayft train` on the sweep's
best_run.yaml trains with the values the winner had at each step. The keys are those a run can change between two
steps without changing what its checkpoints hold: the optimizer's learning rate, weight decay and learning-rate
schedule, and the LoRA dropout. The training side applies them (rayft_core.train.hyperparameters).
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import Field, ValidationError, field_validator

from rayft_core.schema import Section

SCHEDULABLE = (
    "train.learning_rate",
    "train.weight_decay",
    "train.warmup_ratio",
    "train.lr_scheduler",
    "tuning.dropout",
)


class ScheduleChange(Section):
    """New values of some hyperparameters from one step of the run on."""

    after_step: int = Field(
        ..., ge=0, description="Optimizer steps trained before the change: the values apply from the next step on."
    )
    set: dict[str, Any] = Field(..., min_length=1, description=f"Run key -> value; keys: {', '.join(SCHEDULABLE)}.")
    origin: str | None = Field(
        None,
        description="Where the values came from, for the record (a PBT sweep names the trial and checkpoint its "
        "winner continued from); training does not read it.",
    )

    @field_validator("set")
    @classmethod
    def _schedulable(cls, values: dict[str, Any]) -> dict[str, Any]:
        for key in values:
            if key not in SCHEDULABLE:
                close = difflib.get_close_matches(key, SCHEDULABLE, n=1)
                raise ValueError(
                    f"{key} cannot change during a run"
                    + (f" (did you mean {close[0]!r}?)" if close else "")
                    + f"; what can: {', '.join(SCHEDULABLE)} (the rest changes the model, the data or what a "
                    "checkpoint holds)"
                )
        return values


def at_step(run: Any, step: int) -> Any:
    """``run`` (a RunConfig, which imports this module) as it stands after ``step`` optimizer steps: every change with after_step <= step applied in order."""
    changes = sorted((c for c in run.train.schedule if c.after_step <= step), key=lambda c: c.after_step)
    if not changes:
        return run
    run = run.model_copy(deep=True)
    for change in changes:
        for key, value in change.set.items():
            section, field = key.split(".")
            setattr(run, section, _with(getattr(run, section), field, value))
    return run


def _with(part: Any, field: str, value: Any) -> Any:
    """A copy of config section ``part`` with ``field`` set to ``value``, validated by the section's schema."""
    return type(part).model_validate({**part.model_dump(), field: value})


def problems(run: Any) -> list[str]:
    """Each change's values checked against the schema of their section, and the runs it cannot apply to."""
    found = []
    for i, change in enumerate(run.train.schedule):
        for key, value in change.set.items():
            section, field = key.split(".")
            part = getattr(run, section)
            path = f"train.schedule[{i}].set.{key}"
            if field not in type(part).model_fields:
                found.append(f"{path}: tuning method {run.tuning.method} has no {field}")
                continue
            try:
                _with(part, field, value)
            except ValidationError as e:
                found.append(f"{path}: {e.errors()[0]['msg']}, got {value!r}")
    if run.train.schedule and run.deepspeed.offload_optimizer:
        found.append(
            "train.schedule: an offloaded optimizer is DeepSpeed's own, without rayft's learning-rate schedule; "
            "set deepspeed.offload_optimizer false or drop the schedule"
        )
    return found
