"""Policy files (the :class:`~moderation.ports.PolicyFiles` twin)."""

from __future__ import annotations

from moderation.core.policy import Policy, PolicyMode, PolicySet

__all__ = ["MemoryPolicyFiles"]


class MemoryPolicyFiles:
    """The :class:`~moderation.ports.PolicyFiles` twin: validated policies by source name."""

    def __init__(self, policies: list[tuple[Policy, str]]) -> None:
        self.files: dict[str, Policy] = {source: policy for policy, source in policies}
        self.retired: dict[str, Policy] = {}

    def load(self) -> PolicySet:
        return PolicySet((policy, source) for source, policy in self.files.items())

    def promotion_plan(self, shadow_source: str, live_source: str | None) -> dict[str, str]:
        if live_source is None:
            return {"live_file": shadow_source, "from_file": shadow_source, "retired_file": ""}
        old = self.files[live_source]
        return {
            "live_file": live_source,
            "from_file": shadow_source,
            "retired_file": f"retired/{live_source}.v{old.version}",
        }

    def promote(self, plan: dict[str, str]) -> None:
        shadow = self.files[plan["from_file"]]
        if plan["retired_file"]:
            self.retired[plan["retired_file"]] = self.files[plan["live_file"]]
        self.files[plan["live_file"]] = shadow.model_copy(update={"mode": PolicyMode.LIVE})
        if plan["from_file"] != plan["live_file"]:
            del self.files[plan["from_file"]]
