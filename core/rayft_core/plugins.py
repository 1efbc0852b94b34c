"""A user's own code named in a run config: 'path/to/file.py:name' or 'package.module:name'.

Reward functions (stage.reward_functions), tuning methods (tuning.method), optimizers (train.optimizer) and token
losses (train.token_loss) take such a reference where they take a built-in name; docs/extending.md shows how.
The run travels to the workers as JSON and is validated again there, so each worker loads the file itself: a
relative path is made absolute on the driver (RunConfig.with_absolute_paths), and on a remote cluster the file
must reach the workers (the job's working_dir, or an installed package).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from rayft_core.errors import UserInputError


def is_reference(name: Any) -> bool:
    """'something:name' names user code; a built-in name has no colon."""
    return isinstance(name, str) and ":" in name


def split_reference(ref: str) -> tuple[str, str]:
    """'where:name' -> (where, name); where is a .py file or a module."""
    where, _, attr = ref.rpartition(":")
    return where, attr


def load_object(ref: str, what: str) -> Any:
    """The object ``ref`` names; ``what`` ('reward function', 'tuning method'...) starts every error."""
    where, attr = split_reference(ref)
    if not where or not attr:
        raise UserInputError(f"{what} {ref!r}: name 'package.module:name' or 'path/to/file.py:name'")
    if where.endswith(".py") and not Path(where).expanduser().is_file():
        raise UserInputError(f"{what} {ref!r}: no file {where}")
    try:
        module = _load_file(where) if where.endswith(".py") else importlib.import_module(where)
    except Exception as e:  # its import failed: say so with the cause, not a traceback from deep inside
        raise UserInputError(f"{what} {ref!r}: importing {where} failed: {type(e).__name__}: {e}") from e
    if not hasattr(module, attr):
        raise UserInputError(f"{what} {ref!r}: {where} has no {attr!r}")
    return getattr(module, attr)


def _load_file(path: str) -> Any:
    """A .py file as a module, loaded once per process under a name made from its absolute path (two files of one
    name stay apart, and a class loaded twice stays one class)."""
    file = Path(path).expanduser()
    name = "rayft_plugin_" + "".join(c if c.isalnum() else "_" for c in str(file.absolute()))
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before running it: a dataclass or pydantic model in it looks itself up there
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def absolute_reference(ref: str) -> str:
    """A file reference with its path made absolute (for workers in other working directories); others as given."""
    where, attr = split_reference(ref)
    if where.endswith(".py") and Path(where).expanduser().is_file():
        return f"{Path(where).expanduser().absolute()}:{attr}"
    return ref


def name_or_reference(names: tuple[str, ...]) -> Any:
    """A config key's type: one of ``names`` (built-ins), or a reference to user code. The error for a name that is
    neither lists the names and the closest one; the JSON schema lists them too."""
    from typing import Annotated

    from pydantic import AfterValidator, WithJsonSchema

    def check(value: str) -> str:
        if value in names or is_reference(value):
            return value
        close = difflib.get_close_matches(value, names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ValueError(f"{hint}choose one of {', '.join(names)}, or name your own as 'path/to/file.py:name'")

    schema = {"anyOf": [{"enum": list(names), "type": "string"}, {"pattern": "^.+:[A-Za-z_]\\w*$", "type": "string"}]}
    return Annotated[str, AfterValidator(check), WithJsonSchema(schema)]
