"""Adapters: the only modules that import torch, open_clip, redis, boto3, httpx or celery."""
