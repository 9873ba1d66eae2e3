"""Reviewer wellbeing: per-reviewer display settings, exposure to critical content, and when a
break is due. Pure: no I/O.

What trust-and-safety teams do for people who look at harmful content all day: images greyscale
and blurred by default (the reviewer chooses how strongly), video never starts on its own, a
prompt to take a break after so many critical items or so long on shift, and supervisors who can
see how much each reviewer was exposed to today. The settings are kept on the server per reviewer
(:class:`~moderation.ports.WellbeingStore`), so they follow the reviewer to any browser; the
exposure is recorded by the server when an item is shown or unblurred, never reported by the
page.

Break rule (:func:`break_due`): a break is due when, since the reviewer's last break (or the
first item of the day), it saw ``break_after_critical`` critical items, or ``break_after_minutes``
have passed. Answering the prompt (taking the break or dismissing it) starts the count again; 0
turns either trigger off.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moderation.exceptions import ReviewError

__all__ = [
    "BreakPrompt",
    "ReviewerDay",
    "WellbeingSettings",
    "break_due",
    "day_of",
    "parse_settings",
    "summarize_day",
]


class WellbeingSettings(BaseModel):
    """One reviewer's display and break settings (the defaults protect: greyscale on, strong
    blur, no autoplay, a break prompt every 25 critical items or 90 minutes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Images and video frames in greyscale (the reviewer may still toggle it per item).
    greyscale: bool = True
    #: Blur radius in CSS pixels of the image before it is held to unblur.
    blur_px: int = Field(default=36, ge=4, le=80)
    #: A video's filmstrip steps through its frames on its own (off: only by key or click).
    autoplay_video: bool = False
    #: A break prompt after this many critical items since the last break (0: never).
    break_after_critical: int = Field(default=25, ge=0, le=1000)
    #: A break prompt after this many minutes on shift since the last break (0: never).
    break_after_minutes: int = Field(default=90, ge=0, le=720)


def parse_settings(data: object) -> WellbeingSettings:
    """Validate settings sent by a reviewer.

    Raises:
        ReviewError: an unknown field or a value out of range (code ``review_settings_invalid``;
            the message names the field and the allowed range).
    """
    try:
        return WellbeingSettings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise ReviewError(
            f"invalid wellbeing settings: {problems}", code="review_settings_invalid"
        ) from exc


def day_of(at: float) -> str:
    """The UTC day (``YYYY-MM-DD``) exposure of time ``at`` counts towards."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True, slots=True)
class ReviewerDay:
    """One reviewer's exposure on one day, as recorded by the server."""

    reviewer: str
    day: str
    #: Items shown to the reviewer (each counted once, however often it was reloaded).
    shown: int = 0
    #: Of those, critical-severity items.
    critical: int = 0
    #: Items whose image the reviewer unblurred.
    revealed: int = 0
    #: Critical items shown since the last break (or since the day's first item).
    critical_since_break: int = 0
    #: When the first item of the day was shown (None: none yet).
    first_at: float | None = None
    #: When the reviewer last answered a break prompt (None: not today).
    last_break_at: float | None = None
    #: Break prompts answered "take a break" and "not now".
    breaks_taken: int = 0
    breaks_dismissed: int = 0


@dataclass(frozen=True, slots=True)
class BreakPrompt:
    """A break is due: why, in words the page shows."""

    reason: Literal["critical", "time"]
    message: str


def break_due(settings: WellbeingSettings, day: ReviewerDay, now: float) -> BreakPrompt | None:
    """Whether ``day``'s reviewer should be prompted to take a break now (see the module)."""
    n = settings.break_after_critical
    if n > 0 and day.critical_since_break >= n:
        return BreakPrompt(
            reason="critical",
            message=(
                f"You have looked at {day.critical_since_break} critical items since your last "
                "break. Step away for a few minutes."
            ),
        )
    start = day.last_break_at if day.last_break_at is not None else day.first_at
    minutes = settings.break_after_minutes
    if minutes > 0 and start is not None and now - start >= minutes * 60:
        on_shift = int((now - start) // 60)
        return BreakPrompt(
            reason="time",
            message=f"You have been reviewing for {on_shift} minutes without a break.",
        )
    return None


def summarize_day(
    reviewer: str,
    day: str,
    items: dict[str, tuple[bool, bool, float]],
    *,
    last_break_at: float | None,
    taken: int,
    dismissed: int,
) -> ReviewerDay:
    """A reviewer's day from its recorded items (review id -> critical, revealed, first
    shown at) and its break answers (the stores that keep items as a map use this)."""
    since = last_break_at if last_break_at is not None else float("-inf")
    return ReviewerDay(
        reviewer=reviewer,
        day=day,
        shown=len(items),
        critical=sum(1 for c, _, _ in items.values() if c),
        revealed=sum(1 for _, r, _ in items.values() if r),
        critical_since_break=sum(1 for c, _, at in items.values() if c and at > since),
        first_at=min((at for _, _, at in items.values()), default=None),
        last_break_at=last_break_at,
        breaks_taken=taken,
        breaks_dismissed=dismissed,
    )
