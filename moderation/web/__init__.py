"""The reviewers' web page: a FastAPI router (:func:`build_review_router`) with plain HTML, CSS
and JavaScript (no build step, no CDN)."""

from moderation.web.routes import build_review_router

__all__ = ["build_review_router"]
