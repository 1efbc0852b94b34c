"""GaLore: every parameter trains; the optimizer projects the gradients of the targeted 2-D weights to a low
rank (galore-torch's GaLoreAdamW), which saves optimizer memory."""

from abc import abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator

from rayft_core.methods.base import Dependency, Run, TuningSection, nonempty_target

if TYPE_CHECKING:
    from torch import nn

GALORE_TORCH = Dependency("galore_torch", "galore-torch", "galore")


class ProjectedTuning(TuningSection):
    """What the methods that project each targeted 2-D weight's gradient to a low rank share (GaLore, APOLLO):
    every parameter trains, the targeted weights in a group of their own with the projection's options, under
    ZeRO-0 (ZeRO-1/2 flatten parameters into 1-D partitions and ZeRO-3 shards them: the projection needs each
    2-D weight whole, and would silently do nothing)."""

    label: ClassVar[str]  # the method's name in messages

    target: Literal["all"] | list[str] = Field(
        "all", description="2-D weights to project: 'all' linear layers except the head, or module names."
    )

    @field_validator("target")
    @classmethod
    def _some_target(cls, target: Any) -> Any:
        return nonempty_target(target)

    @abstractmethod
    def projection(self) -> dict[str, Any]:
        """The projected weights' group options, as the method's optimizer reads them."""

    def param_groups(self, model: "nn.Module", run: Run) -> list[dict]:
        """Everything else as in AdamW (one group, decayed), then the targeted 2-D weights with the projection."""
        from rayft_core.methods.layers import targeted_linear_weights

        lr, wd = run.train.learning_rate, run.train.weight_decay
        projected = targeted_linear_weights(model, self.target, "tuning.target")
        ids = {id(p) for p in projected}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        return [
            {"params": rest, "lr": lr, "weight_decay": wd},
            {"params": projected, "lr": lr, "weight_decay": wd, **self.projection()},
        ]

    def problems(self, run: Run) -> list[str]:
        zero = run.deepspeed.zero_stage
        if zero != 0:
            return [f"deepspeed.zero_stage: {self.label} needs whole 2-D weights; set it to 0, got {zero}"]
        return []


class GaloreTuning(ProjectedTuning):
    optimizer, label = "galore_adamw", "GaLore"  # class variables

    method: Literal["galore"] = "galore"
    rank: int = Field(16, ge=1, description="Rank of the gradient projection.")
    update_proj_gap: int = Field(200, ge=1, description="Recompute the projection every N optimizer steps.")
    scale: float = Field(0.25, gt=0, description="GaLore scale applied to the projected update.")

    def projection(self) -> dict[str, Any]:
        return {"rank": self.rank, "update_proj_gap": self.update_proj_gap, "scale": self.scale, "proj_type": "std"}

    def missing_dependency(self) -> str | None:
        return GALORE_TORCH.missing("tuning.method galore")
