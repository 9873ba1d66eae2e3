"""The model-fallback policy: when the configured CLIP weights cannot be loaded and
``model.fallback_to_test_model`` allows it, a process runs on the bundled synthetic test model
instead, says so loudly (:func:`fallback_note`, logged and shown in the worker's heartbeat) and
serves the test-world policy rather than policies the test model cannot understand
(:func:`served_policy_paths`). Production sets the flag to false: a missing model is fatal.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["fallback_note", "served_policy_paths"]


def fallback_note(
    reason: str,
    *,
    custom_policies: bool | Sequence[Path],
    test_model: str,
    test_policy: Path,
) -> str:
    """What the operator is told when the test model stands in for the configured one.

    Args:
        reason: why the configured weights could not be loaded.
        custom_policies: the policy files the caller named (or just True): the test model then
            scores those, not the test-world policy.
        test_model: the test model's name.
        test_policy: the test-world policy file.
    """
    if custom_policies:
        named = (
            ""
            if custom_policies is True
            else " (" + ", ".join(str(p) for p in custom_policies) + ")"
        )
        scored = f"the policies you named{named}, although it knows nothing but coloured shapes"
    else:
        scored = f"the test-world policy ({test_policy.name}) instead of the configured policies"
    return (
        f"{reason}\nFalling back to the bundled synthetic TEST model ({test_model}): "
        f"its world is coloured shapes, and it scores {scored}. Verdicts are NOT meaningful "
        "for real content."
    )


def served_policy_paths(
    configured: Sequence[Path], *, fell_back: bool, test_policy: Path
) -> list[Path]:
    """The policy files a process serves: the configured ones, or the test-world policy when
    the test model stands in for weights that could not be loaded."""
    return [test_policy] if fell_back else list(configured)
