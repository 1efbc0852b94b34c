"""APOLLO (Zhu et al. 2025, "APOLLO: SGD-like Memory, AdamW-level Performance", arXiv:2412.05270): every parameter
trains; for the targeted 2-D weights AdamW's moments are kept only for a random low-rank projection of the
gradient, from which a scaling factor per channel (or per tensor) is estimated and applied to the raw gradient.
Optimizer memory is then rank x the short side per matrix instead of two full copies. The official optimizer
(apollo-torch's APOLLOAdamW), with LLaMA-Factory's defaults; the rest trains with its plain AdamW."""

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from rayft_core.methods.base import Dependency, Run, TuningSection, nonempty_target
from rayft_core.methods.galore import projected_groups, whole_weights_problems

if TYPE_CHECKING:
    from torch import nn

APOLLO_TORCH = Dependency("apollo_torch", "apollo-torch", "apollo")


class ApolloTuning(TuningSection):
    optimizer = "apollo_adamw"  # TuningSection's class variables

    method: Literal["apollo"] = "apollo"
    rank: int = Field(16, ge=1, description="Rank of the gradient projection (1 with scale_type tensor: APOLLO-Mini).")
    update_proj_gap: int = Field(200, ge=1, description="Draw a new random projection every N optimizer steps.")
    scale: float = Field(32.0, gt=0, description="APOLLO's scale: the update is multiplied by its square root.")
    proj: Literal["random", "svd"] = Field("random", description="The projection: random (APOLLO's) or svd.")
    scale_type: Literal["channel", "tensor"] = Field(
        "channel", description="One scaling factor per channel (row or column), or one per tensor."
    )
    target: Literal["all"] | list[str] = Field(
        "all", description="2-D weights to project: 'all' linear layers except the head, or module names."
    )

    @field_validator("target")
    @classmethod
    def _some_target(cls, target: Any) -> Any:
        return nonempty_target(target)

    def param_groups(self, model: "nn.Module", run: Run) -> list[dict]:
        options = {
            "rank": self.rank,
            "update_proj_gap": self.update_proj_gap,
            "scale": self.scale,
            "proj": self.proj,
            "proj_type": "std",
            "scale_type": self.scale_type,
        }
        return projected_groups(model, run, self.target, options)

    def problems(self, run: Run) -> list[str]:
        return whole_weights_problems(run, "APOLLO")

    def missing_dependency(self) -> str | None:
        return APOLLO_TORCH.missing("tuning.method apollo")
