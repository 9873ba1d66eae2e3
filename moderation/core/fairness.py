"""Fairness between tenants: who gets how much of the queue, and in what order workers take
work. Pure: no I/O.

Two guarantees, so that one tenant's backlog never refuses or delays another tenant's work:

* **Shares of the queued bytes** (:func:`queued_byte_shares`). Beside the global cap
  (``queue.max_queued_bytes``) every tenant has its own cap on the bytes its unfinished jobs
  hold: its configured ``max_queued_bytes``, or by default the global cap split by weight among
  the configured tenants. A tenant over its share is refused (429 ``tenant_queue_full``) while
  the others still have theirs.
* **Lanes served in weighted turns** (:func:`lanes`, :class:`FairOrder`). Each configured tenant
  has its own lane (a broker queue) and a priority lane; workers take the next message from the
  lanes in the order :class:`FairOrder` gives, so a burst of one tenant waits behind its own
  lane, not in front of everyone else's.
* **Videos in lanes of their own** (``lanes(..., video=True)``): a video costs the worker
  about as much as twenty photos, so video jobs go to the video lanes (same shape: shared,
  per tenant, priority) that video workers consume with their own concurrency; the tenants
  take weighted turns there too. A worker that consumes both kinds orders every photo lane
  before every video lane, so a backlog of videos never delays a waiting photo.

:class:`FairOrder` is stride scheduling: every lane has a *pass*; taking a message from a lane
advances its pass by ``1 / weight``; lanes are tried lowest pass first, priority lanes before
normal lanes. A lane that was idle does not bank credit: when it is served its pass starts from
the pass of the lanes that kept working (the *virtual time*), so a tenant that comes back after
an hour gets its turn at once but no monopoly. Over any stretch in which lanes ``a`` and ``b``
both have work, the messages taken from them differ from the ratio ``w_a : w_b`` by at most one.

::

    order()      = lanes by (video, class, pass, name)     class 0: priority, 1: normal
    served(l)    : vt = max(vt, pass[l]);  pass[l] = max(pass[l], vt) + 1 / weight[l]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from moderation.core.jobs import DEFAULT_TENANT

__all__ = [
    "HIGH",
    "NORMAL",
    "FairOrder",
    "Lane",
    "TenantBacklog",
    "lane_for",
    "lanes",
    "queued_byte_shares",
]

#: Job priorities an upstream service may ask for (``priority`` on a job).
NORMAL = "normal"
HIGH = "high"


@dataclass(frozen=True, slots=True)
class TenantBacklog:
    """A tenant's jobs that have not ended: how many, and when the oldest was created (unix
    time; None when there is none)."""

    depth: int
    oldest_created_at: float | None = None

    def oldest_age_s(self, now: float) -> float:
        """Seconds the oldest job has waited (0 without a backlog)."""
        return max(0.0, now - self.oldest_created_at) if self.oldest_created_at else 0.0


@dataclass(frozen=True, slots=True)
class Lane:
    """One broker queue of job messages: a tenant's normal or priority lane, of photos or of
    videos."""

    name: str
    tenant: str | None
    weight: float = 1.0
    high: bool = False
    video: bool = False


def lane_for(queue_name: str, tenant: str, *, high: bool, known: Iterable[str]) -> str:
    """The lane (broker queue) a job of ``tenant`` goes to: ``<queue>.t.<tenant>`` (normal) or
    ``<queue>.high.<tenant>`` (priority) for a configured tenant; ``queue`` itself for tenant
    ``default``'s normal jobs (the lane of a deployment without named tenants, as before lanes
    existed) and for a tenant not configured (any priority)."""
    if tenant not in set(known):
        return queue_name
    if tenant == DEFAULT_TENANT and not high:
        return queue_name
    return f"{queue_name}.{'high' if high else 't'}.{tenant}"


def lanes(queue_name: str, weights: Mapping[str, float], *, video: bool = False) -> list[Lane]:
    """Every lane of job messages for the configured tenants and their weights: the shared
    queue (tenant ``default``'s normal lane; weight 1 unless it is configured), then per other
    tenant its normal lane, and per tenant its priority lane. ``video``: the lanes are video
    lanes (``queue_name`` is then the video queue's name).

    Raises:
        ValueError: a weight is not a positive number.
    """
    default = DEFAULT_TENANT if DEFAULT_TENANT in weights else None
    shared = _weight(DEFAULT_TENANT, weights.get(DEFAULT_TENANT, 1.0))
    out = [Lane(queue_name, default, shared, video=video)]
    for tenant in sorted(weights):
        weight = _weight(tenant, weights[tenant])
        if tenant != DEFAULT_TENANT:
            normal = lane_for(queue_name, tenant, high=False, known=weights)
            out.append(Lane(normal, tenant, weight, video=video))
        high = lane_for(queue_name, tenant, high=True, known=weights)
        out.append(Lane(high, tenant, weight, high=True, video=video))
    return out


def _weight(tenant: str, weight: float) -> float:
    if not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"tenant {tenant!r}: weight must be a positive number, not {weight}")
    return float(weight)


def queued_byte_shares(
    total: int, weights: Mapping[str, float], own: Mapping[str, int | None]
) -> dict[str, int]:
    """Each tenant's cap on queued bytes: its own (``own[tenant]``) where set, else ``total``
    split among all tenants in proportion to their weights (at least 1 byte).

    Raises:
        ValueError: a weight is not a positive number.
    """
    total_weight = sum(_weight(t, w) for t, w in weights.items())
    shares: dict[str, int] = {}
    for tenant, weight in weights.items():
        fixed = own.get(tenant)
        if fixed is not None:
            shares[tenant] = fixed
        else:
            shares[tenant] = max(1, math.floor(total * weight / total_weight))
    return shares


class FairOrder:
    """Weighted turns between lanes (stride scheduling, see the module docstring). Lanes not
    declared (another queue a worker consumes, e.g. callbacks) have weight 1, normal class.

    Not thread-safe: one per consumer channel (kombu calls it from its event loop)."""

    def __init__(self, declared: Sequence[Lane] = ()) -> None:
        self._lanes = {lane.name: lane for lane in declared}
        self._pass: dict[str, float] = {}
        self._vt = 0.0

    def lane(self, name: str) -> Lane:
        return self._lanes.get(name) or Lane(name, None)

    def pass_of(self, name: str) -> float:
        """The lane's pass as it would be ordered now (an idle lane's is the virtual time)."""
        return max(self._pass.get(name, 0.0), self._vt - 1.0 / self.lane(name).weight)

    def order(self, names: Iterable[str]) -> list[str]:
        """``names`` in the order to try them: photo lanes before video lanes, priority lanes
        first, then lowest pass."""
        return sorted(
            names,
            key=lambda n: (self.lane(n).video, 0 if self.lane(n).high else 1, self.pass_of(n), n),
        )

    def served(self, name: str) -> None:
        """A message was taken from lane ``name``."""
        own = self._pass.get(name, 0.0)
        self._vt = max(self._vt, own)
        self._pass[name] = max(own, self._vt) + 1.0 / self.lane(name).weight
