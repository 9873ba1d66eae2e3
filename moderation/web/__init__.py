"""The reviewers' web page: a FastAPI router (:func:`build_review_router`) with plain HTML, CSS
and JavaScript (no build step, no CDN)."""

from moderation.web.routes import ImageLoader, OnFinal, build_review_router

__all__ = ["ImageLoader", "OnFinal", "build_review_router"]
