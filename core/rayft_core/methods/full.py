"""Full fine-tuning: every parameter trains, with AdamW (TuningSection's defaults)."""

from typing import Literal

from rayft_core.methods.base import TuningSection


class FullTuning(TuningSection):
    method: Literal["full"] = "full"
