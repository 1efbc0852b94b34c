"""The registry of stages: name -> module with ``encode_rows`` and ``compute_loss``."""

from types import ModuleType

from rayft_core.train import pt, sft

STAGES: dict[str, ModuleType] = {"pt": pt, "sft": sft}
