"""Policy-driven zero-shot image moderation.

The pure core (no I/O, no torch): :mod:`moderation.policy`, :mod:`moderation.compiled`,
:mod:`moderation.scoring`, :mod:`moderation.decision`, :mod:`moderation.audit`. Adapters at the
edges live in :mod:`moderation.adapters`; entry points are the ``moderation`` CLI, the HTTP API
(:mod:`moderation.api`) and the Celery workers (``workers/``).
"""

from moderation.compiled import CompiledPolicy, ModelIdentity, compile_policy
from moderation.decision import CategoryResult, Decision, Verdict
from moderation.exceptions import ModerationError, PermanentError, TransientError
from moderation.policy import Category, Policy, PolicySet, Severity, Thresholds
from moderation.scoring import Scorer

__all__ = [
    "Category",
    "CategoryResult",
    "CompiledPolicy",
    "Decision",
    "ModelIdentity",
    "ModerationError",
    "PermanentError",
    "Policy",
    "PolicySet",
    "Scorer",
    "Severity",
    "Thresholds",
    "TransientError",
    "Verdict",
    "compile_policy",
]

__version__ = "0.1.0"
