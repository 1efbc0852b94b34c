"""What every stage section is (StageSection) and the shapes of training data the stages read; the stages
themselves are in rayft_core.stage_config and rayft_core.rl_stage_config."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from rayft_core.schema import Section

# The shapes of training data, as the stages read them (rayft_core.data.formats aligns every format to one).
TEXT = "text"  # documents
CONVERSATION = "conversation"  # conversations whose assistant turns are trained on
PAIR = "pair"  # a conversation with a chosen and a rejected answer (a ranking dataset)
TAGGED = "tagged"  # a conversation whose answer is tagged desirable or not (KTO)
PROMPT = "prompt"  # conversations up to the assistant's turn; the answer, if any, is a reference for rewards
DataShape = Literal["text", "conversation", "pair", "tagged", "prompt"]


class StageSection(Section):
    """What every stage declares besides its keys."""

    data: ClassVar[DataShape] = CONVERSATION
    packs: ClassVar[bool] = False  # rows may be packed (data.packing): the loss is per token, not per answer
    packs_by_default: ClassVar[bool] = False
    trains_with_dropout: ClassVar[bool] = False  # off where two scores are compared (pairs, policy vs reference)
    loop: ClassVar[Literal["supervised", "rl"]] = "supervised"  # rayft_core.train.loop or rayft_core.train.rlhf

    def problems(self, run: Any) -> list[str]:
        """This stage's own rules on the rest of the run (``run``: the RunConfig that holds this section, which
        imports this module), each as 'path: what to change'."""
        return []
