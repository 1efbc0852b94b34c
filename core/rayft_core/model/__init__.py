"""Model building: load a causal LM and its tokenizer, apply a tuning method, merge adapters."""
