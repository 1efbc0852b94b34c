"""Every model family transformers builds as a causal LM, which of them rayft trains, and a tiny random model of
each (the architecture matrix in rayft_core.model.matrix builds them).

    families()                          # model_type -> None (a decoder LLM: in the matrix) or why it is not
    tiny_config("mixtral", vocab_size=300)  # the family's own config class, shrunk to 2 layers of width 64

The shrinking is generic: the sizes every config names the same way (hidden_size, num_hidden_layers, experts...)
are set through the config's own attribute map; the few families that name their sizes otherwise get theirs in
OVERRIDES. Nothing here imports torch or transformers at import time.
"""

from __future__ import annotations

from typing import Any

# Families transformers maps to a causal-LM class that are not decoder-only language models, by why not.
ENCODER_ONLY = (
    "bert bert-generation big_bird camembert data2vec-text electra ernie megatron-bert rembert roberta "
    "roberta-prelayernorm roc_bert roformer xlm xlm-roberta xlm-roberta-xl xmod xlnet"
).split()
SEQ2SEQ_DECODERS = (
    "bart bigbird_pegasus blenderbot blenderbot-small marian mbart mvp pegasus plbart prophetnet trocr whisper"
).split()
AUDIO = "musicgen musicgen_melody moshi".split()
MULTIMODAL = (
    "emu3 fuyu gemma3 gemma3n gemma4 gemma4_unified git got_ocr2 llama4 mllama phi4_multimodal qwen3_5 qwen3_5_moe "
    "qwen4_exp"
).split()
OTHER = {
    "gemma4_assistant": "a speculative-decoding drafter that runs on Gemma 4's hidden states, not a model of its own",
    "gemma4_unified_assistant": "a speculative-decoding drafter that runs on Gemma 4's hidden states, not a model "
    "of its own",
    "blt": "Byte Latent Transformer: its byte patcher and hash embeddings are separate models that a causal-LM "
    "fine-tune does not build",
    "hrm_text": "Hierarchical Reasoning Model: recurrent cycles over stacks of layers, not a next-token decoder stack "
    "that LoRA or ZeRO shards layer by layer",
    "reformer": "LSH attention with axial position embeddings tied to one sequence length; padding-free batches of "
    "any length do not fit it",
}


def skip_reason(model_type: str) -> str | None:
    """Why ``model_type`` is not in the matrix, or None when it is a decoder LLM that is."""
    if model_type in ENCODER_ONLY:
        return "a bidirectional encoder (masked LM) with a causal head bolted on, not a decoder LLM"
    if model_type in SEQ2SEQ_DECODERS:
        return "the decoder half of an encoder-decoder model: it expects encoder states"
    if model_type in AUDIO:
        return "an audio model (multimodal is out of scope)"
    if model_type in MULTIMODAL:
        return "a vision-language model (multimodal is out of scope); its text model, where transformers has one, " + (
            "is in the matrix"
        )
    return OTHER.get(model_type)


def families() -> dict[str, str | None]:
    """Every model type in transformers' causal-LM mapping -> None (in the matrix) or why it is left out."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return {t: skip_reason(t) for t in sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)}


EXPERTS = 4


def sizes(hidden_size: int, heads: int) -> dict[str, Any]:
    """The sizes every family's config is shrunk to, where it has the key (set through its attribute_map, so
    gpt2's n_embd is hidden_size). Experts: 4, 2 per token, so a short batch leaves some unused."""
    head_dim = hidden_size // heads
    return {
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "ffn_hidden_size": 2 * hidden_size,
        "n_inner": 2 * hidden_size,
        "moe_intermediate_size": hidden_size // 2,
        "shared_expert_intermediate_size": hidden_size // 2,
        "moe_shared_expert_intermediate_size": hidden_size // 2,
        "expert_ffn_hidden_size": hidden_size // 2,
        "num_attention_heads": heads,
        "num_key_value_heads": max(heads // 2, 1),
        "head_dim": head_dim,
        "rotary_dim": head_dim // 2,
        "num_experts": EXPERTS,
        "num_local_experts": EXPERTS,
        "n_routed_experts": EXPERTS,
        "moe_num_experts": EXPERTS,
        "num_experts_per_tok": 2,
        "moe_topk": 2,
        "n_shared_experts": 1,
        "zero_expert_num": 0,
        "n_group": 1,  # expert groups for routing (DeepSeek V3): one group of all 4
        "topk_group": 1,
        "first_k_dense_replace": 1,  # DeepSeek-style: layer 0 dense, layer 1 MoE
        "num_dense_layers": 1,
        "q_lora_rank": 2 * head_dim,  # multi-head latent attention (DeepSeek V2/V3, MiniCPM3, ...)
        "kv_lora_rank": head_dim,
        "qk_rope_head_dim": head_dim,
        "qk_nope_head_dim": head_dim,
        "v_head_dim": head_dim,
        "qk_head_dim": 2 * head_dim,
        "max_position_embeddings": 512,
        "n_positions": 512,
        "sliding_window": 64,
    }


# Keys where None switches a feature off (no sliding window, no query compression): left None.
OFF_WHEN_NONE = {"sliding_window", "q_lora_rank"}

# Families whose sizes live under other names (given for the default width, 64), or that need a consistent set.
OVERRIDES: dict[str, dict[str, Any]] = {
    "dbrx": {"d_model": 64, "n_heads": 4, "n_layers": 2, "max_seq_len": 512,
             "ffn_config": {"ffn_hidden_size": 128, "moe_num_experts": EXPERTS, "moe_top_k": 2},
             "attn_config": {"kv_n_heads": 2}},
    "xlstm": {"embedding_dim": 64, "num_blocks": 2, "num_heads": 4, "chunk_size": 16, "mode": "train"},
    "mamba": {"state_size": 8, "expand": 2, "time_step_rank": 8},
    "mamba2": {"state_size": 8, "num_heads": 8, "head_dim": 16, "n_groups": 1, "chunk_size": 16},
    "falcon_mamba": {"state_size": 8, "expand": 2, "time_step_rank": 8},
    "nemotron_h": {"layers_block_type": ["linear_attention", "moe", "full_attention", "mlp"], "mamba_num_heads": 8,
                   "mamba_head_dim": 16, "ssm_state_size": 8, "n_groups": 1, "chunk_size": 16},
    "granitemoehybrid": {"layer_types": ["linear_attention", "full_attention"], "mamba_n_heads": 8,
                         "mamba_d_head": 16, "mamba_d_state": 8, "mamba_chunk_size": 16},
    "bamba": {"attn_layer_indices": [1], "mamba_n_heads": 8, "mamba_d_head": 16, "mamba_d_state": 8,
              "mamba_chunk_size": 16},
    "jamba": {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 1,
              "mamba_dt_rank": 8, "mamba_d_state": 8},
    "lfm2_moe": {"layer_types": ["conv", "full_attention"]},
}  # fmt: skip


def _shrink(config: Any, shrunk: dict[str, Any], num_layers: int) -> None:
    """Set the ``shrunk`` sizes in place, on the config and on its text config where it has one."""
    text = getattr(config, "text_config", None) or config
    for c in {id(config): config, id(text): text}.values():
        known = set(c.to_dict()) | set(getattr(c, "attribute_map", {}))
        for key, value in shrunk.items():
            if key in known and not (key in OFF_WHEN_NONE and getattr(c, key, None) is None):
                setattr(c, key, value)
        if "kv_lora_rank" in known and "num_key_value_heads" in known:  # latent attention: one kv head per head
            c.num_key_value_heads = c.num_attention_heads
        if "num_hidden_layers" in known:
            _shrink_layers(c, num_layers)


def _shrink_layers(config: Any, num_layers: int) -> None:
    """``num_layers`` layers, and every per-layer list cut to match: a hybrid's layer kinds keep one layer of every
    kind (full and sliding or linear attention, mamba and attention...), other per-layer values their first ones."""
    before = config.num_hidden_layers
    lists = {k: v for k, v in config.to_dict().items() if isinstance(v, list) and v and len(v) == before}
    layers = num_layers
    for key, values in lists.items():
        if all(isinstance(v, str) for v in values):
            kinds = list(dict.fromkeys(values))
            layers = max(layers, len(kinds))
            lists[key] = (kinds + values[: max(num_layers - len(kinds), 0)])[:layers]
    for key, values in lists.items():
        lists[key] = (values * layers)[:layers] if not all(isinstance(v, str) for v in values) else values
    config.num_hidden_layers = layers
    for key, values in lists.items():
        try:
            setattr(config, key, values)
        except AttributeError:  # derived from other keys in this family: its own rule follows num_hidden_layers
            continue


def tiny_config(model_type: str, vocab_size: int, hidden_size: int = 64, num_layers: int = 2, **overrides: Any) -> Any:
    """``model_type``'s own config class with ``num_layers`` layers of width ``hidden_size`` (heads of 16, half as
    many key/value heads), 4 experts where it has experts, and ``overrides`` on top (token ids, heads...)."""
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"unknown model type {model_type!r}; transformers knows {len(CONFIG_MAPPING)} types")
    config = CONFIG_MAPPING[model_type]()
    heads = overrides.get("num_attention_heads", max(hidden_size // 16, 1))
    _shrink(config, {"vocab_size": vocab_size, **sizes(hidden_size, heads)}, num_layers)
    for key, value in {**OVERRIDES.get(model_type, {}), **overrides}.items():
        if value is None and key.endswith("_token_id") and not _accepts_none(config, key):
            value = overrides.get("eos_token_id", 0)  # a family that insists on the id: the end-of-text token
        current = getattr(config, key, None)
        if isinstance(value, dict) and current is not None and not isinstance(current, dict):
            for sub_key, sub_value in value.items():  # a nested config object (dbrx's ffn_config)
                setattr(current, sub_key, sub_value)
        else:
            setattr(config, key, value)
    return config


def _accepts_none(config: Any, key: str) -> bool:
    import copy

    try:
        setattr(copy.deepcopy(config), key, None)
        return True
    except Exception:  # noqa: BLE001 -- huggingface_hub's strict dataclasses raise their own validation errors
        return False
