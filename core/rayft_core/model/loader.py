"""Load a causal LM and its tokenizer the way a run asks: dtype, attention, RoPE scaling, new tokens."""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from rayft_core.config import ModelConfig, RunConfig
from rayft_core.errors import UserInputError

logger = logging.getLogger(__name__)


class ModelLoadError(UserInputError):
    """The model (or tokenizer) named by the run cannot be loaded; the message says what to change."""


def resolve_dtype(name: str) -> torch.dtype:
    """auto: bf16 on CUDA with compute capability >= 8 (Ampere+), fp16 on older CUDA, fp32 on CPU."""
    if name != "auto":
        return getattr(torch, name)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.get_device_capability()[0] >= 8 else torch.float16
    return torch.float32


def resolve_attn_implementation(name: str, config: Any = None) -> str:
    """auto: flash-attention 2 on CUDA where flash_attn is installed, else PyTorch's SDPA, each only where the
    model's class implements it (``config`` names the class; a family without SDPA, such as Bloom, gets eager)."""
    if name != "auto":
        return name
    model_class = _causal_lm_class(config)
    supports = (lambda flag: getattr(model_class, flag, False)) if model_class else (lambda flag: True)
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") and supports("_supports_flash_attn"):
        return "flash_attention_2"
    return "sdpa" if supports("_supports_sdpa") else "eager"


def _shifted_sparse_attention(resolved: str) -> str:
    """model.shift_attn: rayft's S2-Attn (rayft_core.model.shift_attention), which runs SDPA within groups: for a
    family whose attention has an SDPA path (resolved to sdpa, or to flash-attention on a GPU)."""
    from rayft_core.model.shift_attention import register

    if resolved == "eager":
        raise UserInputError(
            "model.shift_attn: this model family has no SDPA attention, which S2-Attn runs within groups"
        )
    return register()


def _causal_lm_class(config: Any) -> type | None:
    """The transformers class a config builds as a causal LM (None when unknown, as for remote code)."""
    if config is None:
        return None
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        return None


def hub_offline(*more: str) -> str | None:
    """The variable that declares the Hugging Face hub offline (HF_HUB_OFFLINE, or one of ``more`` such as
    TRANSFORMERS_OFFLINE or HF_DATASETS_OFFLINE) when one is set to a true value, else None."""
    declared = [v for v in ("HF_HUB_OFFLINE", *more) if os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")]
    return declared[0] if declared else None


def hub_reachable(*offline_vars: str, timeout: float = 3.0) -> bool:
    """False at once when offline is declared (``hub_offline(*offline_vars)``), else whether the hub
    (HF_ENDPOINT, huggingface.co by default) answers within ``timeout``, DNS included, which a plain socket
    timeout would not bound."""
    if hub_offline(*offline_vars):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    address = (url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443))
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def check_model_path(cfg: ModelConfig) -> None:
    """Fail early, in seconds, with the fix: a local model directory that is missing or incomplete, or a
    hub id that is neither in the local cache nor fetchable (the hub declared offline or not answering)."""
    name = cfg.name_or_path
    path = Path(name).expanduser()
    looks_local = path.is_absolute() or name.startswith(".") or path.exists()
    if looks_local:
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"model.name_or_path: {name!r} has no config.json; point it at a "
                "directory written by save_pretrained (or a hub id when online)"
            )
        _check_remote_code(path / "config.json", cfg.trust_remote_code)
        return
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except HFValidationError:
        raise ModelLoadError(
            f"model.name_or_path: {name!r} is not a local directory (no such path) nor a hub id "
            "(namespace/name); point it at a directory written by save_pretrained"
        ) from None
    if isinstance(cached, str):  # downloaded before: transformers loads it from the cache, offline or not
        return
    offline = hub_offline("TRANSFORMERS_OFFLINE")
    if offline:
        raise ModelLoadError(
            f"model.name_or_path: {name!r} is not a local directory and the hub is offline "
            f"({offline} is set), nor is it in the local hub cache; point it at a directory written "
            "by save_pretrained"
        )
    if not hub_reachable():
        raise ModelLoadError(
            f"model.name_or_path: {name!r} is not a local directory, and the Hugging Face hub "
            "cannot be reached from here to download it; download the model where there is network "
            "and point model.name_or_path at its directory"
        )


def _check_remote_code(config_json: Path, trusted: bool) -> None:
    """A model that ships its own architecture (config.json's auto_map names Python files beside it) runs that
    code only when the run says so."""
    import json

    try:
        auto_map = json.loads(config_json.read_text()).get("auto_map")
    except (OSError, ValueError, AttributeError):
        return  # transformers reports an unreadable config.json itself, with its reason
    if auto_map and not trusted:
        files = sorted({str(v).split(".")[0] + ".py" for v in auto_map.values() if isinstance(v, str)})
        raise ModelLoadError(
            f"model.name_or_path: {str(config_json.parent)!r} ships its own modelling code ({', '.join(files)}); "
            "set model.trust_remote_code: true to run it, once you have read it and trust it"
        )


def tokenizer_class(name_or_path: str, trust_remote_code: bool = False) -> Any:
    """The class AutoTokenizer picks for a local tokenizer, imported without importing AutoTokenizer.

    A local tokenizer_config.json names its class; the class alone loads the same tokenizer. AutoTokenizer's
    own imports (transformers' configuration and generation modules, torch and scikit-learn with them) cost
    every tokenizing process 2 s and some 400 MB, more than the tokenizer. Anything else (a hub id, no or an
    unknown class name, code from the repository) goes through AutoTokenizer.
    """
    import transformers

    config = Path(name_or_path) / "tokenizer_config.json"
    if not trust_remote_code and config.is_file():
        try:
            name = json.loads(config.read_text()).get("tokenizer_class")
        except (ValueError, OSError):
            name = None
        if isinstance(name, str) and name.isidentifier():
            cls = getattr(transformers, name, None) or getattr(transformers, name.removesuffix("Fast"), None)
            if cls is not None and hasattr(cls, "from_pretrained"):
                return cls
    return transformers.AutoTokenizer


def load_tokenizer(cfg: ModelConfig) -> Any:
    from rayft_core.data.templates import apply_template

    cls = tokenizer_class(cfg.name_or_path, cfg.trust_remote_code)
    tokenizer = cls.from_pretrained(cfg.name_or_path, trust_remote_code=cfg.trust_remote_code)
    if cfg.add_special_tokens:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": list(cfg.add_special_tokens)}, replace_extra_special_tokens=False
        )
    if cfg.add_tokens:
        tokenizer.add_tokens(list(cfg.add_tokens), special_tokens=False)
    apply_template(tokenizer, cfg)  # after the added tokens: it warns about turn markers the vocabulary lacks
    if tokenizer.pad_token_id is None:  # many base models ship without one; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_model_config(run: RunConfig) -> Any:
    from transformers import AutoConfig

    m = run.model
    config = AutoConfig.from_pretrained(m.name_or_path, trust_remote_code=m.trust_remote_code)
    limit = getattr(config, "max_position_embeddings", None)
    if m.rope_scaling and limit and run.data.max_seq_len > limit:
        factor = run.data.max_seq_len / limit
        params = dict(getattr(config, "rope_parameters", None) or {})
        params.update(rope_type=m.rope_scaling, factor=factor)
        if m.rope_scaling == "yarn":
            params["original_max_position_embeddings"] = limit
        config.rope_parameters = params
        config.max_position_embeddings = run.data.max_seq_len
        logger.info("RoPE scaling %s with factor %.2f for max_seq_len %d", m.rope_scaling, factor, run.data.max_seq_len)
    config.use_cache = False  # training never reuses past key/values
    return config


class ModelFacts:
    """The model as the driver's checks read it, each part loaded once however many checks ask: the tokenizer,
    the config (with the run's RoPE scaling), and a weightless copy on the meta device (module names, layers)."""

    def __init__(self, run: RunConfig):
        self.run = run

    @functools.cached_property
    def tokenizer(self) -> Any:
        return load_tokenizer(self.run.model)

    @functools.cached_property
    def config(self) -> Any:
        return build_model_config(self.run)

    @functools.cached_property
    def meta_model(self) -> torch.nn.Module:
        return self._weightless()

    @functools.cached_property
    def tuned_meta_model(self) -> torch.nn.Module:
        """A weightless copy with the run's tuning method applied: which parameters train, and how many."""
        import warnings

        model = self._weightless()
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a saved adapter loaded into weightless modules: torch says it is a no-op
            return self.run.tuning.apply(model, self.run)

    def _weightless(self) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(self.config, trust_remote_code=self.run.model.trust_remote_code)


def quantization_config(run: RunConfig, dtype: torch.dtype) -> Any:
    bits = getattr(run.tuning, "quantization_bit", None)
    if not bits:
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError("tuning.quantization_bit needs bitsandbytes: pip install 'rayft[qlora]'")
    from transformers import BitsAndBytesConfig

    if bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def load_model(run: RunConfig, tokenizer: Any) -> torch.nn.Module:
    """The base model, ready for a tuning method: right dtype, attention, RoPE and vocabulary."""
    from transformers import AutoModelForCausalLM

    from rayft_core.model.zero3 import weights_for_peer

    dtype = resolve_dtype(run.model.dtype)
    config = build_model_config(run)
    attention = resolve_attn_implementation(run.model.attn_implementation, config)
    if run.model.shift_attn:
        attention = _shifted_sparse_attention(attention)
    if run.model.from_scratch:  # random weights of the architecture (partitioned as built under ZeRO-3 too)
        torch.manual_seed(run.train.seed)  # every worker draws the same weights
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, attn_implementation=attention, trust_remote_code=run.model.trust_remote_code
        )
    else:
        # Under ZeRO-3 only rank 0 reads the weights (transformers copies each into its partitions from rank 0):
        # the other ranks build from their shapes alone, so a node with 8 workers does not read the model 8 times.
        # transformers takes a state dict only without a path, through the model's own class.
        peer = weights_for_peer(run.model.name_or_path, run.model.trust_remote_code)
        model_class = _causal_lm_class(config) if peer is not None else None
        source = {"pretrained_model_name_or_path": None, "state_dict": peer} if model_class else {
            "pretrained_model_name_or_path": run.model.name_or_path
        }  # fmt: skip
        model = (model_class or AutoModelForCausalLM).from_pretrained(
            **source,
            config=config,
            dtype=dtype,
            attn_implementation=attention,
            quantization_config=quantization_config(run, dtype),
            trust_remote_code=run.model.trust_remote_code,
        )
    if run.model.upcast_layernorm:
        upcast_norms(model)
    if run.model.liger_kernel:
        from rayft_core.model.kernels import apply_liger

        apply_liger(model)
    resize_embeddings(model, len(tokenizer), seed=run.train.seed)
    if run.train.neftune_noise_alpha:
        add_neftune_noise(model, run.train.neftune_noise_alpha)
    if run.model.checkpoints_activations:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # so checkpointed blocks see a grad-requiring input under PEFT
    return model


def upcast_norms(model: torch.nn.Module) -> list[str]:
    """The normalisation layers' weights in float32 (LayerNorm, RMSNorm and each family's own: any module whose
    class name ends in Norm); their output is cast back to their input's dtype, so the layers after them see the
    model's dtype as before. Returns the upcast modules' names."""

    def same_dtype(module: torch.nn.Module, inputs: Any, output: Any) -> Any:
        return output.to(inputs[0].dtype) if isinstance(output, torch.Tensor) else output

    names = []
    for name, module in model.named_modules():
        params = list(module.parameters(recurse=False))
        if type(module).__name__.lower().endswith("norm") and params:
            for p in params:
                p.data = p.data.float()
            module.register_forward_hook(same_dtype)
            names.append(name)
    return names


def add_neftune_noise(model: torch.nn.Module, alpha: float) -> None:
    """NEFTune (Jain et al., "NEFTune: Noisy Embeddings Improve Instruction Finetuning", 2023): while the model
    trains, its input embeddings [batch, L, d] get uniform noise in [-a, a] with a = alpha / sqrt(L * d); in
    evaluation and generation (eval mode) they are untouched."""

    def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        bound = alpha / (output.shape[-2] * output.shape[-1]) ** 0.5
        return output + torch.empty_like(output).uniform_(-bound, bound)

    model.get_input_embeddings().register_forward_hook(hook)


@torch.no_grad()
def resize_embeddings(model: torch.nn.Module, vocab_size: int, seed: int = 0) -> None:
    """Grow the embeddings to the tokenizer; new rows = mean of old rows + noise of their covariance scale.

    A mean initialisation keeps the new tokens' logits close to the average token's instead of
    random (Hewitt, "Initializing new word embeddings", 2021); the noise keeps them distinct. Under ZeRO-3
    (rayft_core.model.zero3.sharded_construction) the matrices are gathered one at a time and rank 0's new rows
    are the ones every rank keeps; the grown matrices, which transformers makes whole, are partitioned again.
    """
    from rayft_core.model.zero3 import gathered, partition_whole_parameters, shape

    old = shape(model.get_input_embeddings().weight)[0]
    if vocab_size <= old:
        return
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    gen = torch.Generator().manual_seed(seed)
    for emb in {model.get_input_embeddings(), model.get_output_embeddings()} - {None}:
        with gathered([emb.weight], modifier_rank=0):
            weight = emb.weight
            mean = weight[:old].float().mean(0)
            std = weight[:old].float().std(0)
            noise = torch.randn((vocab_size - old, weight.shape[1]), generator=gen) * std * 0.1
            weight[old:] = (mean + noise).to(weight.dtype)
    partition_whole_parameters(model)
    logger.info("resized embeddings from %d to %d tokens (noisy mean init)", old, vocab_size)
