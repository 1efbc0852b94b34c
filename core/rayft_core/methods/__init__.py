"""The tuning methods: the registry of them, and the run schema's `tuning:` union built from it.

One module a method (full, freeze, lora, galore), each holding one class: its config section and what the run
does with it (rayft_core.methods.base says what a method declares). The run schema (rayft_core.config), the model
wrapping (rayft_core.model.adapters), the optimizer (rayft_core.train.optim) and the checks before a run starts
ask ``run.tuning`` instead of testing its name.

Adding a method: write ``rayft_core/methods/NAME.py`` with a ``TuningSection`` subclass whose ``method`` is
``Literal["NAME"]`` and whose fields are its keys, overriding what differs from full fine-tuning (apply,
param_groups, optimizer, problems, missing_dependency, aliases), without `from __future__ import annotations`
(see base); add it to METHODS below; test it in tests/core/test_tuning.py. A new optimizer goes in
rayft_core.train.optim.OPTIMIZERS, a new optional package in pyproject.toml's extras.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field

from rayft_core.methods.apollo import ApolloTuning
from rayft_core.methods.badam import BadamTuning
from rayft_core.methods.base import Run, TuningSection
from rayft_core.methods.freeze import FreezeTuning
from rayft_core.methods.full import FullTuning
from rayft_core.methods.galore import GaloreTuning
from rayft_core.methods.lora import LoraTuning
from rayft_core.methods.peft_tuner import PeftTuning

# name -> its section; the name is the section's `method` literal (tests/core/test_tuning.py checks it).
METHODS: dict[str, type[TuningSection]] = {
    "full": FullTuning,
    "freeze": FreezeTuning,
    "lora": LoraTuning,
    "galore": GaloreTuning,
    "apollo": ApolloTuning,
    "badam": BadamTuning,
    "peft": PeftTuning,
}

# typing.Union takes the registry's sections as a tuple; `X | Y` cannot be written for a list known at run time.
TuningConfig = Annotated[Union[tuple(METHODS.values())], Field(discriminator="method")]  # type: ignore  # noqa: UP007


def expand_alias(section: dict[str, Any]) -> dict[str, Any]:
    """`{method: qlora, ...}` -> `{method: lora, quantization_bit: 4, ...}`: a method's shorthand names (its
    ``aliases``) stand for it with some keys set; keys given explicitly win."""
    tag = section.get("method")
    for name, method in METHODS.items():
        if isinstance(tag, str) and tag in method.aliases:
            return {**method.aliases[tag], **section, "method": name}
    return section


def plugin_method(ref: str) -> type[TuningSection]:
    """A user's tuning method, 'path/to/file.py:Class' or 'package.module:Class' (docs/extending.md): a
    TuningSection subclass with a `method: str` key, which holds the reference itself."""
    from rayft_core.errors import UserInputError
    from rayft_core.plugins import load_object

    method = load_object(ref, "tuning method")
    if not (isinstance(method, type) and issubclass(method, TuningSection)):
        raise UserInputError(f"tuning method {ref!r}: not a subclass of rayft_core.methods.TuningSection")
    if "method" not in method.model_fields:
        raise UserInputError(f"tuning method {ref!r}: {method.__name__} has no `method: str` key to hold its name")
    return method


def missing_dependencies(run: Run) -> list[str]:
    """The optional packages the run's tuning method needs and this environment lacks, each with its pip extra."""
    missing = run.tuning.missing_dependency()
    return [missing] if missing else []


__all__ = [
    "ApolloTuning",
    "BadamTuning",
    "METHODS",
    "FreezeTuning",
    "FullTuning",
    "GaloreTuning",
    "LoraTuning",
    "PeftTuning",
    "TuningConfig",
    "TuningSection",
    "expand_alias",
    "missing_dependencies",
    "plugin_method",
]
