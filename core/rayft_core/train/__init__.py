"""Training: one file per stage (the loss), plus the shared optimizer, DeepSpeed config and loop."""
