"""How the LLaMA-Factory keys of a stage translate: stage, pref_*, the reward and reference models, PPO and
generation keys. A part of rayft_core.llamafactory's translation (the class there inherits these methods)."""

from __future__ import annotations

from typing import Any

from rayft_core.llamafactory_keys import stage_words
from rayft_core.llamafactory_tables import (
    DPO_LOSS_TYPES,
    LF_GENERATION,
    LF_STAGE_DEFAULTS,
    REWARD_MODEL_TYPES,
    STAGE_KEYS,
    TEXT_KEYS,
)
from rayft_core.llamafactory_values import as_number


class StageKeys:
    """The stage keys' handlers; ``self`` is the translation in progress (raw, stage, method, set, note)."""

    raw: dict
    stage: str | None
    method: str

    def set(self, path: str, value: Any) -> None: ...

    def note(self, key: str, why: str, error: bool = False) -> None: ...

    def stage_key(self, key: str, value: Any) -> None:
        owners = [s for s, keys in STAGE_KEYS.items() if key in keys]
        n = as_number(value)
        if self.stage == "ppo" and key.startswith("ref_model"):  # LLaMA-Factory's PPO reads them; rayft's does not
            self.ppo_reference_key(key, value)
            return
        if self.stage not in owners:
            if value is not None and n != LF_STAGE_DEFAULTS[key]:  # LLaMA-Factory ignores another stage's keys too
                self.note(
                    key, f"applies to rayft's stage {', '.join(owners)} only; this run is {stage_words(self.stage)}"
                )
            return
        field = STAGE_KEYS[self.stage][key]
        if field is not None and value is None:  # unset (ld_alpha: null): rayft's default is LLaMA-Factory's
            return
        if field is not None:
            self.set(f"stage.{field}", value if key in TEXT_KEYS or isinstance(value, bool) else n)
        elif key == "pref_loss":  # orpo and simpo: it chose the stage
            self.pref_loss_key(key, value)
        elif key == "pref_ftx":  # orpo and kto
            self.pref_ftx_key(key, n)
        elif key == "dpo_label_smoothing":
            self.label_smoothing_key(key, n)
        elif key in ("ref_model_adapters", "ref_model_quantization_bit"):
            self.side_model_key(
                key,
                value,
                bool(self.raw.get("ref_model")),
                "reference model",
                "ref_model",
                "only read with ref_model; the reference is the model being trained, at its start",
                "rayft loads the reference model unquantized in the run's dtype (more memory, exact log-probabilities)",
            )
        else:
            self.ppo_key(key, value)

    def pref_loss_key(self, key: str, value: Any) -> None:
        if self.stage == "dpo" and value in DPO_LOSS_TYPES:
            self.set("stage.loss_type", value)
        elif self.stage == "dpo":
            self.note(
                key,
                f"rayft's stage dpo has losses {', '.join(DPO_LOSS_TYPES)} (and orpo and simpo as stages of their own)",
                error=True,
            )

    def pref_ftx_key(self, key: str, n: Any) -> None:
        if n and self.stage == "orpo":  # LLaMA-Factory adds pref_ftx x the chosen answer's NLL to every DPO loss
            self.note(key, "rayft's stage orpo has its own SFT term and no extra one", error=True)
        elif n:
            self.set("stage.ftx", n)
            if as_number(self.raw.get("per_device_train_batch_size")) != 1:
                self.note(
                    key,
                    "LLaMA-Factory weighs KTO's SFT term by (micro-batch size / desirable answers in it)"
                    "^2 more than rayft does; the two agree at per_device_train_batch_size 1",
                    error=True,
                )

    def label_smoothing_key(self, key: str, n: Any) -> None:
        if not n:
            return
        loss = self.raw.get("pref_loss", "sigmoid")
        if self.stage == "simpo":
            self.set("stage.label_smoothing", n)
            self.note(
                key,
                "LLaMA-Factory refuses label smoothing with pref_loss simpo; rayft applies it to "
                "SimPO's loss as cDPO does to DPO's",
            )
        elif loss != "sigmoid":
            self.note(
                key,
                f"label smoothing applies to the sigmoid loss only, not {loss}; LLaMA-Factory refuses it too",
                error=True,
            )
        else:
            self.set("stage.label_smoothing", n)

    def side_model_key(
        self, key: str, value: Any, loaded: bool, model: str, model_key: str, unread: str, quantization: str
    ) -> None:
        """The *_adapters and *_quantization_bit keys of a second model (the reference, the reward model)."""
        if value is None:
            return
        if not loaded:
            self.note(key, unread)
        elif key.endswith("_adapters"):
            self.note(
                key,
                f"a {model} with adapters is not available in rayft: merge them into the {model} and "
                f"name that as {model_key}",
                error=True,
            )
        else:
            self.note(key, quantization)

    def ppo_reference_key(self, key: str, value: Any) -> None:
        if key == "ref_model" and value:
            self.note(
                key,
                "rayft's stage ppo takes its reference from the base with the policy adapter off "
                "(LLaMA-Factory's reference for LoRA without ref_model); a separate reference model is "
                "not available",
                error=True,
            )
        elif key != "ref_model" and value is not None:
            self.note(key, "only read with ref_model, which rayft's stage ppo does not take")

    def ppo_key(self, key: str, value: Any) -> None:
        """stage ppo's keys that need more than a rename (STAGE_KEYS["ppo"] with None)."""
        n = as_number(value)
        kind = self.raw.get("reward_model_type", "lora")
        if key == "reward_model":
            if value and kind != "api":  # api: an address, said so at reward_model_type
                self.set("stage.reward_model", value)
        elif key == "reward_model_type":
            if value == "api":
                self.note(
                    key,
                    "rayft has no reward API: score with a reward model (a `stage: rm` output) or with "
                    "stage.reward_functions (a Python function, which may call the API)",
                    error=True,
                )
            elif value not in REWARD_MODEL_TYPES:
                self.note(key, f"LLaMA-Factory's reward_model_type is {', '.join(REWARD_MODEL_TYPES)}", error=True)
            # lora or full: rayft tells an adapter from a full model by the directory's files
        elif key in ("reward_model_adapters", "reward_model_quantization_bit"):
            # LLaMA-Factory reads them for a full reward model only (a LoRA one sits on the policy's own base)
            self.side_model_key(
                key,
                value,
                kind == "full",
                "reward model",
                "reward_model",
                "only read with reward_model_type full",
                "rayft loads a full reward model unquantized in the run's dtype (more memory, the same "
                "scores as it was trained to give)",
            )
        elif key == "ppo_buffer_size":
            if value is not None and n != 1:
                self.note(
                    key,
                    "rayft's rollout batch is each worker's per_device_train_batch_size x "
                    "gradient_accumulation_steps responses, with one optimizer step per ppo epoch over it "
                    "(LLaMA-Factory's ppo_buffer_size 1); a buffer of several such batches is not available",
                    error=True,
                )
        elif key == "ppo_whiten_rewards":
            if value:
                self.note(
                    key,
                    "rayft whitens the advantages (stage.whiten_advantages, as TRL does too), not the "
                    "rewards before them",
                    error=True,
                )
        elif key == "ppo_logger":
            if value is not None:
                self.note(
                    key,
                    "rayft logs PPO's metrics to metrics.jsonl and the trackers named by report_to (output.report_to)",
                )

    def generation_key(self, key: str, value: Any) -> None:
        """LLaMA-Factory's generation keys, which sample stage ppo's rollouts (LF_GENERATION)."""
        n = as_number(value)
        if key in ("temperature", "top_p"):
            self.set(f"stage.{key}", n)
        elif key == "max_new_tokens":
            if isinstance(n, (int, float)) and n <= 0:
                self.note(
                    key,
                    "rayft caps responses at stage.max_new_tokens (at least 1); LLaMA-Factory's "
                    "fallback to max_length (prompt and response together) is not available",
                    error=True,
                )
            else:
                self.set("stage.max_new_tokens", n)
        elif key == "top_k":
            if n not in (0, None):  # 0: off, as in rayft. LLaMA-Factory's default (also when unset) is only noted.
                self.note(
                    key,
                    "rayft's rollouts sample by temperature and top_p alone; top_k is not available "
                    f"(LLaMA-Factory's default is {LF_GENERATION['top_k']}, 0 turns it off)",
                    error=n != LF_GENERATION["top_k"],
                )
        elif key == "do_sample":
            if value is False:
                self.note(
                    key,
                    "greedy decoding is not available for rayft's PPO rollouts: they sample with "
                    "stage.temperature and stage.top_p",
                    error=True,
                )
        elif key == "num_beams":
            if value is not None and n != 1:
                self.note(
                    key,
                    "beam search is not available for rayft's PPO rollouts: they sample one response per prompt",
                    error=True,
                )
        elif key == "repetition_penalty":
            if value is not None and n != 1:
                self.note(key, "a repetition penalty is not available for rayft's PPO rollouts", error=True)
        elif key == "length_penalty":
            if value is not None and n != 1:
                self.note(key, "applies to beam search only, which rayft's PPO rollouts do not use")
        elif key == "max_length":
            if value is not None and n != LF_GENERATION["max_length"]:
                self.note(
                    key,
                    "LLaMA-Factory reads it only when max_new_tokens is 0 or less; rayft caps responses "
                    "at stage.max_new_tokens",
                )
