"""The HTTP server's application: the API (:mod:`moderation.api`) with the reviewers' pages
(:mod:`moderation.web`) mounted under ``/review``. An entry point: ``moderation api`` and the
demo serve what :func:`create_app` returns."""

from __future__ import annotations

from fastapi import FastAPI

from moderation.api import create_app as create_api_app
from moderation.compose.api import ApiProcess
from moderation.web import build_review_router

__all__ = ["create_app"]


def create_app(process: ApiProcess, *, review_prefix: str = "/review") -> FastAPI:
    """The API of ``process`` with its reviewers' pages under ``review_prefix``."""
    app = create_api_app(process)
    app.include_router(
        build_review_router(
            process.settings,
            process.review_desk,
            process.reviewer_auth,
            prefix=review_prefix,
            bank_guard=process.bank_guard,
            wellbeing=process.wellbeing,
            review_admin=process.review_admin,
        )
    )
    return app
