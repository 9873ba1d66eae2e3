"""The pure core: policies, compiled policies, scoring, decisions, jobs, review and audit records.

numpy and pydantic only: no I/O, no torch, no settings. Everything else builds on it.
"""
