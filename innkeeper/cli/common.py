"""What every command shares: the consoles and the settings (with logging set up once)."""

from __future__ import annotations

import logging

from rich.console import Console

from innkeeper.core.settings import Settings, get_settings

console = Console()
err_console = Console(stderr=True)


def cli_settings() -> Settings:
    """The settings from INNKEEPER_* variables, with warnings and errors logged to stderr."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return get_settings()
