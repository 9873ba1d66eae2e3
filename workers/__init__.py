"""Celery workers of the moderation pipeline (``celery -A workers.celery_app worker``)."""
