"""Stage kto: KTO (Ethayarajh et al. 2024). Single answers tagged desirable or undesirable, judged
against a frozen reference (see preference.Reference) and a baseline KL estimate.

The KL baseline is estimated on mismatched pairs: each prompt with the answer of another row of the
same encoding batch, scored without gradient (as in TRL), averaged over every worker's micro-batch.
"""

from __future__ import annotations

from typing import Any

import torch

from rayft_core.config import RunConfig
from rayft_core.data.collate import pad_batch
from rayft_core.train.losses import sequence_logps
from rayft_core.train.preference import Reference, encode_conversations, reference_problems, without_dropout
from rayft_core.train.stage import SupervisedStage


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-answer losses and rewards [answers]; ``desirable`` is a bool tensor and ``kl`` the (detached) baseline."""
    ratio = policy_logps - ref_logps
    desirable_losses = desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl)))
    undesirable_losses = undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio)))
    return torch.where(desirable, desirable_losses, undesirable_losses), beta * ratio.detach()


class Feedback(SupervisedStage):
    name = "kto"
    columns = ("input_ids", "labels", "kl_input_ids", "kl_labels", "kto_tag")

    def check(self, run, model):
        return reference_problems(run)

    def encode_rows(self, rows: list[dict], tokenizer: Any, run: RunConfig) -> dict[str, list]:
        prompts = [{**r, "messages": r["messages"][:-1]} for r in rows]
        answers = [r["messages"][-1] for r in rows]
        mismatched = answers[1:] + answers[:1]  # row i's prompt with row i+1's answer
        both = encode_conversations(prompts + prompts, answers + mismatched, tokenizer, run)
        n = len(rows)
        return {
            "input_ids": both["input_ids"][:n],
            "labels": both["labels"][:n],
            "kl_input_ids": both["input_ids"][n:],
            "kl_labels": both["labels"][n:],
            "kto_tag": [r["kto_tag"] for r in rows],
            "row_of_example": list(range(n)),
        }

    def prepare_model(self, model, run):
        return without_dropout(model)

    def loss_units(self, examples: dict[str, Any]) -> int:
        """The loss is a mean over answers."""
        return sum(self.real_rows(examples))

    def collate(self, examples: dict[str, Any], pad_token_id: int) -> dict[str, torch.Tensor]:
        batch = pad_batch(examples, pad_token_id)
        kl = pad_batch({"input_ids": examples["kl_input_ids"], "labels": examples["kl_labels"]}, pad_token_id)
        return {
            **batch,
            **{f"kl_{k}": v for k, v in kl.items()},
            "kto_tag": torch.as_tensor(list(examples["kto_tag"]), dtype=torch.bool),
        }

    def objective(self, run, tokenizer, device, ds_config):
        cfg = run.stage
        reference = Reference(run, tokenizer, device, ds_config)

        def step(model, batch):
            answers = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
            mismatched = {k: batch[f"kl_{k}"] for k in ("input_ids", "attention_mask", "labels")}
            sums, counts = sequence_logps(model, answers)
            with torch.no_grad():
                kl_sums, kl_counts = sequence_logps(model, mismatched)
                kl = (kl_sums - reference.logps(model, mismatched)).sum()
                kl_n = (kl_counts > 0).sum().float()  # padding rows and masked bad rows have no labels: no estimate
                both = torch.stack([kl, kl_n])
                if torch.distributed.is_initialized():
                    torch.distributed.all_reduce(both)
                kl = (both[0] / both[1].clamp(min=1)).clamp(min=0)
            ref_sums = reference.logps(model, answers)
            desirable = batch["kto_tag"]
            valid = (counts > 0).float()
            losses, rewards = kto_loss(
                sums, ref_sums, desirable, kl, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight
            )
            if cfg.ftx:  # SFT on desirable answers
                losses = losses - cfg.ftx * desirable.float() * sums / counts.clamp(min=1)
            good, bad = desirable.float() * valid, (~desirable).float() * valid
            metrics = {
                "loss": (float((losses.detach() * valid).sum()), float(valid.sum())),
                "rewards/chosen": (float((rewards * good).sum()), float(good.sum())),
                "rewards/rejected": (float((rewards * bad).sum()), float(bad.sum())),
                "logps/chosen": (float((sums.detach() * good).sum()), float(good.sum())),
                "logps/rejected": (float((sums.detach() * bad).sum()), float(bad.sum())),
                "kl": (float(kl), 1.0),
            }
            return (losses * valid).sum(), metrics

        return step


STAGE = Feedback()
