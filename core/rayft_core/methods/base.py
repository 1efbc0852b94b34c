"""What every tuning method declares besides its keys (rayft_core.methods holds the registry of them).

A method is one class, the `tuning:` section of a run config, whose methods say how the run trains with it:

- ``apply(model, run)``: wrap or freeze the loaded model so exactly the right parameters train;
- ``param_groups(model, run)``: the optimizer's parameter groups (learning rate, weight decay, projections);
- ``optimizer``: the name of its optimizer in rayft_core.train.optim.OPTIMIZERS (or, where ``make_optimizer``
  builds it, a name for messages);
- ``make_optimizer(groups, run, model)``: build its optimizer itself (a plug-in's; built-ins name theirs);
- ``problems(run)``: its rules on the rest of the run (ZeRO stage...), each as 'path: what to change';
- ``missing_dependency()``: the optional package it needs and is not installed, with the pip extra to install;
- ``aliases``: shorthand method names (`tuning: qlora`) and the keys they stand for.

The defaults here are those of full fine-tuning: every parameter trains with AdamW.
Nothing here imports torch: the run schema imports every method, and torch, peft and the methods' packages
are imported inside the functions that use them.
"""

# No `from __future__ import annotations` in the method modules: pydantic would then evaluate each field's
# annotation from its string when the class is made, which slows `import rayft_core.config`.

import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from rayft_core.schema import Section

if TYPE_CHECKING:
    import torch
    from torch import nn

# A rayft_core.config.RunConfig. Not imported, even for type checking: the run schema is built from this
# package, and an import back would close a circle.
Run = Any


class Dependency(NamedTuple):
    """An optional package a method needs: its import name, its pip name, and the rayft extra that installs it."""

    module: str
    package: str
    extra: str

    def missing(self, key: str) -> str | None:
        """None when installed, else the problem as 'key needs package: pip install ...'."""
        if importlib.util.find_spec(self.module) is None:
            return f"{key} needs {self.package}: pip install 'rayft[{self.extra}]'"
        return None


class TuningSection(Section):
    """The `tuning:` section of one method (see the module's docstring)."""

    # Class variables, not keys; a method sets them without annotating them again (`optimizer = "..."`).
    optimizer: ClassVar[str] = "adamw"
    trains_adapter: ClassVar[bool] = False  # a PEFT adapter on a frozen base (saved alone, trained in fp32)
    # Trains from forward passes alone (MeZO): the loop calls its optimizer's forward_only(model, objective, batch)
    # instead of a backward pass, and there is no gradient to clip.
    forward_only: ClassVar[bool] = False
    aliases: ClassVar[dict[str, dict[str, Any]]] = {}

    def apply(self, model: "nn.Module", run: Run) -> "nn.Module":
        """Make exactly the parameters of this method trainable; return the model to train."""
        model.requires_grad_(True)
        return model

    def param_groups(self, model: "nn.Module", run: Run) -> list[dict]:
        lr = run.train.learning_rate
        return decay_groups(model, run, lambda name: lr)

    def make_optimizer(self, groups: list[dict], run: Run, model: "nn.Module") -> "torch.optim.Optimizer | None":
        """The optimizer over ``groups``, or None: the one ``optimizer`` names (train.optimizer's, for adamw)."""
        return None

    def problems(self, run: Run) -> list[str]:
        return []

    def missing_dependency(self) -> str | None:
        return None


def no_decay(name: str, p: Any) -> bool:
    """Biases and norm scales are not decayed. A ZeRO-3 parameter is a flat shard: its own shape is ds_shape."""
    return len(getattr(p, "ds_shape", p.shape)) < 2 or "norm" in name.lower()


def decay_groups(model: "nn.Module", run: Run, lr_of: Callable[[str], float]) -> list[dict]:
    """The trainable parameters grouped by (learning rate, decayed or not): ``lr_of(name)`` gives a parameter's
    learning rate; biases and norm scales are not decayed. The groups do not depend on the weight decay's value, so
    a checkpoint loads into a run that changes it (train.schedule, a resumed run, a PBT trial)."""
    wd = run.train.weight_decay
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((lr_of(name), not no_decay(name, p)), []).append(p)
    return [{"params": ps, "lr": g_lr, "weight_decay": wd if decays else 0.0} for (g_lr, decays), ps in groups.items()]


def nonempty_target(target: Any) -> Any:
    """A `target` key's validator: 'all', or a list naming at least one module."""
    if isinstance(target, list) and not [t for t in target if str(t).strip()]:
        raise ValueError(
            "an empty list of modules would train nothing; name modules (q_proj, v_proj, ...) or use 'all'"
        )
    return target
