"""The review pages' wellbeing API (registered by :func:`moderation.web.routes.
build_review_router` when it is given a :class:`~moderation.pipeline.wellbeing.Wellbeing`)::

    GET  {prefix}/api/wellbeing           my settings, today's exposure, a break prompt if due
    PUT  {prefix}/api/wellbeing/settings  {greyscale, blur_px, autoplay_video,
                                          break_after_critical, break_after_minutes}: keep my
                                          settings (422-like 400 ``review_settings_invalid``)
    POST {prefix}/api/wellbeing/break     {taken}: I took the break, or dismissed the prompt
    GET  {prefix}/api/admin/exposure      admin: every reviewer's exposure today (pseudonyms)

Only parsing and mapping here: what happens is :class:`~moderation.pipeline.wellbeing.Wellbeing`.
"""

# No ``from __future__ import annotations``: FastAPI evaluates the endpoints' annotations.

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from pydantic import BaseModel

from moderation.core.wellbeing import ReviewerDay, day_of
from moderation.pipeline.wellbeing import Wellbeing, WellbeingState

__all__ = ["add_wellbeing_routes", "day_payload"]


class _BreakBody(BaseModel):
    taken: bool


def day_payload(day: ReviewerDay) -> dict[str, Any]:
    return {
        "reviewer": day.reviewer,
        "day": day.day,
        "shown": day.shown,
        "critical": day.critical,
        "revealed": day.revealed,
        "critical_since_break": day.critical_since_break,
        "first_at": day.first_at,
        "last_break_at": day.last_break_at,
        "breaks_taken": day.breaks_taken,
        "breaks_dismissed": day.breaks_dismissed,
    }


def _state(state: WellbeingState) -> dict[str, Any]:
    return {
        "settings": state.settings.model_dump(mode="json"),
        "today": day_payload(state.today),
        "break": (
            {"reason": state.prompt.reason, "message": state.prompt.message}
            if state.prompt
            else None
        ),
    }


def add_wellbeing_routes(
    router: APIRouter,
    wellbeing: Wellbeing,
    *,
    principal: Callable[..., Any],
    csrf_principal: Callable[..., Any],
    admin_read: Callable[..., Any],
) -> None:
    """Register the wellbeing endpoints on the reviewers' ``router``; the dependencies are the
    router's own (who is signed in; with a CSRF check; an admin)."""

    @router.get("/api/wellbeing")
    def state(who: Annotated[Any, Depends(principal)]) -> dict[str, Any]:
        return _state(wellbeing.state(who.pseudonym))

    @router.put("/api/wellbeing/settings")
    def save(
        who: Annotated[Any, Depends(csrf_principal)],
        body: Annotated[dict[str, Any], Body()],
    ) -> dict[str, Any]:
        return {"settings": wellbeing.save(who.pseudonym, body).model_dump(mode="json")}

    @router.post("/api/wellbeing/break")
    def answer(body: _BreakBody, who: Annotated[Any, Depends(csrf_principal)]) -> dict[str, Any]:
        return _state(wellbeing.answer_break(who.pseudonym, taken=body.taken))

    @router.get("/api/admin/exposure")
    def exposure(who: Annotated[Any, Depends(admin_read)]) -> dict[str, Any]:
        days = wellbeing.exposure()
        return {
            "day": day_of(wellbeing.clock()),
            "reviewers": [day_payload(d) for d in days],
        }
