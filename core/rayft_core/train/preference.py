"""What the preference stages share: pairs encoded and batched, the frozen reference, pair metrics.

A pair is the prompt with its chosen answer and the prompt with its rejected answer, each tokenized
as a whole conversation with the loss on the final answer only (earlier assistant turns are prompt).
A batch of B pairs is one forward pass over 2B rows: the chosen rows first, the rejected rows last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rayft_core.config import RunConfig
from rayft_core.data.collate import pad_batch
from rayft_core.data.tokenize import encode_chat_batch
from rayft_core.train.losses import decoder_hidden, labelled_logps, sequence_logps
from rayft_core.train.stage import Metrics, SupervisedStage

# What the frozen reference's own (optimizer-less) DeepSpeed engine takes from the policy's config.
REFERENCE_DS_KEYS = (
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "train_batch_size",
    "bf16",
    "fp16",
)
PAIR_COLUMNS = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")


def encode_conversations(rows: list[dict], answers: list[dict], tokenizer: Any, run: RunConfig) -> dict[str, list]:
    """Each row's messages followed by its answer -> input_ids and labels on that answer only."""
    return encode_chat_batch(
        tokenizer,
        [r["messages"] + [a] for r, a in zip(rows, answers)],
        run.data.max_seq_len,
        mask_history=True,
        batch_tools=[r.get("tools") for r in rows],
    )


class PairStage(SupervisedStage):
    """rm, dpo, orpo and simpo: rows of (prompt, chosen, rejected)."""

    columns = PAIR_COLUMNS

    def prepare_model(self, model: torch.nn.Module, run: RunConfig) -> torch.nn.Module:
        return without_dropout(model)

    def loss_units(self, examples: dict[str, Any]) -> int:
        """The loss is a mean over pairs."""
        return sum(self.real_rows(examples))

    def encode_rows(self, rows: list[dict], tokenizer: Any, run: RunConfig) -> dict[str, list]:
        both = encode_conversations(
            rows + rows, [r["chosen"] for r in rows] + [r["rejected"] for r in rows], tokenizer, run
        )
        n = len(rows)
        return {
            "chosen_input_ids": both["input_ids"][:n],
            "chosen_labels": both["labels"][:n],
            "rejected_input_ids": both["input_ids"][n:],
            "rejected_labels": both["labels"][n:],
            "row_of_example": list(range(n)),
        }

    def collate(self, examples: dict[str, Any], pad_token_id: int) -> dict[str, torch.Tensor]:
        return pad_batch(
            {
                "input_ids": list(examples["chosen_input_ids"]) + list(examples["rejected_input_ids"]),
                "labels": list(examples["chosen_labels"]) + list(examples["rejected_labels"]),
            },
            pad_token_id,
        )


def without_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Dropout off everywhere, as TRL's and LLaMA-Factory's preference trainers do: the stages compare
    scores of two answers (or the policy with its reference), and dropout would add noise to both sides."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen rows and the rejected rows of a pair batch."""
    n = x.shape[0] // 2
    return x[:n], x[n:]


def pair_logps(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], ld_alpha: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of a pair batch: its answer's summed log-probability and its labelled tokens (sequence_logps).

    With ``ld_alpha`` (LD-DPO, Liu et al. 2024, arXiv:2409.06411): a pair's answers count their first
    min(chosen, rejected) tokens whole and the longer answer's tokens past that ld_alpha times, so that the
    preference is learned less from length. LLaMA-Factory weighs the policy's log-probabilities so, not the
    reference's; rayft's stages call it the same way."""
    if ld_alpha is None:
        return sequence_logps(model, batch)
    base, hidden = decoder_hidden(model, batch)
    logps, keep = labelled_logps(base, hidden, batch["labels"])
    counts = keep.sum(-1)
    public = torch.minimum(*halves(counts)).repeat(2)  # the shorter answer's length, for both rows of a pair
    verbose = keep.cumsum(-1) > public[:, None]  # the answer's tokens past it
    return torch.where(verbose, ld_alpha * logps, logps).sum(-1), counts


def valid_pairs(counts: torch.Tensor) -> torch.Tensor:
    """1.0 for each pair whose chosen and rejected rows both carry labels (a streamed bad row is masked
    to one without), else 0.0; ``counts`` is labelled tokens per row of a pair batch."""
    chosen, rejected = halves(counts)
    return ((chosen > 0) & (rejected > 0)).float()


def pair_metrics(
    loss: torch.Tensor,
    valid: torch.Tensor,
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    chosen_logps: torch.Tensor | None = None,
    rejected_logps: torch.Tensor | None = None,
) -> Metrics:
    """Per-pair metrics (TRL's names), summed over the valid pairs of the batch."""
    v = valid.float()
    n = float(v.sum())

    def total(x: torch.Tensor) -> tuple[float, float]:
        return float((x.detach().float() * v).sum()), n

    metrics = {
        "loss": total(loss),
        "rewards/chosen": total(chosen_rewards),
        "rewards/rejected": total(rejected_rewards),
        "rewards/accuracies": total((chosen_rewards > rejected_rewards).float()),
        "rewards/margins": total(chosen_rewards - rejected_rewards),
    }
    if chosen_logps is not None:
        metrics.update({"logps/chosen": total(chosen_logps), "logps/rejected": total(rejected_logps)})
    return metrics


def reference_problems(run: RunConfig) -> list[str]:
    """The driver's check of stage.reference_model (DPO and KTO)."""
    reference = run.stage.reference_model
    if reference and not (Path(reference).expanduser() / "config.json").is_file():
        return [
            f"stage.reference_model: {reference!r} has no config.json; point it at a model directory "
            "written by save_pretrained"
        ]
    return []


class Reference:
    """The frozen reference policy of DPO and KTO.

    - an adapter run without stage.reference_model: the trained model with its adapter disabled
      (PEFT's disable_adapter), so the base is never held twice;
    - otherwise a frozen copy (of the base, or of stage.reference_model), sharded like the policy
      under ZeRO-3 and whole on each worker under ZeRO-0/1/2.
    """

    def __init__(self, run: RunConfig, tokenizer: Any, device: torch.device, ds_config: dict[str, Any]):
        self.model = None
        reference = getattr(run.stage, "reference_model", None)  # sft's ASFT has none: its base
        if reference is None and run.tuning.trains_adapter:
            return
        from rayft_core.model.loader import load_model
        from rayft_core.model.zero3 import build_partitioned, mark_zero3_leaves

        ref_run = run.model_copy(deep=True)
        if reference:
            ref_run.model.name_or_path = reference
        ref_run.model.gradient_checkpointing = False
        config = {k: ds_config[k] for k in REFERENCE_DS_KEYS if k in ds_config}
        config["zero_optimization"] = {"stage": 3, "stage3_param_persistence_threshold": 1e4}
        zero3 = run.deepspeed.zero_stage == 3
        model = build_partitioned(lambda: load_model(ref_run, tokenizer), config if zero3 else None)  # as the policy
        model = model.requires_grad_(False).eval()
        if zero3:
            import deepspeed

            mark_zero3_leaves(model)
            model = deepspeed.initialize(model=model, config=config, dist_init_required=False)[0].module
        else:
            model = model.to(device)
        self.model = model

    @torch.no_grad()
    def hidden(self, policy: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.nn.Module, torch.Tensor]:
        """The reference's causal LM and its last hidden states for the batch (ASFT's anchor)."""
        if self.model is not None:
            return decoder_hidden(self.model, batch)
        with policy.disable_adapter():
            return decoder_hidden(policy, batch)

    @torch.no_grad()
    def logps(self, policy: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.model is not None:
            return sequence_logps(self.model, batch)[0]
        with policy.disable_adapter():
            return sequence_logps(policy, batch)[0]
