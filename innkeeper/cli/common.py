"""What every command shares: the consoles and the settings (with logging set up once)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from innkeeper.core.settings import Settings, get_settings

console = Console()
err_console = Console(stderr=True)


@contextmanager
def one_line_errors(*errors: type[Exception]) -> Iterator[None]:
    """These errors (a database that is down, a registry refusal) as one red line and exit code 1, not a traceback."""
    try:
        yield
    except errors as exc:
        err_console.print(f"[red]{escape(str(exc))}")
        raise typer.Exit(1) from None


def cli_settings() -> Settings:
    """The settings from INNKEEPER_* variables, with warnings and errors logged to stderr."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return get_settings()
