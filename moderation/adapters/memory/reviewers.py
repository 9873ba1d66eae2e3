"""Reviewer accounts (the :class:`~moderation.ports.ReviewerStore` twin)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from moderation.core.reviewers import ReviewerAccount
from moderation.exceptions import (
    ReviewError,
)

__all__ = ["MemoryReviewerStore"]


@dataclass
class MemoryReviewerStore:
    """The :class:`~moderation.ports.ReviewerStore` twin."""

    accounts: dict[str, ReviewerAccount] = field(default_factory=dict)

    def create(self, account: ReviewerAccount) -> None:
        if account.username in self.accounts:
            raise ReviewError(f"reviewer {account.username!r} exists", code="review_user_exists")
        self.accounts[account.username] = account

    def get(self, username: str) -> ReviewerAccount | None:
        return self.accounts.get(username)

    def all(self) -> list[ReviewerAccount]:
        return [self.accounts[k] for k in sorted(self.accounts)]

    def set_disabled(self, username: str, disabled: bool) -> None:
        self.accounts[username] = replace(self._get(username), disabled=disabled)

    def set_queues(self, username: str, queues: Sequence[str]) -> None:
        self.accounts[username] = replace(self._get(username), queues=tuple(queues))

    def _get(self, username: str) -> ReviewerAccount:
        account = self.accounts.get(username)
        if account is None:
            raise ReviewError(f"no reviewer {username!r}", code="review_unknown_user")
        return account
