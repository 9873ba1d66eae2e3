"""Python client of the moderation API (httpx), sync and async.

::

    from moderation.client import ModerationClient

    with ModerationClient("http://127.0.0.1:8000") as client:
        job_id = client.submit("s3://uploads/cat.jpg", id="upload-8812")
        result = client.wait(job_id, timeout=30)
        print(result.status, result.decision)

``submit`` takes a reference string (``s3://``, ``http(s)://``), raw ``bytes`` or a local
``Path`` (sent inline). The same ``id`` submitted twice is processed once.

Errors: :class:`~moderation.exceptions.JobRejected` (4xx, with the server's code and message;
:class:`~moderation.exceptions.JobConflict` for a 409 id conflict, with ``existing_id``;
:class:`~moderation.exceptions.RateLimited` for a 429, with ``retry_after_s``),
:class:`~moderation.exceptions.JobNotFoundError` (404), :class:`~moderation.exceptions.
ApiUnavailable` (connection error or 5xx), :class:`~moderation.exceptions.JobWaitTimeout`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import httpx

from moderation.core.appeals import Appeal
from moderation.core.jobs import JobResult
from moderation.exceptions import (
    ApiUnavailable,
    JobConflict,
    JobNotFoundError,
    JobRejected,
    JobWaitTimeout,
    RateLimited,
)

__all__ = ["AsyncModerationClient", "ImageInput", "ModerationClient"]

ImageInput = str | bytes | Path


def _job_body(
    image: ImageInput,
    *,
    policies: Sequence[str] | None = None,
    id: str | None = None,
    metadata: dict[str, Any] | None = None,
    callback_url: str | None = None,
    priority: Literal["normal", "high"] = "normal",
    uploader_id: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if isinstance(image, Path):
        image = image.read_bytes()
    if isinstance(image, bytes):
        body["image_base64"] = base64.b64encode(image).decode()
    else:
        body["image_url"] = image
    if policies is not None:
        body["policies"] = list(policies)
    if id is not None:
        body["id"] = id
    if metadata:
        body["metadata"] = metadata
    if callback_url is not None:
        body["callback_url"] = callback_url
    if priority != "normal":
        body["priority"] = priority
    if uploader_id is not None:
        body["uploader_id"] = uploader_id
    return body


def _check(response: httpx.Response) -> Any:
    """The JSON body of a success; a problem-details answer (RFC 9457) raised as the matching
    error of the exception tree."""
    if response.status_code < 400:
        return response.json()
    try:
        payload = response.json()
    except ValueError:
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    code = str(payload.get("code") or "http_error")
    message = str(payload.get("detail") or response.text or response.reason_phrase)
    index = payload.get("index") if isinstance(payload.get("index"), int) else None
    if response.status_code == 404:
        raise JobNotFoundError(message)
    if response.status_code >= 500:
        raise ApiUnavailable(f"HTTP {response.status_code}: {message}")
    if response.status_code == 409 and code == "id_conflict":
        raise JobConflict(message, existing_id=str(payload.get("job_id") or ""), index=index)
    if response.status_code == 429:
        try:
            wait = float(response.headers.get("retry-after", "1"))
        except ValueError:
            wait = 1.0
        raise RateLimited(message, code=code, retry_after_s=wait)
    raise JobRejected(
        message,
        status=response.status_code,
        code=code,
        index=index,
    )


def _auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class ModerationClient:
    """Blocking client. Thread-safe (one httpx connection pool)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url, timeout=timeout, transport=transport, headers=_auth_headers(api_key)
        )

    def __enter__(self) -> ModerationClient:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, url: str, **kw: Any) -> Any:
        try:
            return _check(self._http.request(method, url, **kw))
        except httpx.TransportError as exc:
            raise ApiUnavailable(f"{method} {url}: {type(exc).__name__}: {exc}") from exc

    def submit(
        self,
        image: ImageInput,
        *,
        policies: Sequence[str] | None = None,
        id: str | None = None,
        metadata: dict[str, Any] | None = None,
        callback_url: str | None = None,
        priority: Literal["normal", "high"] = "normal",
        uploader_id: str | None = None,
    ) -> str:
        """Enqueue one image; returns the job id. ``priority="high"``: the tenant's priority
        lane, within its quota of priority jobs per minute. ``uploader_id``: your
        pseudonymous id of who posted it (strikes; see docs/appeals.md).

        Raises:
            JobRejected: the API refused the request (4xx; 429 ``priority_quota_exceeded``
                when the priority quota is used up).
            ApiUnavailable: the API is unreachable or failed (5xx).
        """
        body = _job_body(
            image,
            policies=policies,
            id=id,
            metadata=metadata,
            callback_url=callback_url,
            priority=priority,
            uploader_id=uploader_id,
        )
        return str(self._request("POST", "/v1/jobs", json=body)["id"])

    def submit_many(
        self,
        images: Iterable[ImageInput],
        *,
        policies: Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
        chunk: int = 500,
    ) -> list[str]:
        """Enqueue many images (batch endpoint, ``chunk`` per request); returns job ids in order.

        Raises:
            JobRejected: a chunk was refused (no job of that chunk was enqueued).
            ApiUnavailable: the API is unreachable or failed (5xx).
        """
        bodies = [
            _job_body(image, policies=policies, id=ids[i] if ids else None)
            for i, image in enumerate(images)
        ]
        out: list[str] = []
        for start in range(0, len(bodies), chunk):
            answer = self._request(
                "POST", "/v1/jobs:batch", json={"jobs": bodies[start : start + chunk]}
            )
            out.extend(str(j["id"]) for j in answer["jobs"])
        return out

    def healthz(self) -> bool:
        """Whether the API process answers (``GET /healthz``).

        Raises:
            ApiUnavailable: it does not.
        """
        return bool(self._request("GET", "/healthz").get("status") == "ok")

    def upload_many(
        self,
        images: Iterable[bytes | Path],
        *,
        policies: Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
        chunk: int = 500,
    ) -> list[str]:
        """Enqueue many images (or videos) as raw bytes (multipart ``/v1/jobs:upload``: no
        base64, no JSON around the bytes), ``chunk`` per request; returns job ids in order. A
        :class:`~pathlib.Path` is streamed from its file, never read whole (a large video goes
        on to the service's object store as it arrives, up to ``video.max_upload_bytes``).

        Raises:
            JobRejected: a chunk was refused (no job of that chunk was enqueued).
            ApiUnavailable: the API is unreachable or failed (5xx).
        """
        blobs = list(images)
        out: list[str] = []
        for start in range(0, len(blobs), chunk):
            with contextlib.ExitStack() as opened:
                files = [
                    (
                        "image",
                        (
                            f"{start + i}",
                            opened.enter_context(data.open("rb"))
                            if isinstance(data, Path)
                            else data,
                            "application/octet-stream",
                        ),
                    )
                    for i, data in enumerate(blobs[start : start + chunk])
                ]
                out.extend(
                    self._upload_chunk(files, start, policies=policies, ids=ids, chunk=chunk)
                )
        return out

    def _upload_chunk(
        self,
        files: list[tuple[str, tuple[str, Any, str]]],
        start: int,
        *,
        policies: Sequence[str] | None,
        ids: Sequence[str] | None,
        chunk: int,
    ) -> list[str]:
        fields: dict[str, Any] = {}
        if policies:
            fields["policies"] = list(policies)
        if ids is not None:
            fields["jobs"] = json.dumps([{"id": job_id} for job_id in ids[start : start + chunk]])
        answer = self._request("POST", "/v1/jobs:upload", files=files, data=fields)
        return [str(j["id"]) for j in answer["jobs"]]

    def lookup(self, job_ids: Sequence[str]) -> list[JobResult | None]:
        """The current results of many jobs in one request (None for an unknown id).

        Raises:
            ApiUnavailable: the API is unreachable or failed (5xx).
        """
        out: list[JobResult | None] = []
        for start in range(0, len(job_ids), 1000):
            answer = self._request(
                "POST", "/v1/jobs:lookup", json={"ids": list(job_ids[start : start + 1000])}
            )
            out.extend(None if r is None else JobResult.model_validate(r) for r in answer["jobs"])
        return out

    def get(self, job_id: str) -> JobResult:
        """The job's current result (status ``queued`` until it ends).

        Raises:
            JobNotFoundError: unknown or expired job id.
            ApiUnavailable: the API is unreachable or failed (5xx).
        """
        return JobResult.model_validate(self._request("GET", f"/v1/jobs/{job_id}"))

    def report(
        self,
        job_id: str,
        *,
        reporter: str,
        reason: str,
        reporter_type: Literal["user", "trusted_flagger"] = "user",
        text: str = "",
        callback_url: str | None = None,
    ) -> dict[str, Any]:
        """File a notice against one of your jobs (a user's report, or a trusted flagger's,
        which is reviewed first); returns the notice (``notice_id``, ``state``, ``reports``,
        ``duplicate``: True when the same report was already there).

        Raises:
            JobNotFoundError: unknown or expired job id.
            JobRejected: 409 ``notice_not_reviewable`` (no verdict yet), other 4xx.
            ApiUnavailable: the API is unreachable or failed (5xx).
        """
        body: dict[str, Any] = {
            "reporter_type": reporter_type,
            "reporter": reporter,
            "reason": reason,
            "text": text,
        }
        if callback_url is not None:
            body["callback_url"] = callback_url
        answer: dict[str, Any] = self._request("POST", f"/v1/jobs/{job_id}/notices", json=body)
        return answer

    def notice(self, notice_id: str) -> dict[str, Any]:
        """One of your notices: ``state`` ``open``, or ``answered`` with ``outcome``.

        Raises:
            JobNotFoundError: no such notice of yours.
            ApiUnavailable: the API is unreachable or failed (5xx).
        """
        answer: dict[str, Any] = self._request("GET", f"/v1/notices/{notice_id}")
        return answer

    def appeal(self, job_id: str, statement: str) -> Appeal:
        """Appeal the decision that restricted one of your jobs' content, with the user's
        statement (filing the same statement again returns the same appeal).

        Raises:
            JobNotFoundError: unknown or expired job id.
            JobRejected: nothing to appeal, the window has closed or the appeals allowed are
                used up (409; ``code`` says which), or a bad statement (422).
            ApiUnavailable: the API is unreachable or failed (5xx), or has no database.
        """
        answer = self._request("POST", f"/v1/jobs/{job_id}/appeals", json={"statement": statement})
        return Appeal.model_validate(answer)

    def appeals(self, job_id: str) -> list[Appeal]:
        """The appeals of one of your jobs, oldest first. Raises as :meth:`get`."""
        return [
            Appeal.model_validate(a) for a in self._request("GET", f"/v1/jobs/{job_id}/appeals")
        ]

    def get_appeal(self, appeal_id: str) -> Appeal:
        """One of your appeals (``status``: open, upheld or overturned).

        Raises:
            JobNotFoundError: no such appeal of yours.
        """
        return Appeal.model_validate(self._request("GET", f"/v1/appeals/{appeal_id}"))

    def wait(self, job_id: str, timeout: float = 60.0, *, poll_s: float = 0.1) -> JobResult:
        """Poll until the job ends (verdict or error).

        Raises:
            JobWaitTimeout: it did not end within ``timeout`` seconds.
            JobNotFoundError, ApiUnavailable: as for :meth:`get`.
        """
        deadline = time.monotonic() + timeout
        delay = poll_s
        while True:
            result = self.get(job_id)
            if result.status.final:
                return result
            if time.monotonic() >= deadline:
                raise JobWaitTimeout(f"job {job_id} still {result.status.value} after {timeout}s")
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 2.0)

    def wait_many(
        self, job_ids: Sequence[str], timeout: float = 300.0, *, poll_s: float = 0.1
    ) -> list[JobResult]:
        """Wait for every job (polling the unfinished ones together); results in the order of
        ``job_ids``.

        Raises:
            JobWaitTimeout: not all ended within ``timeout`` seconds.
            JobNotFoundError: an id is unknown or expired.
        """
        deadline = time.monotonic() + timeout
        done: dict[str, JobResult] = {}
        waiting = list(dict.fromkeys(job_ids))
        delay = poll_s
        while True:
            for job_id, result in zip(waiting, self.lookup(waiting), strict=True):
                if result is None:
                    raise JobNotFoundError(f"no job {job_id!r} (unknown or expired)")
                if result.status.final:
                    done[job_id] = result
            waiting = [j for j in waiting if j not in done]
            if not waiting:
                return [done[j] for j in job_ids]
            if time.monotonic() >= deadline:
                raise JobWaitTimeout(
                    f"{len(waiting)} of {len(done) + len(waiting)} jobs "
                    f"still running after {timeout}s"
                )
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 1.0)


class AsyncModerationClient:
    """The same operations for asyncio callers."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url, timeout=timeout, transport=transport, headers=_auth_headers(api_key)
        )

    async def __aenter__(self) -> AsyncModerationClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, url: str, **kw: Any) -> Any:
        try:
            return _check(await self._http.request(method, url, **kw))
        except httpx.TransportError as exc:
            raise ApiUnavailable(f"{method} {url}: {type(exc).__name__}: {exc}") from exc

    async def submit(
        self,
        image: ImageInput,
        *,
        policies: Sequence[str] | None = None,
        id: str | None = None,
        metadata: dict[str, Any] | None = None,
        callback_url: str | None = None,
        priority: Literal["normal", "high"] = "normal",
        uploader_id: str | None = None,
    ) -> str:
        """Enqueue one image; returns the job id. Raises as :meth:`ModerationClient.submit`."""
        body = _job_body(
            image,
            policies=policies,
            id=id,
            metadata=metadata,
            callback_url=callback_url,
            priority=priority,
            uploader_id=uploader_id,
        )
        return str((await self._request("POST", "/v1/jobs", json=body))["id"])

    async def get(self, job_id: str) -> JobResult:
        """The job's current result. Raises as :meth:`ModerationClient.get`."""
        return JobResult.model_validate(await self._request("GET", f"/v1/jobs/{job_id}"))

    async def wait(self, job_id: str, timeout: float = 60.0, *, poll_s: float = 0.1) -> JobResult:
        """Poll until the job ends. Raises as :meth:`ModerationClient.wait`."""
        deadline = time.monotonic() + timeout
        delay = poll_s
        while True:
            result = await self.get(job_id)
            if result.status.final:
                return result
            if time.monotonic() >= deadline:
                raise JobWaitTimeout(f"job {job_id} still {result.status.value} after {timeout}s")
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 2.0)
