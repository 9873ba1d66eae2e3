"""``moderation model``: provide the model weights on a machine (a worker pod's init step)."""

from __future__ import annotations

from typing import Annotated

import typer

from moderation.cli.common import err, fail, load_settings, out
from moderation.exceptions import ModerationError

__all__ = ["model_app"]

model_app = typer.Typer(no_args_is_help=True, help="Model weights: fetch and check them.")


@model_app.command("fetch")
def fetch(
    if_configured: Annotated[
        bool,
        typer.Option(
            "--if-configured",
            help="Without a source or a SHA-256 configured, say so and exit 0 (a pod's init "
            "step: the worker then stays alive and not ready, with the reason on /readyz, "
            "instead of the pod crash-looping).",
        ),
    ] = False,
) -> None:
    """Copy MODERATION_MODEL__CHECKPOINT_SOURCE (s3://bucket/key) to MODERATION_MODEL__CHECKPOINT,
    checked against MODERATION_MODEL__CHECKPOINT_SHA256 (kept when already there)."""
    from moderation.adapters.weights import fetch_checkpoint

    settings = load_settings()
    missing = [
        name
        for name, value in (
            ("MODERATION_MODEL__CHECKPOINT", settings.model.checkpoint),
            ("MODERATION_MODEL__CHECKPOINT_SOURCE", settings.model.checkpoint_source),
            ("MODERATION_MODEL__CHECKPOINT_SHA256", settings.model.checkpoint_sha256),
        )
        if value is None
    ]
    if if_configured and missing:
        err.print(
            f"weights not fetched: {', '.join(missing)} not set (docs/deployment.md, model "
            "weights); the worker will not be ready until they are",
            highlight=False,
        )
        return
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
