"""Read a LLaMA-Factory 0.9.5 training YAML (flat keys) as a rayft run config.

    rayft config import-llamafactory llama3_lora_sft.yaml -o run.yaml   # or straight: rayft train llama3_lora_sft.yaml

    raw, notes = translate(yaml.safe_load(open("llama3_lora_sft.yaml")))
    run = validate_config(raw)

Every input key is accounted for: written to a rayft section, honoured by what rayft does anyway
(`do_train: true`, `plot_loss: true`), or named in a note that starts with the LLaMA-Factory key as the YAML
writes it, then its value and the reason. Notes starting with "error: " mean the run would not be the one
asked for: a value that would change what is trained (the model, data, loss, optimizer, schedule,
precision...) and that rayft cannot reproduce, or one LLaMA-Factory refuses too (`bf16` with `fp16`);
`rayft train` refuses to start on those. Warnings name what leaves the trained model as it would be (logging,
speed, uploads, another stage's keys). Keys left unset take LLaMA-Factory's defaults where they differ from
rayft's and change what is trained (LF_DEFAULTS, LF_PREF_BETA), so a translated run trains like the original.

Stages: pt, sft, rm, ppo and kto keep their names; dpo becomes rayft's dpo, or orpo or simpo when pref_loss
selects those losses, as LLaMA-Factory selects them (the same loss: pref_beta is ORPO's lambda and SimPO's
beta, simpo_gamma SimPO's margin).

ppo scores with reward_model (a `stage: rm` output, adapter or full model: rayft tells which from the
directory) and takes the values LLaMA-Factory's PPO trains with when unset (LF_PPO_DEFAULTS): its ppo_epochs,
TRL's adaptive KL controller (init_kl_coef 0.2, ppo_target 6.0) and its sampling (max_new_tokens, temperature,
top_p), which map to stage keys for ppo only (other stages note them as before). Its rollout batch is the same:
per_device_train_batch_size x gradient_accumulation_steps responses per worker, one optimizer step per ppo
epoch (ppo_buffer_size 1). LLaMA-Factory cuts prompts to cutoff_len and generates max_new_tokens after them;
rayft's data.max_seq_len holds both, so it becomes cutoff_len + max_new_tokens (rayft drops a longer prompt
where LLaMA-Factory would cut it). LLaMA-Factory's PPO never evaluates, nor does rayft's: eval data is noted.

What each key means (the tables and the per-key handlers) is in rayft_core.llamafactory_keys; this module
walks a YAML through them.
"""

from __future__ import annotations

import json
import typing
from typing import Any

import yaml

from rayft_core import config as schema
from rayft_core.llamafactory_keys import SPECIAL, stage_words
from rayft_core.llamafactory_stages import StageKeys
from rayft_core.llamafactory_tables import (
    DIRECT,
    DPO_LOSS_STAGES,
    ERROR,
    FINETUNING_TYPES,
    LF_DEFAULTS,
    LF_GALORE_SCALE,
    LF_GENERATION,
    LF_METHOD_DEFAULTS,
    LF_PPO_DEFAULTS,
    LF_PREF_BETA,
    LIST_KEYS,
    MARKERS,
    METHOD_KEYS,
    NO_DROPOUT_STAGES,
    OPTIMIZER_METHODS,
    PREF_STAGES,
    SECRET,
    STAGE_KEYS,
    STAGES,
    TEXT_KEYS,
    WARNING,
    WHY_NO_DROPOUT,
)
from rayft_core.llamafactory_values import NO_EFFECT, PREFIXES, REFUSED, as_list, as_number


def looks_like_llamafactory(raw: Any) -> bool:
    """A mapping of LLaMA-Factory's flat keys rather than rayft's sections."""
    return isinstance(raw, dict) and not isinstance(raw.get("model"), dict) and bool(MARKERS & raw.keys())


def is_error(note: str) -> bool:
    return note.startswith(ERROR)


def translate(raw: dict) -> tuple[dict, list[str]]:
    """LLaMA-Factory flat keys -> (a rayft raw config for ``validate_config``, notes on what it cannot honour)."""
    t = _Translation({**LF_DEFAULTS, **raw})
    t.run()
    return _in_schema_order(t.out), t.notes


def translate_runnable(raw: Any, source: str) -> tuple[dict, list[str]]:
    """``translate`` of the LLaMA-Factory YAML ``raw`` read from ``source``, validated as a rayft run; a
    UserInputError naming ``source`` when it is no such YAML, cannot run as written, or translates into an invalid
    config (what `rayft config import-llamafactory` and the web app's import share)."""
    from rayft_core.errors import UserInputError
    from rayft_core.schema import ConfigError

    if not looks_like_llamafactory(raw):
        raise UserInputError(
            f"{source}: not a LLaMA-Factory training YAML (no model_name_or_path, dataset, "
            f"finetuning_type... at the top level)"
        )
    translated, notes = translate(raw)
    errors = [n for n in notes if is_error(n)]
    if errors:
        raise UserInputError(f"{source}: cannot run in rayft as written:\n" + "\n".join(f"  - {n}" for n in errors))
    try:
        schema.validate_config(translated)
    except ConfigError as e:
        raise UserInputError(f"{source}: translated, but {e}") from e
    return translated, notes


def dump_translation(raw: dict, notes: list[str], source: str) -> str:
    """The translated config as YAML, its notes as comments at the top."""
    head = [f"# rayft run config translated from the LLaMA-Factory config {source}"]
    head += ["# Keys it could not honour:", *(f"#   {n}" for n in notes)] if notes else ["# Every key was honoured."]
    return "\n".join(head) + "\n" + yaml.safe_dump(raw, sort_keys=False)


class _Translation(StageKeys):
    def __init__(self, raw: dict):
        self.raw = raw
        self.out: dict[str, dict] = {}
        self.notes: list[str] = []
        ft = raw.get("finetuning_type", "lora")
        # GaLore, APOLLO and BAdam are optimizers over full fine-tuning in LLaMA-Factory, tuning methods in rayft.
        own = next((m for m in OPTIMIZER_METHODS if raw.get(f"use_{m}")), None)
        self.method = own if ft == "full" and own else ft
        stage = str(raw.get("stage", "sft"))
        self.stage = DPO_LOSS_STAGES.get(str(raw.get("pref_loss")), "dpo") if stage == "dpo" else STAGES.get(stage)

    def set(self, path: str, value: Any) -> None:
        section, *keys = path.split(".")
        node = self.out.setdefault(section, {})
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value

    def note(self, key: str, why: str, error: bool = False) -> None:
        value = "***" if SECRET.search(key) else json.dumps(self.raw.get(key, "(missing)"), default=str)
        self.notes.append(f"{ERROR if error else WARNING}{key}: {value} -- {why}")

    def run(self) -> None:
        self.header()
        for key, value in self.raw.items():
            if key in ("stage", "max_samples"):  # read by header and finish_data
                continue
            if key in SPECIAL:
                SPECIAL[key](self, key, value)
            elif key in DIRECT:
                self.set(DIRECT[key], value if key in TEXT_KEYS else as_number(value))
            elif any(key in keys for keys in METHOD_KEYS.values()):
                self.method_key(key, value)
            elif any(key in keys for keys in STAGE_KEYS.values()):
                self.stage_key(key, value)
            elif key in LF_GENERATION and self.stage == "ppo":
                self.generation_key(key, value)
            elif key in NO_EFFECT:
                ok, why = NO_EFFECT[key]
                if as_number(value) not in ok:
                    self.note(key, why)
            elif key in REFUSED:
                ok, why, needs = REFUSED[key]
                if as_number(value) not in ok:
                    read = needs is None or bool(self.raw.get(needs))  # else LLaMA-Factory ignores it too
                    self.note(key, why if read else f"only read with {needs}; no effect", error=read)
            elif (why := next((w for p, w in PREFIXES if str(key).startswith(p)), None)) is not None:
                self.note(key, why)
            else:
                self.note(key, "not a LLaMA-Factory 0.9.5 training key that rayft knows; no effect")
        self.finish_data()

    def header(self) -> None:
        """The keys the others depend on: model, data, stage, method."""
        for key, what in (("model_name_or_path", "the model to fine-tune"), ("dataset", "the training data")):
            if not self.raw.get(key):
                self.note(key, f"required: {what}", error=True)
        if self.stage:
            self.set("stage.name", self.stage)
            if self.stage in PREF_STAGES:
                self.set("stage.beta", LF_PREF_BETA)  # pref_beta, when given, replaces it
        else:
            self.note(
                "stage",
                "not a LLaMA-Factory 0.9.5 stage rayft translates (pt, sft, rm, ppo, dpo and kto are; "
                "pref_loss orpo or simpo with stage dpo trains rayft's orpo or simpo; rayft's grpo "
                "is written as a rayft config)",
                error=True,
            )
        if self.stage == "ppo":
            for field, value in LF_PPO_DEFAULTS.items():  # the keys that set them, when given, replace them
                self.set(f"stage.{field}", value)
            if not self.raw.get("reward_model"):  # LLaMA-Factory refuses PPO without one too
                self.note(
                    "reward_model",
                    "required by stage ppo: a reward model (a `stage: rm` output); rayft can "
                    "also score with stage.reward_functions (verifiable rewards, written in a "
                    "rayft config) instead of or beside it",
                    error=True,
                )
            if "top_k" not in self.raw:
                self.generation_key("top_k", LF_GENERATION["top_k"])
        if self.method == "oft":  # PEFT's OFT on every linear layer unless oft_target names them
            self.set("tuning.method", "peft")
            self.set("tuning.type", "OFT")
            if "oft_target" not in self.raw:
                self.set("tuning.config.target_modules", "all-linear")
        elif self.method in (*FINETUNING_TYPES, *OPTIMIZER_METHODS):
            self.set("tuning.method", self.method)
        if self.method == "galore":
            self.set("tuning.scale", LF_GALORE_SCALE)
        if self.method in OPTIMIZER_METHODS:
            # ZeRO flattens or shards the weights they step whole (rayft_core.methods.galore, .badam).
            self.set("deepspeed.zero_stage", 0)
        # LLaMA-Factory checkpoints activations unless told not to. Left unset, rayft checkpoints where a worker's
        # memory needs it (model.gradient_checkpointing auto) and skips recomputing every layer where it does not.
        if "disable_gradient_checkpointing" in self.raw:
            self.set("model.gradient_checkpointing", not self.raw["disable_gradient_checkpointing"])

    def method_key(self, key: str, value: Any) -> None:
        # additional_target belongs to LoRA and OFT both: the run's own method first
        owner = next(m for m in (self.method, *METHOD_KEYS) if key in METHOD_KEYS.get(m, {}))
        if owner != self.method:
            if value is not None and as_number(value) != LF_METHOD_DEFAULTS[key]:  # LLaMA-Factory ignores them too
                needs = (
                    f"finetuning_type full with use_{owner}"
                    if owner in OPTIMIZER_METHODS
                    else f"finetuning_type {owner}"
                )
                # ...but refuses a quantized base outside LoRA
                self.note(key, f"applies to {needs} only", error=key == "quantization_bit")
            return
        if key in LIST_KEYS:
            value = as_list(value)
            value = "all" if value == ["all"] and key != "freeze_extra_modules" else value
            value = "all-linear" if value == "all" and key == "oft_target" else value  # PEFT's name for it
        n = as_number(value)
        if key == "pissa_init":
            if value and self.stage in ("dpo", "kto", "ppo"):
                # PiSSA rewrites the base weights, so the adapter-disabled reference is no longer the base model.
                self.note(
                    key,
                    f"a PiSSA adapter cannot serve stage {self.stage}'s reference (the base with the "
                    "adapter disabled); LLaMA-Factory refuses it too",
                    error=True,
                )
            elif value:
                self.set("tuning.init", "pissa")
        elif key == "lora_dropout" and self.stage in NO_DROPOUT_STAGES:
            if n and self.stage in WHY_NO_DROPOUT:  # LLaMA-Factory would train with it: another model
                self.note(
                    key,
                    f"rayft's stage {self.stage} trains without dropout ({WHY_NO_DROPOUT[self.stage]}): "
                    "set lora_dropout 0",
                    error=True,
                )
            elif n:
                self.note(
                    key,
                    f"LLaMA-Factory switches dropout off for its {stage_words(self.stage)} training, "
                    "so rayft leaves it at 0 too",
                )
        elif key == "quantization_bit":
            if n in (4, 8):
                self.set("tuning.quantization_bit", n)
            elif value is not None:
                self.note(key, "rayft quantizes to 4 or 8 bits with bitsandbytes", error=True)
        elif key == "freeze_trainable_layers":
            if isinstance(n, int) and n < 0:
                self.note(key, "rayft trains the last N layers; training the first N is not available", error=True)
            else:
                self.set("tuning.trainable_layers", n)
        elif key == "freeze_trainable_modules":
            if as_list(value) != ["all"]:
                self.note(key, "rayft trains whole layers; name extra parameters in freeze_extra_modules", error=True)
        elif METHOD_KEYS[owner][key] is None:  # GaLore's and APOLLO's options rayft has one value of
            self.projection_key(key, value)
        else:
            self.set(f"tuning.{METHOD_KEYS[owner][key]}", n)

    def projection_key(self, key: str, value: Any) -> None:
        if key.endswith("_proj_type") and value != "std":
            self.note(key, "rayft projects with the standard (std) projection", error=True)
        elif key.endswith("_layerwise") and value:
            self.note(key, "layer-wise optimizer steps are not available in rayft", error=True)
        elif key == "apollo_scale_front" and value:
            self.note(key, "rayft scales APOLLO's update after the norm-growth limiter (the default)", error=True)
        elif key == "badam_verbose" and value:
            self.note(key, "rayft does not print BAdam's block switches; no effect")

    def finish_data(self) -> None:
        """max_samples caps every dataset, evaluation ones too, as in LLaMA-Factory. Stage ppo: LLaMA-Factory cuts
        prompts to cutoff_len and generates up to max_new_tokens after them; rayft's max_seq_len holds both."""
        n = self.raw.get("max_samples")
        data = self.out.get("data", {})
        for spec in data.get("train", []) + data.get("eval", []):
            if n is not None:
                spec["num_samples"] = as_number(n)
        new_tokens, cutoff = self.out.get("stage", {}).get("max_new_tokens"), data.get("max_seq_len")
        if self.stage == "ppo" and all(isinstance(v, int) and not isinstance(v, bool) for v in (new_tokens, cutoff)):
            data["max_seq_len"] = cutoff + new_tokens


def _in_schema_order(out: dict) -> dict:
    """Sections and their keys in the schema's order, so the YAML reads like rayft's own examples."""
    members = {
        section: {
            m.model_fields[tag].default: m for m in typing.get_args(schema.RunConfig.model_fields[section].annotation)
        }
        for section, (tag, _) in schema.UNION_TAGS.items()
    }
    ordered = {}
    for section, field in schema.RunConfig.model_fields.items():
        if section not in out:
            continue
        values = out[section]
        model = (
            members[section].get(values.get(schema.UNION_TAGS[section][0])) if section in members else field.annotation
        )
        order = list(model.model_fields) if model else []
        values = dict(sorted(values.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
        tag = schema.UNION_TAGS.get(section, ("",))[0]
        ordered[section] = values[tag] if list(values) == [tag] else values  # `stage: sft`, as rayft's examples read
    return ordered
