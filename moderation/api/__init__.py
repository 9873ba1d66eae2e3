"""The HTTP API of the queue pipeline (FastAPI): ``create_app(settings)``."""

from moderation.api.app import create_app

__all__ = ["create_app"]
