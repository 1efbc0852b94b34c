"""rayft: fine-tune LLMs on a Ray cluster. The cluster layer; the engine is rayft_core."""

__version__ = "0.1.0"
