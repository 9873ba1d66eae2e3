"""Reviewer accounts (the :class:`~moderation.ports.ReviewerStore` twin)."""

from __future__ import annotations

from dataclasses import dataclass, field

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
        account = self.accounts.get(username)
        if account is None:
            raise ReviewError(f"no reviewer {username!r}", code="review_unknown_user")
        self.accounts[username] = ReviewerAccount(
            username=account.username,
            role=account.role,
            password_hash=account.password_hash,
            disabled=disabled,
            created_at=account.created_at,
        )
