"""ASGI middleware at the HTTP edge: request-body limits enforced while the body streams in, and
per-route request metrics.

**Body limits** (:class:`BodyLimit`). A request body is counted as it arrives, before any parser
sees it: a ``Content-Length`` over the route's limit is refused at once without reading a byte,
and a chunked body is refused as soon as the running count passes the limit, so an oversize
request costs at most the limit in memory. The refusal is a lingering close
(:mod:`moderation.http.lingering`): what the client still sends is read and dropped for a
bounded time, so the client reads the 413 instead of a reset connection.
The limits (:func:`body_limits`)::

    POST /v1/jobs        4/3 x queue.max_inline_bytes (base64) + 6 x queue.max_metadata_bytes
                         (JSON escapes) + 16 KiB
    POST /v1/jobs:batch  4/3 x queue.max_batch_bytes + 4 MiB (URLs, ids, metadata of the jobs)
    POST /v1/jobs:upload queue.max_batch_bytes + the jobs' options + 1 MiB + video.max_upload_bytes
                         (not buffered: streamed to the route, counted as it is read; parts
                         over video.stream_above_bytes go on to the object store)
    anything else        api_max_request_bytes (64 KiB: the reviewers' pages and API)

The submit use case then checks the decoded sizes exactly (per job, per batch, metadata size and
depth). A refusal is a 413 problem (``request_too_large``).

**Metrics** (:class:`HttpMetrics`): ``moderation_http_requests_total{route, method, status}`` and
``moderation_http_request_seconds{route, method}``; ``route`` is the route template
(``/v1/jobs/{job_id}``) or ``unmatched``, ``method`` one of the standard methods or ``other``,
``status`` the class (``2xx``, ``4xx``, ...): bounded labels only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moderation.http.lingering import refuse_lingering
from moderation.http.problems import problem_for, problem_response
from moderation.metrics import metrics, status_class
from moderation.settings import Settings

__all__ = ["STREAMED", "BodyLimit", "BodyRefused", "HttpMetrics", "body_limits", "max_upload_bytes"]

#: Routes whose body is streamed to the route, not buffered (:class:`BodyLimit`).
STREAMED = frozenset({("POST", "/v1/jobs:upload")})

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _b64(n: int) -> int:
    return 4 * math.ceil(n / 3)


def max_upload_bytes(settings: Settings) -> int:
    """The largest part ``/v1/jobs:upload`` streams to the object store."""
    v = settings.video
    return v.max_upload_bytes if v.max_upload_bytes is not None else v.max_bytes


def body_limits(settings: Settings) -> tuple[dict[tuple[str, str], int], int]:
    """(limit per (method, path), limit of every other request), in bytes."""
    q = settings.queue
    job = _b64(q.max_inline_bytes) + 6 * q.max_metadata_bytes + 16 * 1024
    batch = _b64(q.max_batch_bytes) + 4 * 1024 * 1024
    upload = (
        q.max_batch_bytes
        + q.max_batch_jobs * (1024 + 6 * q.max_metadata_bytes // 64)
        + (1024 * 1024)
        + max_upload_bytes(settings)  # a streamed video (not buffered: see BodyLimit.streamed)
    )
    return {
        ("POST", "/v1/jobs"): job,
        ("POST", "/v1/jobs:batch"): batch,
        ("POST", "/v1/jobs:upload"): upload,
    }, (settings.api_max_request_bytes)


class BodyRefused(Exception):
    """Raised by a streamed route (or its counted body) to refuse the request while its body is
    still arriving: :class:`BodyLimit` answers ``problem`` with a lingering close, so the
    client reads it (nothing more of the body is kept)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


class BodyLimit:
    """Refuses request bodies over the route's limit while they stream in (see the module
    docstring). The body is buffered (at most the limit) and handed on once complete."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limits: dict[tuple[str, str], int],
        default: int,
        streamed: frozenset[tuple[str, str]] = frozenset(),
    ) -> None:
        self.app = app
        self.limits = limits
        self.default = default
        #: Routes whose body is not buffered: counted as the route reads it, refused
        #: (:class:`BodyRefused`) by the read that passes the limit.
        self.streamed = streamed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get((scope["method"], scope["path"]), self.default)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._refuse(scope, receive, send, limit)
            return
        if (scope["method"], scope["path"]) in self.streamed:
            await self._streamed(scope, receive, send, limit)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                await self._refuse(scope, receive, send, limit)
                return
            if body:
                chunks.append(body)
            if not message.get("more_body", False):
                break
        replay: list[Message] = [
            {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        ]
        chunks.clear()

        async def replayed() -> Message:
            if replay:
                return replay.pop()
            return await receive()  # after the body: wait for the disconnect

        await self.app(scope, replayed, send)

    async def _streamed(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Hand the body on as it arrives, counted; refuse it (lingering) when it passes
        ``limit`` or the route refuses it while reading."""
        size = 0
        started = False

        async def counted() -> Message:
            nonlocal size
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    raise BodyRefused(413, "request_too_large", _too_large(scope, limit))
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except BodyRefused as exc:
            if started:
                raise
            response = problem_response(
                problem_for(exc.status, exc.code, exc.detail), headers={"Connection": "close"}
            )
            await refuse_lingering(response, scope, receive, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = problem_response(
            problem_for(413, "request_too_large", _too_large(scope, limit)),
            headers={"Connection": "close"},
        )
        await refuse_lingering(response, scope, receive, send)


def _too_large(scope: Scope, limit: int) -> str:
    where = f"{scope['method']} {scope['path']}"
    hint = (
        "; send image_url instead of inline bytes, or smaller batches"
        if scope["path"].startswith("/v1/")
        else ""
    )
    return f"request body exceeds {limit} bytes for {where}{hint}"


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class HttpMetrics:
    """Counts every request by route template, method and status class, and times it."""

    def __init__(self, app: ASGIApp, *, routes: Callable[[], list[object]]) -> None:
        self.app = app
        self._routes = routes

    def _template(self, scope: Scope) -> str:
        route = scope.get("route")
        path = getattr(route, "path", None)
        if isinstance(path, str):
            return path
        for candidate in self._routes():  # refused before routing (e.g. a 413)
            matches = getattr(candidate, "matches", None)
            if matches is None:
                continue
            match, _ = matches({**scope, "type": "http"})
            if match is Match.FULL:
                return str(getattr(candidate, "path", "unmatched"))
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            method = scope["method"] if scope["method"] in _METHODS else "other"
            route = self._template(scope)
            m = metrics()
            m.http_requests.labels(route, method, status_class(status)).inc()
            m.http_seconds.labels(route, method).observe(time.perf_counter() - started)
