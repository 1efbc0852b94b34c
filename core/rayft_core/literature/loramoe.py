"""LoRAMoE as a rayft plug-in: several LoRA experts on each MLP projection, mixed by a router.

Dou et al. 2024, "LoRAMoE: Alleviating World Knowledge Forgetting in Large Language Models via MoE-Style Plugin"
(ACL 2024): the base stays frozen; each targeted linear layer W gets ``experts`` low-rank experts B_e A_e and a
router, and computes W x + (alpha / rank) sum_e g_e(x) B_e A_e x with g = softmax(router(x)). A balancing loss
keeps the experts in use: ``balance_coef`` x the squared coefficient of variation of the experts' importance (the
sum of each expert's gate over the batch's tokens). The paper's localized variant splits the experts in two groups
by the sample's type (world knowledge or the new task), which needs data labelled so; here all experts form one
group. The loss is added to the gradients where the layers run (their output carries it backward), so any stage's
objective trains it.

Saved as the whole model: the base weights under their own names, the experts and routers beside them
(``*.loramoe.*``), and config.json's ``rayft_loramoe``. Plain transformers loads the base and drops the experts
(with a warning about unexpected keys); ``load(model_dir)`` here rebuilds the model with them. No merge exists
(the mixing depends on the input), so vLLM does not serve it.

    tuning: {method: rayft_core.literature.loramoe:LoRAMoE, experts: 4, rank: 8}
"""

import json
from pathlib import Path

import torch
from pydantic import Field
from torch import nn

from rayft_core.methods import TuningSection

CONFIG_KEY = "rayft_loramoe"


class LoRAMoE(TuningSection):
    method: str
    experts: int = Field(4, ge=2, description="LoRA experts per targeted layer.")
    rank: int = Field(8, ge=1, description="Each expert's rank.")
    alpha: float = Field(16.0, gt=0, description="Experts' scale alpha / rank.")
    target: list[str] = Field(
        default_factory=lambda: ["gate_proj", "up_proj", "down_proj"],
        description="Linear layers that get experts, by name (the paper: the MLP's).",
    )
    balance_coef: float = Field(0.01, ge=0, description="Weight of the experts' balancing loss.")

    def apply(self, model, run):
        model.requires_grad_(False)
        added = add_experts(model, self.target, self.experts, self.rank, self.alpha, self.balance_coef, run.train.seed)
        if not added:
            from rayft_core.methods.layers import TuningError

            raise TuningError(f"tuning.target: no linear layer of the model is named {', '.join(self.target)}")
        setattr(model.config, CONFIG_KEY, {k: getattr(self, k) for k in ("experts", "rank", "alpha", "target")})
        return model

    def problems(self, run):
        if run.deepspeed.zero_stage == 3:
            return ["deepspeed.zero_stage: LoRAMoE's experts are added to whole layers; use ZeRO 0-2"]
        return []


class Experts(nn.Module):
    """The experts and router of one linear layer, run by a forward hook on it."""

    def __init__(self, layer: nn.Linear, experts: int, rank: int, alpha: float, balance_coef: float):
        super().__init__()
        self.scale, self.balance_coef = alpha / rank, balance_coef
        self.router = nn.Linear(layer.in_features, experts, bias=False)
        self.A = nn.Parameter(torch.empty(experts, rank, layer.in_features))
        self.B = nn.Parameter(torch.zeros(experts, layer.out_features, rank))  # zero: the model starts as the base
        nn.init.kaiming_uniform_(self.A.view(-1, layer.in_features), a=5**0.5)
        nn.init.normal_(self.router.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.A.dtype)
        gates = torch.softmax(self.router(x).float(), dim=-1).to(x.dtype)  # [..., experts]
        low = torch.einsum("...i,eri->...er", x, self.A)
        out = torch.einsum("...er,eor,...e->...o", low, self.B, gates) * self.scale
        if self.training and self.balance_coef and torch.is_grad_enabled():
            importance = gates.reshape(-1, gates.shape[-1]).float().sum(0)
            cv2 = importance.var(unbiased=False) / importance.mean().square().clamp(min=1e-12)
            out = _WithLoss.apply(out, self.balance_coef * cv2)
        return out


class _WithLoss(torch.autograd.Function):
    """Its input unchanged; in backward, the loss's own gradient (d loss / d loss = 1) flows into the loss's graph,
    so the loss joins the run's objective without the objective computing it (DeepSeek-V2's auxiliary loss)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        ctx.loss_dtype = loss.dtype
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, torch.ones((), dtype=ctx.loss_dtype, device=grad.device)


def _hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return output + module.loramoe(inputs[0]).to(output.dtype)


def add_experts(
    model: nn.Module, target: list[str], experts: int, rank: int, alpha: float, coef: float, seed: int
) -> int:
    """Experts on every nn.Linear whose name ends with one of ``target``; returns how many layers got them."""
    torch.manual_seed(seed)  # every worker builds the same experts
    added = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in target:
            module.loramoe = Experts(module, experts, rank, alpha, coef).to(module.weight.device)
            module.register_forward_hook(_hook)
            added += 1
    return added


def load(model_dir: str | Path, **kwargs) -> nn.Module:
    """A saved LoRAMoE model with its experts (transformers alone loads the base without them)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from rayft_core.model.shards import weight_files

    config = json.loads((Path(model_dir) / "config.json").read_text())[CONFIG_KEY]
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    add_experts(model, config["target"], config["experts"], config["rank"], config["alpha"], 0.0, 0)
    state = {k: v for f in weight_files(model_dir) for k, v in load_file(str(f)).items() if ".loramoe." in k}
    missing = [k for k in model.state_dict() if ".loramoe." in k and k not in state]
    if missing:
        raise ValueError(f"{model_dir}: no saved weights for {missing[0]}")
    model.load_state_dict(state, strict=False)
    setattr(model.config, CONFIG_KEY, config)
    return model
