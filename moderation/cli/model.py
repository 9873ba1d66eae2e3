"""``moderation model``: provide the model weights on a machine (a worker pod's init step)."""

from __future__ import annotations

import typer

from moderation.cli.common import fail, load_settings, out
from moderation.exceptions import ModerationError

__all__ = ["model_app"]

model_app = typer.Typer(no_args_is_help=True, help="Model weights: fetch and check them.")


@model_app.command("fetch")
def fetch() -> None:
    """Copy MODERATION_MODEL__CHECKPOINT_SOURCE (s3://bucket/key) to MODERATION_MODEL__CHECKPOINT,
    checked against MODERATION_MODEL__CHECKPOINT_SHA256 (kept when already there)."""
    from moderation.adapters.weights import fetch_checkpoint

    settings = load_settings()
    try:
        got = fetch_checkpoint(settings.model, settings.s3)
    except ModerationError as exc:
        raise fail(exc) from exc
    verb = "copied" if got.downloaded else "already present"
    out.print(f"{verb}: {got.path} (sha256 {got.sha256})", highlight=False)


@model_app.command("check")
def check() -> None:
    """Load the configured model (no fallback) and print its identity; exit 1 if it cannot."""
    from moderation.compose.model import load_model

    settings = load_settings()
    strict = settings.model.model_copy(update={"fallback_to_test_model": False})
    try:
        choice = load_model(strict, limits=settings.images)
    except ModerationError as exc:
        raise fail(exc) from exc
    out.print(f"loaded {choice.encoder.identity.id}", highlight=False)
