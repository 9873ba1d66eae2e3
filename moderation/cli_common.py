"""What every CLI module shares: the consoles, building Settings at the entry point, and turning
a ModerationError into a clear message and an exit status."""

from __future__ import annotations

import logging

import typer
from rich.console import Console

from moderation.exceptions import ModerationError
from moderation.settings import Settings

__all__ = ["err", "fail", "load_settings", "out"]

out = Console()
err = Console(stderr=True)

#: Libraries whose INFO lines are per-request noise on a terminal.
_QUIET = ("httpx", "httpcore", "botocore", "boto3", "urllib3", "s3transfer")


def load_settings() -> Settings:
    """Settings from the environment, with logging configured from them."""
    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    return settings


def fail(exc: ModerationError, code: int = 2) -> typer.Exit:
    """Print ``exc`` as an error line and return the Exit to raise."""
    err.print(f"[bold red]error[/]: {exc}", highlight=False, soft_wrap=True)
    return typer.Exit(code)
