"""What every `rayft` command shares: bad input is a message and exit code 2, never a traceback."""

from __future__ import annotations

import sys
from typing import Any, Callable

import click

from rayft_core.errors import UserInputError

EXIT_BAD_INPUT = 2


def or_exit(fn: Callable[[], Any]) -> Any:
    """Run fn; bad input (data, config, files) prints its message and exits 2."""
    try:
        return fn()
    except UserInputError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_BAD_INPUT)
