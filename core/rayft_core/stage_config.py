"""The stage section of a run config: one class per stage (`stage: {name: dpo, beta: 0.1}`) and the tagged
union of them. Part of the run schema (rayft_core.config).

Each class also declares the stage's traits (class variables, not config keys): the shape of the data it
trains on, whether it packs, which loop trains it. The data pipeline, the checks and the launcher read these;
none of them branches on a stage's name.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from rayft_core.rl_stage_config import GrpoStage, PpoStage
from rayft_core.stage_base import PAIR, TAGGED, TEXT, DataShape, StageSection


class PretrainStage(StageSection):
    data: ClassVar[DataShape] = TEXT
    packs, packs_by_default, trains_with_dropout = True, True, True
    name: Literal["pt"] = "pt"


class SftStage(StageSection):
    packs, trains_with_dropout = True, True
    name: Literal["sft"] = "sft"
    train_on_prompt: bool = Field(
        False, description="Also compute the loss on prompt tokens (default: assistant tokens only)."
    )
    mask_history: bool = Field(
        False, description="Loss on the last assistant turn only (default: every assistant turn)."
    )


class RewardStage(StageSection):
    """Reward modelling: a value head on the model scores the last token; trained so chosen > rejected."""

    data: ClassVar[DataShape] = PAIR

    name: Literal["rm"] = "rm"


class _ReferenceStage(StageSection):
    reference_model: str | None = Field(
        None,
        description="A separate frozen reference model (local directory). Default: the base itself: with an "
        "adapter, the base with the adapter disabled (no second copy); for full-parameter runs, a frozen copy of it.",
    )


def _ld_alpha() -> Any:
    return Field(
        None,
        gt=0,
        le=1,
        description="LD-DPO (Liu et al. 2024): each pair's answers count their tokens past the shorter answer's "
        "length this many times, so the preference is learned less from length (LLaMA-Factory's ld_alpha); "
        "unset: all tokens count whole.",
    )


class DpoStage(_ReferenceStage):
    """Direct preference optimisation against a frozen reference."""

    data: ClassVar[DataShape] = PAIR
    name: Literal["dpo"] = "dpo"
    beta: float = Field(0.1, gt=0, description="Strength of the pull toward the reference (the KL weight).")
    loss_type: Literal["sigmoid", "hinge", "ipo"] = Field(
        "sigmoid", description="sigmoid: DPO's; hinge: SLiC's; ipo: IPO's squared loss on length-averaged log-ratios."
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="cDPO: the probability that a pair's label is wrong (sigmoid loss)."
    )
    ftx: float = Field(
        0.0, ge=0, description="DPO-ftx: add this weight x the SFT loss on the chosen answer (limits forgetting)."
    )
    ld_alpha: float | None = _ld_alpha()
    bco_weight: float = Field(
        0.0,
        ge=0,
        description="Add BCO's loss (Jung et al. 2024: each answer's reward classified against a running mean of "
        "rewards) with this weight: (DPO + w x BCO) / (1 + w), as LLaMA-Factory's pref_bco_weight.",
    )


class KtoStage(_ReferenceStage):
    """KTO: single answers tagged desirable or not, against a frozen reference."""

    data: ClassVar[DataShape] = TAGGED
    name: Literal["kto"] = "kto"
    beta: float = Field(0.1, gt=0, description="Strength of the pull toward the reference.")
    desirable_weight: float = Field(1.0, gt=0, description="Weight of the loss on desirable answers.")
    undesirable_weight: float = Field(1.0, gt=0, description="Weight of the loss on undesirable answers.")
    ftx: float = Field(0.0, ge=0, description="Add this weight x the SFT loss on desirable answers.")


class OrpoStage(StageSection):
    """ORPO: SFT on the chosen answer plus an odds-ratio penalty on the rejected one; no reference model."""

    data: ClassVar[DataShape] = PAIR

    name: Literal["orpo"] = "orpo"
    beta: float = Field(0.1, gt=0, description="Weight of the odds-ratio term (the paper's lambda).")
    ld_alpha: float | None = _ld_alpha()


class SimpoStage(StageSection):
    """SimPO: length-normalised log-likelihood margins with a target gap; no reference model."""

    data: ClassVar[DataShape] = PAIR

    name: Literal["simpo"] = "simpo"
    beta: float = Field(2.0, gt=0, description="Scale of the reward (the paper uses 2.0-2.5).")
    gamma: float = Field(0.5, ge=0, description="Target reward margin between chosen and rejected.")
    length_normalization: bool = Field(
        True, description="Average log-probabilities over answer tokens (SimPO's reward); false: sum them."
    )
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="The probability that a pair's label is wrong.")
    ftx: float = Field(0.0, ge=0, description="Add this weight x the SFT loss on the chosen answer.")
    ld_alpha: float | None = _ld_alpha()


StageConfig = Annotated[
    PretrainStage | SftStage | RewardStage | DpoStage | KtoStage | OrpoStage | SimpoStage | PpoStage | GrpoStage,
    Field(discriminator="name"),
]


def section(name: str) -> StageSection:
    """Stage ``name``'s section with its defaults (its traits, for code that has a name and no run)."""
    from pydantic import TypeAdapter

    return TypeAdapter(StageConfig).validate_python({"name": name})
