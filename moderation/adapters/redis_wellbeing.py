"""Reviewer wellbeing on Redis (the Redis-only mode; with a database it lives in PostgreSQL).

Keys under the review key prefix: ``wb:settings:<reviewer>`` (the settings as JSON),
``wb:items:<day>:<reviewer>`` (a hash: review id -> ``critical,revealed,first shown at``),
``wb:breaks:<day>:<reviewer>`` (a hash: ``last_break_at``, ``taken``, ``dismissed``) and
``wb:day:<day>`` (the set of reviewers with anything that day). A day's keys expire after
:data:`DAY_TTL_S`.
"""

from __future__ import annotations

from typing import cast

import redis

from moderation.adapters.support.redis import connect, translated
from moderation.core.wellbeing import ReviewerDay, WellbeingSettings, summarize_day

__all__ = ["DAY_TTL_S", "RedisWellbeingStore"]

#: How long a day's exposure is kept (the overview shows today; a week allows a look back).
DAY_TTL_S = 8 * 86400

_WHAT = "reviewer wellbeing"


class RedisWellbeingStore:
    """The :class:`~moderation.ports.WellbeingStore` on Redis."""

    def __init__(self, client: redis.Redis, *, prefix: str = "mod:review:") -> None:
        self._r = client
        self._p = prefix + "wb:"

    @classmethod
    def from_url(cls, url: str, *, prefix: str) -> RedisWellbeingStore:
        return cls(connect(url, decode=True, socket_timeout=5.0), prefix=prefix)

    @translated(_WHAT)
    def settings(self, reviewer: str) -> WellbeingSettings | None:
        raw = cast(str | None, self._r.get(self._p + "settings:" + reviewer))
        return WellbeingSettings.model_validate_json(raw) if raw else None

    @translated(_WHAT)
    def save(self, reviewer: str, settings: WellbeingSettings) -> None:
        self._r.set(self._p + "settings:" + reviewer, settings.model_dump_json())

    def _touch(self, pipe: redis.client.Pipeline, reviewer: str, day: str) -> None:
        pipe.sadd(self._p + "day:" + day, reviewer)
        pipe.expire(self._p + "day:" + day, DAY_TTL_S)

    @translated(_WHAT)
    def record(
        self, reviewer: str, *, day: str, review_id: str, critical: bool, revealed: bool, at: float
    ) -> None:
        key = f"{self._p}items:{day}:{reviewer}"
        value = f"{int(critical)},{int(revealed)},{at!r}"
        if not self._r.hsetnx(key, review_id, value) and revealed:
            old = cast(str | None, self._r.hget(key, review_id))
            if old is not None:
                c, r, first = old.split(",")
                if r != "1":
                    self._r.hset(key, review_id, f"{c},1,{first}")
        pipe = self._r.pipeline(transaction=False)
        pipe.expire(key, DAY_TTL_S)
        self._touch(pipe, reviewer, day)
        pipe.execute()

    @translated(_WHAT)
    def answer_break(self, reviewer: str, *, day: str, taken: bool, at: float) -> None:
        key = f"{self._p}breaks:{day}:{reviewer}"
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(key, "last_break_at", repr(at))
        pipe.hincrby(key, "taken" if taken else "dismissed", 1)
        pipe.expire(key, DAY_TTL_S)
        self._touch(pipe, reviewer, day)
        pipe.execute()

    @translated(_WHAT)
    def day(self, reviewer: str, day: str) -> ReviewerDay:
        pipe = self._r.pipeline(transaction=False)
        pipe.hgetall(f"{self._p}items:{day}:{reviewer}")
        pipe.hgetall(f"{self._p}breaks:{day}:{reviewer}")
        raw_items, breaks = cast(tuple[dict[str, str], dict[str, str]], tuple(pipe.execute()))
        items: dict[str, tuple[bool, bool, float]] = {}
        for review_id, value in raw_items.items():
            c, r, at = value.split(",")
            items[review_id] = (c == "1", r == "1", float(at))
        last = breaks.get("last_break_at")
        return summarize_day(
            reviewer,
            day,
            items,
            last_break_at=float(last) if last is not None else None,
            taken=int(breaks.get("taken", 0)),
            dismissed=int(breaks.get("dismissed", 0)),
        )

    @translated(_WHAT)
    def days(self, day: str) -> list[ReviewerDay]:
        names = sorted(cast(set[str], self._r.smembers(self._p + "day:" + day)))
        return [self.day(name, day) for name in names]
