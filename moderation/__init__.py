"""Policy-driven zero-shot image moderation.

Layers (imports point one way, top to bottom)::

    moderation.core        pure: policies, compiled policies, scoring, decisions, jobs, review
                           and audit records (numpy + pydantic only)
    moderation.ports       every outside concern as a Protocol
    moderation.pipeline    the use cases: submit, process, outcomes, score locally, audit reads
    moderation.signals     the ways images become scores (CLIP prompts, ...)
    moderation.adapters    CLIP, image decode, sources, Redis, S3, Celery, HTTP callbacks
    moderation.compose     one composition root per process kind, from Settings
    moderation.api / web / cli    entry points; ``workers/`` holds the Celery tasks
"""

from moderation.core.compiled import CompiledPolicy, ModelIdentity, compile_policy
from moderation.core.decision import CategoryResult, Decision, Evidence, Verdict
from moderation.core.image_ref import ImageRef
from moderation.core.jobs import Job, JobResult, JobStatus
from moderation.core.policy import Category, Policy, PolicySet, Severity, Thresholds
from moderation.core.review import HumanDecision, ReviewDecision
from moderation.exceptions import ModerationError, PermanentError, TransientError

__all__ = [
    "Category",
    "CategoryResult",
    "CompiledPolicy",
    "Decision",
    "Evidence",
    "HumanDecision",
    "ImageRef",
    "Job",
    "JobResult",
    "JobStatus",
    "ModelIdentity",
    "ModerationError",
    "PermanentError",
    "Policy",
    "PolicySet",
    "ReviewDecision",
    "Severity",
    "Thresholds",
    "TransientError",
    "Verdict",
    "compile_policy",
]

__version__ = "0.1.0"
