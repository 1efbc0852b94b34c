"""APOLLO (Zhu et al. 2025, "APOLLO: SGD-like Memory, AdamW-level Performance", arXiv:2412.05270): every parameter
trains; for the targeted 2-D weights AdamW's moments are kept only for a random low-rank projection of the
gradient, from which a scaling factor per channel (or per tensor) is estimated and applied to the raw gradient.
Optimizer memory is then rank x the short side per matrix instead of two full copies. The official optimizer
(apollo-torch's APOLLOAdamW), with LLaMA-Factory's defaults; the rest trains with its plain AdamW."""

from typing import Any, Literal

from pydantic import Field

from rayft_core.methods.base import Dependency
from rayft_core.methods.galore import ProjectedTuning

APOLLO_TORCH = Dependency("apollo_torch", "apollo-torch", "apollo")


class ApolloTuning(ProjectedTuning):
    optimizer, label = "apollo_adamw", "APOLLO"  # class variables

    method: Literal["apollo"] = "apollo"
    rank: int = Field(16, ge=1, description="Rank of the gradient projection (1 with scale_type tensor: APOLLO-Mini).")
    update_proj_gap: int = Field(200, ge=1, description="Draw a new random projection every N optimizer steps.")
    scale: float = Field(32.0, gt=0, description="APOLLO's scale: the update is multiplied by its square root.")
    proj: Literal["random", "svd"] = Field("random", description="The projection: random (APOLLO's) or svd.")
    scale_type: Literal["channel", "tensor"] = Field(
        "channel", description="One scaling factor per channel (row or column), or one per tensor."
    )

    def projection(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "update_proj_gap": self.update_proj_gap,
            "scale": self.scale,
            "proj": self.proj,
            "proj_type": "std",
            "scale_type": self.scale_type,
        }

    def missing_dependency(self) -> str | None:
        return APOLLO_TORCH.missing("tuning.method apollo")
