"""The human-review queue on Redis (any Redis-protocol server, single node).

Keys (prefix ``settings.review.key_prefix``, default ``mod:review:``)::

    item:<rid>        hash: item JSON, state (queued | leased | final), policy, rank, lease fields,
                      first (pending first decision JSON), final (final decision JSON)
    q:<policy>        zset rid -> rank key (see moderation.core.review); waiting items of the
                      ``review`` queue; ``q:<policy>@<queue>`` those of another queue
    open:<policy>     zset rid -> created_at; every item not yet final (oldest-age SLA signal),
                      ``open:<policy>@<queue>`` likewise; the item hash names its ``queue``
    policies          set of policy ids that ever had items
    queues            set of queue names that ever had items
    leases            zset rid -> lease expiry (server time)
    holder:<rv>       rid of the item reviewer <rv> holds (one at a time)
    tok:<token>       "rid|rv" of every lease handed out (1 day): tells "expired" from "not yours"
    decided           zset rid -> decided_at; reviewed items, for export
    outbox            zset rid -> decided_at; final decisions whose on_final has not returned
    outbox_due        zset rid -> when the next delivery attempt is due (absent: decided_at);
                      the item hash counts failed attempts in ``outbox_attempts``
    day:<yyyy-mm-dd>  hash rv -> decisions made that day
    seen:<rid>        set of reviewers who looked at the image unblurred (kept 30 days)

(Reviewer accounts live under the same prefix: :mod:`moderation.adapters.redis_reviewers`.)

Claiming is one Lua script (reap expired leases, skip items whose first review was by the caller,
take the highest rank key across the allowed policies, lease it), so concurrent reviewers never
get the same item. Deciding is a WATCH/MULTI transaction around the pure
:func:`moderation.core.review.apply_decision`, so only the current lease holder's first submit
counts; a retry of the same submit returns the recorded outcome. All times are the Redis server's
clock. Redis connection errors become :class:`~moderation.exceptions.QueueUnavailable`.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import redis
from redis.exceptions import WatchError

from moderation.adapters.support.redis import connect, translated
from moderation.core.legacy_state import LegacyOutbox, LegacyReviewRecord
from moderation.core.review import (
    DEFAULT_QUEUE,
    QUEUE_APPEAL,
    FirstDecision,
    HumanDecision,
    Lease,
    ReviewDecision,
    ReviewItem,
    ReviewOutcome,
    apply_decision,
    export_row,
    item_rank,
)
from moderation.core.review_admin import refuse_assignment
from moderation.core.reviewers import check_queue_name
from moderation.core.sources import DecisionSource
from moderation.exceptions import (
    ReviewAlreadyDecided,
    ReviewError,
    ReviewInvalidDecision,
    ReviewLeaseExpired,
    ReviewNeedsDatabase,
    ReviewNotFound,
    ReviewNotLeaseHolder,
    ReviewTakenBack,
    ReviewUndoTooLate,
)
from moderation.ports import Claim, DecideResult, OutboxEntry, ReviewStats
from moderation.settings import ReviewSettings

__all__ = ["RedisReviewQueue"]

#: Items started by a notice: a second notice must raise the item while it waits, which this
#: queue cannot do (a resubmit of a waiting item is a no-op here).
_NOTICE_SOURCES = frozenset({DecisionSource.USER_REPORT, DecisionSource.TRUSTED_FLAGGER})


def _refuse_unsupported(item: ReviewItem) -> None:
    """Appeals and notices live with the PostgreSQL queue only (the composition never gives
    them this one): refuse their items here too, with a clear code, rather than queue an
    appeal that its earlier deciders could claim, or a report that never jumps the queue.

    Raises:
        ReviewNeedsDatabase: ``item`` is an appeal's (it bars reviewers, or it is in the appeal
            queue) or a notice's.
    """
    if item.barred or item.appeal is not None or item.queue == QUEUE_APPEAL:
        raise ReviewNeedsDatabase(
            "appeals need the PostgreSQL review queue (database.url): the Redis queue keeps no "
            "bars against earlier deciders"
        )
    if item.source in _NOTICE_SOURCES:
        raise ReviewNeedsDatabase(
            "notices need the PostgreSQL review queue (database.url): the Redis queue cannot "
            "raise an item already waiting"
        )


_TOKEN_TTL_S = 24 * 3600
_SEEN_TTL_S = 30 * 24 * 3600
_SCAN = 64  # candidates looked at per policy queue when the top ones are excluded

# KEYS: none (single-node Redis: keys are derived from the prefix inside the script)
# ARGV: prefix, reviewer, lease_s, token, scan, policy...
_CLAIM_LUA = """
local P = ARGV[1]
local function qk(kind, policy, queue)
  if not queue or queue == 'review' then return P .. kind .. ':' .. policy end
  return P .. kind .. ':' .. policy .. '@' .. queue
end
local reviewer = ARGV[2]
local lease_s = tonumber(ARGV[3])
local token = ARGV[4]
local scan = tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

local expired = redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', now, 'LIMIT', 0, 500)
for _, rid in ipairs(expired) do
  local ik = P .. 'item:' .. rid
  local f = redis.call('HMGET', ik, 'policy', 'rank', 'lease_holder', 'queue')
  redis.call('ZREM', P .. 'leases', rid)
  if f[1] then
    redis.call('ZADD', qk('q', f[1], f[4]), f[2], rid)
    redis.call('HSET', ik, 'state', 'queued')
    redis.call('HDEL', ik, 'lease_token', 'lease_holder', 'lease_expires')
    if f[3] and redis.call('GET', P .. 'holder:' .. f[3]) == rid then
      redis.call('DEL', P .. 'holder:' .. f[3])
    end
  end
end

local held = redis.call('GET', P .. 'holder:' .. reviewer)
if held then
  local ik = P .. 'item:' .. held
  local f = redis.call('HMGET', ik, 'lease_holder', 'lease_token', 'lease_expires', 'item', 'first',
                      'queue')
  if f[1] == reviewer and tonumber(f[3]) > now then
    return {held, f[2], f[3], f[4], f[5] or '', f[6] or 'review'}
  end
  redis.call('DEL', P .. 'holder:' .. reviewer)
end

local queues = {}
for name in string.gmatch(ARGV[6], '[^,]+') do queues[#queues + 1] = name end
local policies = {}
for i = 7, #ARGV do policies[#policies + 1] = ARGV[i] end
if #policies == 0 then policies = redis.call('SMEMBERS', P .. 'policies') end
local keys = {}
for _, queue in ipairs(queues) do
  for _, policy in ipairs(policies) do keys[#keys + 1] = {qk('q', policy, queue), queue} end
end

local best, best_rank, best_key, best_queue = nil, nil, nil, nil
for _, kq in ipairs(keys) do
  local q = kq[1]
  local top = redis.call('ZREVRANGE', q, 0, scan - 1, 'WITHSCORES')
  for i = 1, #top, 2 do
    local rid = top[i]
    local rank = tonumber(top[i + 1])
    if best_rank ~= nil and rank <= best_rank then break end
    local away = redis.call('ZSCORE', P .. 'away:' .. reviewer, rid)
    if (not away or tonumber(away) <= now)
       and redis.call('HGET', P .. 'item:' .. rid, 'first_reviewer') ~= reviewer
       and redis.call('HGET', P .. 'item:' .. rid, 'disputed_reviewer') ~= reviewer then
      best, best_rank, best_key, best_queue = rid, rank, q, kq[2]
      break
    end
  end
end
if not best then return nil end

local expires = now + lease_s
local ik = P .. 'item:' .. best
redis.call('ZREM', best_key, best)
redis.call('HSET', ik, 'state', 'leased', 'lease_token', token, 'lease_holder', reviewer,
           'lease_expires', tostring(expires))
redis.call('ZADD', P .. 'leases', expires, best)
redis.call('SET', P .. 'holder:' .. reviewer, best, 'PX', math.ceil(lease_s * 1000))
redis.call('SET', P .. 'tok:' .. token, best .. '|' .. reviewer, 'EX', TOKEN_TTL)
local f = redis.call('HMGET', ik, 'item', 'first')
return {best, token, tostring(expires), f[1], f[2] or '', best_queue}
""".replace("TOKEN_TTL", str(_TOKEN_TTL_S))

# ARGV: prefix, rid, policy, rank
_SUBMIT_LUA = """
local P = ARGV[1]
local ik = P .. 'item:' .. ARGV[2]
if redis.call('EXISTS', ik) == 1 then return 0 end
redis.call('HSET', ik, 'item', ARGV[5], 'state', 'queued', 'policy', ARGV[3], 'rank', ARGV[4],
           'queue', ARGV[7])
redis.call('ZADD', ARGV[8], ARGV[4], ARGV[2])
redis.call('ZADD', ARGV[9], ARGV[6], ARGV[2])
redis.call('SADD', P .. 'policies', ARGV[3])
redis.call('SADD', P .. 'queues', ARGV[7])
return 1
"""


class RedisReviewQueue:
    """The :class:`~moderation.ports.ReviewQueue` on Redis."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        lease_s: float,
        age_doubling_s: float,
        prefix: str = "mod:review:",
    ) -> None:
        self._r = client
        self.lease_s = lease_s
        self.age_doubling_s = age_doubling_s
        self._p = prefix
        self._claim = client.register_script(_CLAIM_LUA)
        self._submit = client.register_script(_SUBMIT_LUA)

    @classmethod
    def from_url(cls, url: str, settings: ReviewSettings) -> RedisReviewQueue:
        return cls(
            connect(url, decode=True, socket_timeout=5.0),
            lease_s=settings.lease_s,
            age_doubling_s=settings.age_doubling_s,
            prefix=settings.key_prefix,
        )

    # --- helpers --------------------------------------------------------------------------

    def _k(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    def _qk(self, kind: str, policy: str, queue: str | None) -> str:
        """``q:`` (waiting) or ``open:`` key of a policy's items in ``queue``."""
        if not queue or queue == DEFAULT_QUEUE:
            return self._k(kind, policy)
        return self._k(kind, f"{policy}@{queue}")

    def now(self) -> float:
        """The Redis server's clock (all lease times use it)."""
        sec, usec = self._r.time()
        return sec + usec / 1_000_000

    # --- producer side --------------------------------------------------------------------

    @translated("review queue")
    def submit(self, item: ReviewItem) -> None:
        """Enqueue an item. Submitting the same ``review_id`` again is a no-op.

        Raises:
            ReviewNeedsDatabase: an appeal's or a notice's item (see :func:`_refuse_unsupported`).
            QueueUnavailable: Redis is unreachable.
        """
        self.submit_many([item])

    @translated("review queue")
    def submit_many(self, items: Sequence[ReviewItem]) -> None:
        """:meth:`submit` for several items in one pipelined round trip (none is queued when
        one is refused).

        Raises:
            ReviewNeedsDatabase: an appeal's or a notice's item.
            QueueUnavailable: Redis is unreachable.
        """
        if not items:
            return
        for item in items:
            _refuse_unsupported(item)
        with self._r.pipeline(transaction=False) as pipe:
            for item in items:
                rank = item_rank(item, age_doubling_s=self.age_doubling_s)
                self._submit(
                    args=[
                        self._p,
                        item.review_id,
                        item.policy_id,
                        repr(rank),
                        item.model_dump_json(),
                        repr(item.created_at),
                        item.queue,
                        self._qk("q", item.policy_id, item.queue),
                        self._qk("open", item.policy_id, item.queue),
                    ],
                    client=pipe,
                )
            pipe.execute()

    # --- reviewer side --------------------------------------------------------------------

    @translated("review queue")
    def claim(
        self,
        reviewer: str,
        *,
        policies: list[str] | None = None,
        queues: Sequence[str] = (DEFAULT_QUEUE,),
    ) -> Claim | None:
        """Lease the highest-priority item the reviewer may take (or the one they already hold).

        ``reviewer`` is the pseudonymous id; ``queues`` the queues it may work; ``policies``
        limits the policies looked at. Returns None when nothing is waiting. (Appeals, whose
        items bar earlier deciders, live only in PostgreSQL: :meth:`submit` refuses them.)

        Raises:
            QueueUnavailable: Redis is unreachable.
        """
        token = secrets.token_urlsafe(18)
        raw = self._claim(
            args=[
                self._p,
                reviewer,
                self.lease_s,
                token,
                _SCAN,
                ",".join(check_queue_name(q) for q in queues),
                *(policies or []),
            ]
        )
        if not raw:
            return None
        rid, tok, expires, item_json, first_json, queue = cast(list[str], raw)
        return Claim(
            item=ReviewItem.model_validate_json(item_json),
            lease=Lease(review_id=rid, reviewer=reviewer, token=tok, expires_at=float(expires)),
            first=FirstDecision.model_validate_json(first_json) if first_json else None,
            now=self.now(),
            queue=queue,
        )

    @translated("review queue")
    def move(self, review_id: str, *, reviewer: str, token: str, queue: str) -> bool:
        """The lease holder sends the item to ``queue`` (see :meth:`~moderation.ports.
        ReviewQueue.move`); counted as its decision of the day.

        Raises:
            ReviewInvalidDecision: the item is in ``queue`` already.
            ReviewError: not found, lease expired or taken back, not the holder, decided.
            QueueUnavailable: Redis is unreachable.
        """
        ik = self._k("item", review_id)
        with self._r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(ik)  # type: ignore[no-untyped-call]
                    h = cast(dict[str, str], pipe.hgetall(ik))
                    if not h:
                        raise ReviewNotFound(f"no review item {review_id}")
                    current = h.get("queue") or DEFAULT_QUEUE
                    if h.get("moved_token") == token:
                        pipe.unwatch()
                        if current == queue:
                            return True
                        raise ReviewAlreadyDecided("a different decision was already recorded")
                    self._refuse_stale(h, review_id, reviewer, token)
                    if current == queue:
                        raise ReviewInvalidDecision(
                            f"the item is already in the {queue} queue",
                            code="review_already_escalated",
                        )
                    policy = h["policy"]
                    now = self.now()
                    pipe.multi()
                    pipe.hdel(ik, "lease_token", "lease_holder", "lease_expires")
                    pipe.hset(ik, mapping={"state": "queued", "queue": queue, "moved_token": token})
                    pipe.zrem(self._k("leases"), review_id)
                    pipe.delete(self._k("holder", reviewer))
                    pipe.zadd(self._qk("q", policy, queue), {review_id: float(h["rank"])})
                    pipe.sadd(self._k("queues"), queue)
                    item = ReviewItem.model_validate_json(h["item"])
                    pipe.zrem(self._qk("open", policy, current), review_id)
                    pipe.zadd(self._qk("open", policy, queue), {review_id: item.created_at})
                    day = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
                    pipe.hincrby(self._k("day", day), reviewer, 1)
                    pipe.expire(self._k("day", day), 8 * 24 * 3600)
                    pipe.execute()
                    return False
                except WatchError:
                    continue

    @translated("review queue")
    def holds(self, reviewer: str, review_id: str) -> bool:
        """Whether ``reviewer`` holds an unexpired lease on ``review_id`` right now."""
        holder, expires = self._r.hmget(
            self._k("item", review_id), ["lease_holder", "lease_expires"]
        )
        return holder == reviewer and expires is not None and float(expires) > self.now()

    @translated("review queue")
    def reveal(self, review_id: str, *, reviewer: str) -> None:
        """Raises:
        ReviewNotFound: no such item.
        """
        if not self._r.exists(self._k("item", review_id)):
            raise ReviewNotFound(f"no review item {review_id}")
        pipe = self._r.pipeline(transaction=True)
        pipe.sadd(self._k("seen", review_id), reviewer)
        pipe.expire(self._k("seen", review_id), _SEEN_TTL_S)
        pipe.execute()

    @translated("review queue")
    def revealed(self, review_id: str, *, reviewer: str) -> bool:
        return bool(self._r.sismember(self._k("seen", review_id), reviewer))

    @translated("review queue")
    def item(self, review_id: str) -> ReviewItem:
        """Raises:
        ReviewNotFound: no such item.
        """
        raw = self._r.hget(self._k("item", review_id), "item")
        if raw is None:
            raise ReviewNotFound(f"no review item {review_id}")
        return ReviewItem.model_validate_json(cast(str, raw))

    def _refuse_stale(self, h: dict[str, str], review_id: str, reviewer: str, token: str) -> None:
        if h.get("lease_token") == token:
            if h.get("lease_holder") != reviewer:
                raise ReviewNotLeaseHolder("this lease belongs to another reviewer")
            if float(h["lease_expires"]) <= self.now():
                raise ReviewLeaseExpired(
                    "your lease on this item expired; the decision was not recorded"
                )
            return
        owner = self._r.get(self._k("tok", token))
        if owner == f"{review_id}|{reviewer}":
            if h.get("state") == "final":
                raise ReviewAlreadyDecided("this item was already decided by someone else")
            if self._r.exists(self._k("taken", token)):
                raise ReviewTakenBack(
                    "an admin took this item back and it went back to the queue; "
                    "the decision was not recorded"
                )
            raise ReviewLeaseExpired(
                "your lease on this item expired and it went back to the queue; "
                "the decision was not recorded"
            )
        raise ReviewNotLeaseHolder("you do not hold a lease on this item")

    @translated("review queue")
    def decide(
        self,
        review_id: str,
        *,
        reviewer: str,
        token: str,
        decision: ReviewDecision,
        reason_code: str | None,
        seen_sha256: str | None = None,
    ) -> DecideResult:
        """Record a decision from the current lease holder (see the module docstring).

        Raises:
            ReviewNotFound: no such item.
            ReviewLeaseExpired: the caller's lease ran out (the decision is not recorded).
            ReviewNotLeaseHolder: the caller never held this lease.
            ReviewAlreadyDecided: a different decision was already recorded for this lease.
            ReviewInvalidDecision: bad reason code, or the first reviewer doing the second review.
            QueueUnavailable: Redis is unreachable.
        """
        ik = self._k("item", review_id)
        with self._r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(ik)  # type: ignore[no-untyped-call]
                    h = cast(dict[str, str], pipe.hgetall(ik))
                    if not h:
                        raise ReviewNotFound(f"no review item {review_id}")
                    replay = self._replay(h, token, decision, reason_code)
                    if replay is not None:
                        pipe.unwatch()
                        return DecideResult(outcome=replay, replay=True)
                    self._refuse_stale(h, review_id, reviewer, token)
                    item = ReviewItem.model_validate_json(h["item"])
                    first = FirstDecision.model_validate_json(h["first"]) if "first" in h else None
                    now = self.now()
                    outcome = apply_decision(
                        item,
                        first,
                        reviewer=reviewer,
                        decision=decision,
                        reason_code=reason_code,
                        token=token,
                        now=now,
                        seen_sha256=seen_sha256,
                        queue=h.get("queue") or DEFAULT_QUEUE,
                    )
                    pipe.multi()
                    self._write(
                        pipe,
                        item,
                        reviewer,
                        outcome,
                        token,
                        now,
                        submitted=(decision, reason_code),
                        queue=h.get("queue") or DEFAULT_QUEUE,
                    )
                    pipe.execute()
                    claimed_at = float(h["lease_expires"]) - self.lease_s
                    return DecideResult(
                        outcome=outcome, replay=False, handling_s=max(0.0, now - claimed_at)
                    )
                except WatchError:
                    continue

    @staticmethod
    def _replay(
        h: dict[str, str], token: str, decision: ReviewDecision, reason_code: str | None
    ) -> ReviewOutcome | None:
        if h.get("moved_token") == token:
            raise ReviewAlreadyDecided("this lease already escalated the item")
        recorded: tuple[ReviewDecision, str | None] | None = None
        outcome: ReviewOutcome | None = None
        if h.get("final_token") == token:
            final = HumanDecision.model_validate_json(h["final"])
            recorded = (
                ReviewDecision(h["final_submitted"]),
                h.get("final_submitted_reason") or None,
            )
            outcome = ReviewOutcome(final=final)
        elif "first" in h:
            first = FirstDecision.model_validate_json(h["first"])
            if first.token == token:
                recorded = first.decision, first.reason_code
                outcome = ReviewOutcome(pending=first)
        if recorded is None:
            return None
        if recorded != (decision, reason_code):
            raise ReviewAlreadyDecided(
                f"a different decision ({recorded[0].value}) was already recorded for this lease"
            )
        return outcome

    def _write(
        self,
        pipe: Any,
        item: ReviewItem,
        reviewer: str,
        outcome: ReviewOutcome,
        token: str,
        now: float,
        *,
        submitted: tuple[ReviewDecision, str | None],
        queue: str,
    ) -> None:
        ik = self._k("item", item.review_id)
        pipe.hdel(ik, "lease_token", "lease_holder", "lease_expires")
        pipe.zrem(self._k("leases"), item.review_id)
        pipe.delete(self._k("holder", reviewer))
        day = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
        pipe.hincrby(self._k("day", day), reviewer, 1)
        pipe.expire(self._k("day", day), 8 * 24 * 3600)
        if outcome.pending is not None:
            rank = item_rank(item, age_doubling_s=self.age_doubling_s)
            pipe.hset(
                ik,
                mapping={
                    "state": "queued",
                    "first": outcome.pending.model_dump_json(),
                    "first_reviewer": reviewer,
                },
            )
            moved = outcome.moved_to
            if moved is not None and moved != queue:  # a disagreement: to the escalation queue
                disputes = outcome.pending.disputes
                pipe.hset(ik, "queue", moved)
                if disputes is not None:
                    pipe.hset(ik, "disputed_reviewer", disputes.reviewer)
                pipe.sadd(self._k("queues"), moved)
                pipe.zrem(self._qk("open", item.policy_id, queue), item.review_id)
                pipe.zadd(
                    self._qk("open", item.policy_id, moved), {item.review_id: item.created_at}
                )
                queue = moved
            pipe.zadd(self._qk("q", item.policy_id, queue), {item.review_id: rank})
            return
        final = outcome.final
        if final is None:  # pragma: no cover - ReviewOutcome holds exactly one of the two
            return
        pipe.hset(
            ik,
            mapping={
                "state": "final",
                "final": final.model_dump_json(),
                "final_token": token,
                # What the last reviewer submitted (a disagreement's final decision is "escalate").
                "final_submitted": submitted[0].value,
                "final_submitted_reason": submitted[1] or "",
            },
        )
        pipe.zrem(self._qk("open", item.policy_id, queue), item.review_id)
        pipe.zadd(self._k("decided"), {item.review_id: now})
        pipe.zadd(self._k("outbox"), {item.review_id: now})

    @translated("review queue")
    def release(self, review_id: str, *, reviewer: str | None = None, away_s: float = 0.0) -> bool:
        """Give an item back to the queue (reviewer skip, or admin requeue when ``reviewer`` is
        None). Returns False when the item was not leased (by that reviewer).

        Raises:
            ReviewNotFound: no such item.
            ReviewAlreadyDecided: the item is final.
        """
        ik = self._k("item", review_id)
        with self._r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(ik)  # type: ignore[no-untyped-call]
                    h = cast(dict[str, str], pipe.hgetall(ik))
                    if not h:
                        raise ReviewNotFound(f"no review item {review_id}")
                    if h.get("state") == "final":
                        raise ReviewAlreadyDecided("the item is already decided")
                    holder = h.get("lease_holder")
                    if holder is None or (reviewer is not None and holder != reviewer):
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.hdel(ik, "lease_token", "lease_holder", "lease_expires")
                    pipe.hset(ik, "state", "queued")
                    pipe.zrem(self._k("leases"), review_id)
                    pipe.delete(self._k("holder", holder))
                    pipe.zadd(
                        self._qk("q", h["policy"], h.get("queue")), {review_id: float(h["rank"])}
                    )
                    if reviewer is None and h.get("lease_token"):
                        # An admin's requeue: the holder is told so, not "lease expired".
                        pipe.set(self._k("taken", h["lease_token"]), "1", ex=_TOKEN_TTL_S)
                    if reviewer is not None and away_s > 0:
                        # A skip: kept away from this reviewer (the claim script checks it).
                        away = self._k("away", reviewer)
                        now = self.now()
                        pipe.zremrangebyscore(away, "-inf", now)
                        pipe.zadd(away, {review_id: now + away_s})
                        pipe.expire(away, int(away_s) + 60)
                    pipe.execute()
                    return True
                except WatchError:
                    continue

    @translated("review queue")
    def leases(self) -> list[Lease]:
        """Every unexpired lease, soonest to expire first."""
        ids = cast(list[str], self._r.zrangebyscore(self._k("leases"), f"({self.now()!r}", "+inf"))
        pipe = self._r.pipeline(transaction=False)
        for rid in ids:
            pipe.hmget(self._k("item", rid), "lease_holder", "lease_token", "lease_expires")
        held = []
        for rid, (holder, token, expires) in zip(ids, pipe.execute(), strict=True):
            if holder and token and expires:
                held.append(
                    Lease(review_id=rid, reviewer=holder, token=token, expires_at=float(expires))
                )
        return held

    @translated("review queue")
    def assign(self, review_id: str, *, reviewer: str, queues: Sequence[str]) -> Lease:
        """An admin leases the item to ``reviewer`` (see :meth:`~moderation.ports.ReviewQueue.
        assign`).

        Raises:
            ReviewNotFound, ReviewAlreadyDecided, ReviewError: as the port says.
            QueueUnavailable: Redis is unreachable.
        """
        ik = self._k("item", review_id)
        hk = self._k("holder", reviewer)
        token = secrets.token_urlsafe(18)
        with self._r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(ik, hk)  # type: ignore[no-untyped-call]
                    h = cast(dict[str, str], pipe.hgetall(ik))
                    if not h:
                        raise ReviewNotFound(f"no review item {review_id}")
                    if h.get("state") == "final":
                        raise ReviewAlreadyDecided("the item is already decided")
                    now = self.now()
                    live = h.get("state") == "leased" and float(h.get("lease_expires", 0)) > now
                    if live and h.get("lease_holder") == reviewer:
                        pipe.unwatch()
                        return Lease(
                            review_id=review_id,
                            reviewer=reviewer,
                            token=h["lease_token"],
                            expires_at=float(h["lease_expires"]),
                        )
                    first = FirstDecision.model_validate_json(h["first"]) if "first" in h else None
                    refuse_assignment(
                        ReviewItem.model_validate_json(h["item"]),
                        first,
                        reviewer,
                        queue=h.get("queue") or DEFAULT_QUEUE,
                        queues=queues,
                    )
                    other = cast(str | None, pipe.get(hk))
                    if other is not None and other != review_id:
                        o = cast(
                            list[str | None],
                            pipe.hmget(self._k("item", other), "lease_holder", "lease_expires"),
                        )
                        if o[0] == reviewer and o[1] is not None and float(o[1]) > now:
                            raise ReviewError(
                                f"{reviewer} is working on another item now",
                                code="review_assign_busy",
                            )
                    expires = now + self.lease_s
                    pipe.multi()
                    pipe.zrem(self._qk("q", h["policy"], h.get("queue")), review_id)
                    old = h.get("lease_holder")
                    if old is not None and h.get("lease_token"):
                        pipe.set(self._k("taken", h["lease_token"]), "1", ex=_TOKEN_TTL_S)
                        pipe.delete(self._k("holder", old))
                    pipe.hset(
                        ik,
                        mapping={
                            "state": "leased",
                            "lease_token": token,
                            "lease_holder": reviewer,
                            "lease_expires": repr(expires),
                        },
                    )
                    pipe.zadd(self._k("leases"), {review_id: expires})
                    pipe.set(hk, review_id, px=int(self.lease_s * 1000))
                    pipe.set(self._k("tok", token), f"{review_id}|{reviewer}", ex=_TOKEN_TTL_S)
                    pipe.execute()
                    return Lease(
                        review_id=review_id, reviewer=reviewer, token=token, expires_at=expires
                    )
                except WatchError:
                    continue

    @translated("review queue")
    def extend(self, review_id: str, *, reviewer: str, token: str) -> Lease:
        """Renew an unexpired lease for another ``lease_s`` (same token).

        Raises:
            ReviewNotFound: no such item.
            ReviewLeaseExpired: the lease ran out (or was taken back) first.
            ReviewNotLeaseHolder: the caller never held this lease.
            QueueUnavailable: Redis is unreachable.
        """
        ik = self._k("item", review_id)
        with self._r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(ik)  # type: ignore[no-untyped-call]
                    h = cast(dict[str, str], pipe.hgetall(ik))
                    if not h:
                        raise ReviewNotFound(f"no review item {review_id}")
                    self._refuse_stale(h, review_id, reviewer, token)
                    expires = self.now() + self.lease_s
                    pipe.multi()
                    pipe.hset(ik, "lease_expires", repr(expires))
                    pipe.zadd(self._k("leases"), {review_id: expires})
                    pipe.set(self._k("holder", reviewer), review_id, px=int(self.lease_s * 1000))
                    pipe.execute()
                    return Lease(
                        review_id=review_id, reviewer=reviewer, token=token, expires_at=expires
                    )
                except WatchError:
                    continue

    @translated("review queue")
    def undo(self, review_id: str, *, reviewer: str, token: str, within_s: float) -> Claim:
        """Take back a decision within its undo window (see :meth:`~moderation.ports.
        ReviewQueue.undo`); the item is leased to ``reviewer`` again.

        Raises:
            ReviewNotFound: no such item.
            ReviewUndoTooLate: no such decision of the caller's, or it can no longer be undone.
            QueueUnavailable: Redis is unreachable.
        """
        ik = self._k("item", review_id)
        new_token = secrets.token_urlsafe(18)
        with self._r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(ik, self._k("outbox"))  # type: ignore[no-untyped-call]
                    h = cast(dict[str, str], pipe.hgetall(ik))
                    if not h:
                        raise ReviewNotFound(f"no review item {review_id}")
                    now = self.now()
                    item = ReviewItem.model_validate_json(h["item"])
                    first = FirstDecision.model_validate_json(h["first"]) if "first" in h else None
                    final = HumanDecision.model_validate_json(h["final"]) if "final" in h else None
                    in_outbox = pipe.zscore(self._k("outbox"), review_id) is not None
                    if (
                        final is not None
                        and h.get("final_token") == token
                        and final.reviewers[-1] == reviewer
                        and in_outbox
                        and now - final.decided_at.timestamp() <= within_s
                    ):
                        decided_at = final.decided_at.timestamp()
                    elif (
                        final is None
                        and first is not None
                        and first.token == token
                        and first.reviewer == reviewer
                        and h.get("state") == "queued"
                        and now - first.at <= within_s
                    ):
                        decided_at = first.at
                    else:
                        raise ReviewUndoTooLate("this decision can no longer be undone")
                    pipe.multi()
                    if final is not None:
                        pipe.hdel(
                            ik,
                            "final",
                            "final_token",
                            "final_submitted",
                            "final_submitted_reason",
                            "outbox_attempts",
                            "outbox_error",
                        )
                        pipe.zrem(self._k("outbox"), review_id)
                        pipe.zrem(self._k("outbox_due"), review_id)
                        pipe.zrem(self._k("decided"), review_id)
                        pipe.zadd(
                            self._qk("open", item.policy_id, h.get("queue")),
                            {review_id: item.created_at},
                        )
                    elif first is not None and first.disputes is not None:
                        # A disagreement taken back: the first decision waits for its second
                        # review again, in the item's own queue (no senior took it yet).
                        current = h.get("queue") or DEFAULT_QUEUE
                        pipe.hset(
                            ik,
                            mapping={
                                "first": first.disputes.model_dump_json(),
                                "first_reviewer": first.disputes.reviewer,
                                "queue": item.queue,
                            },
                        )
                        pipe.hdel(ik, "disputed_reviewer")
                        pipe.zrem(self._qk("q", item.policy_id, current), review_id)
                        pipe.zrem(self._qk("open", item.policy_id, current), review_id)
                        pipe.zadd(
                            self._qk("open", item.policy_id, item.queue),
                            {review_id: item.created_at},
                        )
                    else:
                        pipe.hdel(ik, "first", "first_reviewer")
                        pipe.zrem(self._qk("q", item.policy_id, h.get("queue")), review_id)
                    day = datetime.fromtimestamp(decided_at, UTC).strftime("%Y-%m-%d")
                    pipe.hincrby(self._k("day", day), reviewer, -1)
                    expires = now + self.lease_s
                    pipe.hset(
                        ik,
                        mapping={
                            "state": "leased",
                            "lease_token": new_token,
                            "lease_holder": reviewer,
                            "lease_expires": repr(expires),
                        },
                    )
                    pipe.zadd(self._k("leases"), {review_id: expires})
                    pipe.set(self._k("holder", reviewer), review_id, px=int(self.lease_s * 1000))
                    pipe.set(self._k("tok", new_token), f"{review_id}|{reviewer}", ex=_TOKEN_TTL_S)
                    pipe.execute()
                    lease = Lease(
                        review_id=review_id, reviewer=reviewer, token=new_token, expires_at=expires
                    )
                    # A second reviewer's decision undone: the first one still stands.
                    if final is not None:
                        kept, queue = first, h.get("queue") or DEFAULT_QUEUE
                    elif first is not None and first.disputes is not None:
                        kept, queue = first.disputes, item.queue
                    else:
                        kept, queue = None, h.get("queue") or DEFAULT_QUEUE
                    return Claim(item=item, lease=lease, first=kept, now=now, queue=queue)
                except WatchError:
                    continue

    # --- final-decision delivery ----------------------------------------------------------

    @translated("review queue")
    def delivered(self, review_id: str) -> None:
        """Mark a final decision's ``on_final`` as done (removes it from the outbox)."""
        with self._r.pipeline() as pipe:
            pipe.zrem(self._k("outbox"), review_id)
            pipe.zrem(self._k("outbox_due"), review_id)
            pipe.execute()

    @translated("review queue")
    def undelivered(self, *, older_than_s: float = 0.0) -> list[HumanDecision]:
        """Final decisions whose ``on_final`` has not returned (crash or downstream error)."""
        cutoff = self.now() - older_than_s
        rids = cast(list[str], self._r.zrangebyscore(self._k("outbox"), "-inf", cutoff))
        out = []
        for rid in rids:
            raw = self._r.hget(self._k("item", rid), "final")
            if raw is not None:
                out.append(HumanDecision.model_validate_json(cast(str, raw)))
        return out

    @translated("review queue")
    def due(self, *, limit: int = 100, hold_s: float = 60.0) -> list[OutboxEntry]:
        """Outbox entries whose next attempt is due, oldest first, each held for ``hold_s``."""
        with self._r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self._k("outbox"), self._k("outbox_due"))  # type: ignore[no-untyped-call]
                    now = self.now()
                    decided = cast(
                        list[tuple[str, float]],
                        pipe.zrangebyscore(self._k("outbox"), "-inf", now, withscores=True),
                    )
                    rids = [rid for rid, _ in decided]
                    later = cast(
                        list[float | None],
                        pipe.zmscore(self._k("outbox_due"), rids) if rids else [],
                    )
                    chosen = [
                        (rid, at)
                        for (rid, at), due_at in zip(decided, later, strict=True)
                        if due_at is None or float(due_at) <= now
                    ][:limit]
                    pipe.multi()
                    if chosen:
                        pipe.zadd(self._k("outbox_due"), {rid: now + hold_s for rid, _ in chosen})
                    pipe.execute()
                    break
                except WatchError:
                    continue
        out = []
        for rid, at in chosen:
            final, attempts = self._r.hmget(self._k("item", rid), ["final", "outbox_attempts"])
            if final is not None:
                out.append(
                    OutboxEntry(
                        decision=HumanDecision.model_validate_json(cast(str, final)),
                        attempts=int(attempts or 0),
                        decided_at=at,
                    )
                )
        return out

    @translated("review queue")
    def retry_later(self, review_id: str, *, delay_s: float, error: str) -> int:
        """A delivery failed: due again in ``delay_s``; returns the failed attempts so far."""
        if self._r.zscore(self._k("outbox"), review_id) is None:
            return 0
        with self._r.pipeline() as pipe:
            pipe.zadd(self._k("outbox_due"), {review_id: self.now() + delay_s})
            pipe.hincrby(self._k("item", review_id), "outbox_attempts", 1)
            pipe.hset(self._k("item", review_id), "outbox_error", error[:500])
            _, attempts, _ = pipe.execute()
        return int(attempts)

    # --- stats and export -----------------------------------------------------------------

    @translated("review queue")
    def policies(self) -> list[str]:
        return sorted(cast(set[str], self._r.smembers(self._k("policies"))))

    @translated("review queue")
    def stats(self) -> list[ReviewStats]:
        """Queue depth (waiting, in review) and oldest open item age per policy and queue
        (every policy's ``review`` queue; other queues while they hold open items)."""
        now = self.now()
        leased: dict[tuple[str, str], int] = {}
        for rid in cast(list[str], self._r.zrange(self._k("leases"), 0, -1)):
            policy, queue = self._r.hmget(self._k("item", rid), ["policy", "queue"])
            if policy is not None:
                key = (cast(str, policy), cast(str, queue or DEFAULT_QUEUE))
                leased[key] = leased.get(key, 0) + 1
        names = cast(set[str], self._r.smembers(self._k("queues")))
        out = []
        for policy in self.policies():
            for queue in sorted(names | {DEFAULT_QUEUE}):
                oldest = cast(
                    list[tuple[str, float]],
                    self._r.zrange(self._qk("open", policy, queue), 0, 0, withscores=True),
                )
                if queue != DEFAULT_QUEUE and not oldest:
                    continue
                out.append(
                    ReviewStats(
                        policy_id=policy,
                        waiting=self._r.zcard(self._qk("q", policy, queue)),
                        in_review=leased.get((policy, queue), 0),
                        oldest_age_s=max(0.0, now - oldest[0][1]) if oldest else None,
                        queue=queue,
                    )
                )
        return out

    @translated("review queue")
    def decisions_on(self, day: str | None = None) -> dict[str, int]:
        """Decisions per pseudonymous reviewer on a UTC day (default today)."""
        day = day or datetime.fromtimestamp(self.now(), UTC).strftime("%Y-%m-%d")
        raw = cast(dict[str, str], self._r.hgetall(self._k("day", day)))
        return {k: int(v) for k, v in raw.items()}

    @translated("review queue")
    def export(self) -> Iterator[dict[str, Any]]:
        """Reviewed items as labelled rows (oldest decision first), for threshold calibration."""
        start = 0
        while True:
            rids = cast(list[str], self._r.zrange(self._k("decided"), start, start + 199))
            if not rids:
                return
            start += len(rids)
            for rid in rids:
                h = cast(dict[str, str], self._r.hgetall(self._k("item", rid)))
                if "final" not in h:
                    continue
                item = ReviewItem.model_validate_json(h["item"])
                final = HumanDecision.model_validate_json(h["final"])
                yield export_row(item, final)

    # --- reading everything (the importer into PostgreSQL) ---------------------------------

    def _all_ids(self) -> list[str]:
        """Every item: the open ones (waiting or leased, per policy) and the decided ones.
        Read from the indexes the queue keeps, never by scanning the keyspace."""
        seen: dict[str, None] = {}
        queues = cast(set[str], self._r.smembers(self._k("queues"))) | {DEFAULT_QUEUE}
        open_keys = [self._qk("open", p, q) for p in self.policies() for q in sorted(queues)]
        for key in [*open_keys, self._k("decided")]:
            start = 0
            while True:
                page = cast(list[str], self._r.zrange(key, start, start + 999))
                if not page:
                    break
                start += len(page)
                seen.update(dict.fromkeys(page))
        return list(seen)

    @translated("review queue")
    def count_records(self) -> int:
        """How many items :meth:`records` will yield."""
        return len(self._all_ids())

    @translated("review queue")
    def records(self, *, batch: int = 500) -> Iterator[list[LegacyReviewRecord]]:
        """Every item with its whole state (``LegacyReviewSource``), in batches; one pipelined
        round trip per batch. Read it while nothing writes (the old release stopped)."""
        ids = self._all_ids()
        for start in range(0, len(ids), batch):
            part = ids[start : start + batch]
            with self._r.pipeline(transaction=False) as pipe:
                for rid in part:
                    pipe.hgetall(self._k("item", rid))
                pipe.zmscore(self._k("outbox"), part)
                pipe.zmscore(self._k("outbox_due"), part)
                answers = pipe.execute()
            hashes = cast(list[dict[str, str]], answers[: len(part)])
            outbox = cast(list[float | None], answers[len(part)])
            due = cast(list[float | None], answers[len(part) + 1])
            out = [
                _record(h, outbox_at, due_at)
                for h, outbox_at, due_at in zip(hashes, outbox, due, strict=True)
                if "item" in h
            ]
            if out:
                yield out


def _record(h: dict[str, str], outbox_at: float | None, due_at: float | None) -> LegacyReviewRecord:
    """One item hash (with its outbox scores) as a :class:`LegacyReviewRecord`."""
    final = HumanDecision.model_validate_json(h["final"]) if "final" in h else None
    state = h.get("state", "queued")
    if final is not None:
        state = "final"
    elif state not in ("queued", "leased"):
        state = "queued"
    outbox = None
    if final is not None and outbox_at is not None:
        outbox = LegacyOutbox(
            decided_at=float(outbox_at),
            due_at=float(due_at) if due_at is not None else float(outbox_at),
            attempts=int(h.get("outbox_attempts") or 0),
            last_error=h.get("outbox_error") or None,
        )
    submitted = h.get("final_submitted")
    return LegacyReviewRecord(
        item=ReviewItem.model_validate_json(h["item"]),
        state=cast(Any, state),
        rank=float(h.get("rank") or 0.0),
        lease_token=h.get("lease_token"),
        lease_holder=h.get("lease_holder"),
        lease_expires=float(h["lease_expires"]) if h.get("lease_expires") else None,
        first=FirstDecision.model_validate_json(h["first"]) if "first" in h else None,
        first_reviewer=h.get("first_reviewer"),
        final=final,
        final_token=h.get("final_token"),
        final_submitted=ReviewDecision(submitted) if submitted else None,
        final_submitted_reason=h.get("final_submitted_reason") or None,
        decided_at=final.decided_at.timestamp() if final is not None else None,
        outbox=outbox,
        queue=h.get("queue") or DEFAULT_QUEUE,
    )
