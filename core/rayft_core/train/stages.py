"""The registry of stages: name -> Stage (see rayft_core.train.stage). One file per stage."""

from rayft_core.train import dpo, kto, orpo, pt, rm, sft, simpo
from rayft_core.train.rl_stage import GRPO, PPO
from rayft_core.train.stage import Stage

STAGES: dict[str, Stage] = {s.name: s for s in (*(m.STAGE for m in (pt, sft, rm, dpo, kto, orpo, simpo)), PPO, GRPO)}
