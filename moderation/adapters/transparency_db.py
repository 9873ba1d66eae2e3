"""The EU DSA Transparency Database's API (statements of reasons, Art. 24(5)) over httpx.

``POST {url}/api/v1/statements`` with ``{"statements": [...]}`` (at most 100), headers
``Authorization: Bearer <token>``, ``Accept`` and ``Content-Type: application/json``; ``201
Created`` answers the created statements (each with its ``uuid``). Anything but 201 means none of
the batch was created: 422 (``errors`` per ``statement_<i>``) and 401 are
:class:`~moderation.exceptions.TransparencyDbRejected` (fix and resend); a transport error or a
5xx is :class:`~moderation.exceptions.TransparencyDbUnavailable` (send again later: a statement
already created is refused by its puid, never created twice).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import httpx

from moderation.core.audit.transparency_db import MAX_BATCH
from moderation.exceptions import TransparencyDbRejected, TransparencyDbUnavailable
from moderation.settings import TransparencyDbSettings

__all__ = ["TransparencyDbClient"]


def _batches(bodies: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for body in bodies:
        batch.append(body)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class TransparencyDbClient:
    """Submits statements of reasons to the Transparency Database."""

    def __init__(
        self, settings: TransparencyDbSettings, *, transport: httpx.BaseTransport | None = None
    ) -> None:
        self._http = httpx.Client(
            base_url=settings.url.rstrip("/"),
            timeout=settings.timeout_s,
            transport=transport,
            follow_redirects=False,
            headers={
                "Authorization": f"Bearer {settings.token.get_secret_value()}",
                "Accept": "application/json",
                "Content-Type": "application/json",
            },
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TransparencyDbClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, bodies: Iterable[dict[str, Any]]) -> list[str]:
        """Create the statements, 100 per request; the uuids the database gave them, in order.

        Raises:
            TransparencyDbRejected: a batch was refused (422, 401, other 4xx); the batches
                before it were created.
            TransparencyDbUnavailable: unreachable or 5xx (transient).
        """
        uuids: list[str] = []
        for batch in _batches(bodies, MAX_BATCH):
            uuids.extend(self._post(batch))
        return uuids

    def _post(self, batch: Sequence[dict[str, Any]]) -> list[str]:
        try:
            response = self._http.post("/api/v1/statements", json={"statements": list(batch)})
        except httpx.HTTPError as exc:
            raise TransparencyDbUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500:
            raise TransparencyDbUnavailable(f"HTTP {response.status_code}")
        try:
            payload = response.json()
        except ValueError:
            payload = {}
        if response.status_code != 201:
            errors = payload.get("errors") if isinstance(payload, dict) else None
            raise TransparencyDbRejected(
                f"HTTP {response.status_code}: "
                f"{payload.get('message', '') if isinstance(payload, dict) else ''}".strip(),
                errors=errors if isinstance(errors, dict) else None,
            )
        created = payload.get("statements", []) if isinstance(payload, dict) else []
        return [str(s.get("uuid", "")) for s in created if isinstance(s, dict)]
