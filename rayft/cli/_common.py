"""What every `rayft` command shares: bad input is a message and exit code 2, never a traceback; a run config
read as the user gave it (rayft's YAML or LLaMA-Factory's) with key=value overrides.

Bad input has one path: commands (and the code they call) raise UserInputError, and RayftGroup, the class of
the top-level `rayft` group, prints it as one "error: ..." line on stderr and exits 2.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from rayft_core.config import RunConfig, load_config
from rayft_core.errors import UserInputError
from rayft_core.schema import ConfigError

EXIT_BAD_INPUT = 2


def run_config_arguments(command: Any) -> Any:
    """CONFIG_PATH (an existing YAML file) and its key=value OVERRIDES: the arguments of every command that
    reads a run config."""
    command = click.argument("overrides", nargs=-1)(command)
    return click.argument("config_path", type=click.Path(exists=True, dir_okay=False))(command)


class RayftGroup(click.Group):
    """A click group whose commands' bad input (UserInputError) ends as "error: <message>" and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserInputError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(EXIT_BAD_INPUT)


def load_run(config_path: str, overrides: tuple[str, ...]) -> RunConfig:
    """A rayft run config, or a LLaMA-Factory YAML read through its translation; overrides are rayft keys.
    A config that cannot be used is a UserInputError naming CONFIG_PATH."""
    try:
        translated = read_llamafactory(config_path)
        if translated is None:
            return load_config(config_path, list(overrides))
        return load_config(data=translated, overrides=list(overrides))
    except ConfigError as e:
        raise UserInputError(f"{config_path}: {e}") from e


def read_llamafactory(config_path: str) -> dict | None:
    """The translated config when CONFIG_PATH is a LLaMA-Factory YAML (its notes go to stderr), else None.
    A UserInputError when a note is an error: the run would not be the one the YAML asks for."""
    from rayft_core.llamafactory import is_error, looks_like_llamafactory, translate
    from rayft_core.schema import read_yaml

    raw = read_yaml(config_path)  # a file that cannot be read is a ConfigError, which load_run reports
    if not looks_like_llamafactory(raw):
        return None
    translated, notes = translate(raw)
    for note in notes:
        click.echo(f"{config_path}: {note}", err=True)
    if any(is_error(n) for n in notes):
        raise UserInputError(f"{config_path}: this LLaMA-Factory config cannot run in rayft as written (see above)")
    return translated
