"""The admin overview's actions (registered by :func:`moderation.web.routes.build_review_router`;
admins only: a reviewer gets 403 ``review_forbidden``; state changes need the CSRF token)::

    GET  {prefix}/api/admin/in-review   items held now (holder pseudonym, lease left) and the
                                        accounts an item can be reassigned to
    POST {prefix}/api/admin/requeue     {review_id}: take it back from its holder
    POST {prefix}/api/admin/reassign    {review_id, username}: lease it to that account
    POST {prefix}/api/admin/release     {reviewer}: take back what that pseudonym holds
    POST {prefix}/api/admin/redeliver   hand on again the decisions whose delivery failed

Each action is :class:`~moderation.pipeline.review_admin.ReviewAdmin`'s, and audited there.
"""

# No ``from __future__ import annotations``: FastAPI evaluates the endpoints' annotations.

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from moderation.core.reviewers import allowed_queues
from moderation.pipeline.review_admin import ReviewAdmin

__all__ = ["add_admin_routes"]


class _ItemBody(BaseModel):
    review_id: str = Field(max_length=64)


class _ReassignBody(BaseModel):
    review_id: str = Field(max_length=64)
    username: str = Field(min_length=1, max_length=64)


class _ReleaseBody(BaseModel):
    reviewer: str = Field(min_length=1, max_length=80)


def add_admin_routes(
    router: APIRouter,
    review_admin: ReviewAdmin,
    *,
    admin: Callable[..., Any],
    admin_read: Callable[..., Any],
) -> None:
    """Register the admin actions on the reviewers' ``router`` (``admin``: the router's
    admin-with-CSRF dependency; ``admin_read``: admin, for reads)."""

    @router.get("/api/admin/in-review")
    def in_review(who: Annotated[Any, Depends(admin_read)]) -> dict[str, Any]:
        return {
            "items": [
                {
                    "review_id": h.review_id,
                    "job_id": h.job_id,
                    "policy_id": h.policy_id,
                    "category_id": h.category_id,
                    "severity": h.severity,
                    "reviewer": h.reviewer,
                    "seconds_left": round(h.seconds_left, 1),
                }
                for h in review_admin.in_review()
            ],
            "accounts": [
                {
                    "username": a.username,
                    "reviewer": review_admin.pseudonym(a.username),
                    "role": a.role.value,
                    "queues": list(allowed_queues(a)),
                }
                for a in review_admin.users.all()
                if not a.disabled
            ],
        }

    @router.post("/api/admin/requeue")
    def requeue(body: _ItemBody, who: Annotated[Any, Depends(admin)]) -> dict[str, Any]:
        return {"requeued": review_admin.requeue(body.review_id, by=who.pseudonym)}

    @router.post("/api/admin/reassign")
    def reassign(body: _ReassignBody, who: Annotated[Any, Depends(admin)]) -> dict[str, Any]:
        to = review_admin.reassign(body.review_id, to=body.username, by=who.pseudonym)
        return {"review_id": body.review_id, "reviewer": to}

    @router.post("/api/admin/release")
    def release(body: _ReleaseBody, who: Annotated[Any, Depends(admin)]) -> dict[str, Any]:
        return {"released": review_admin.release(body.reviewer, by=who.pseudonym)}

    @router.post("/api/admin/redeliver")
    def redeliver(who: Annotated[Any, Depends(admin)]) -> dict[str, Any]:
        pending, delivered = review_admin.redeliver(by=who.pseudonym)
        return {"pending": pending, "delivered": delivered}
