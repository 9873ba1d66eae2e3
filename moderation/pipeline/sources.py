"""The image sources of a process, by URI scheme: the one list of schemes there is.

A job's :class:`~moderation.core.image_ref.ImageRef` is read by the source registered for its
scheme. Inline bytes (sent with the request) are just another source: :class:`InlineSource`
reads them back from the job store. Adding a source is one adapter file plus one registration
line in :mod:`moderation.compose`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor

from moderation.core.blobs import check_key
from moderation.core.evidence import EVIDENCE_PREFIX, verifies
from moderation.core.image_ref import (
    EVIDENCE_SCHEME,
    INLINE_SCHEME,
    SPILL_PREFIX,
    SPILL_SCHEME,
    ImageRef,
)
from moderation.core.payload import MediaFile, Payload
from moderation.exceptions import (
    BlobKeyInvalid,
    BlobNotFound,
    ImageFetchError,
    ModerationError,
    UrlRefusedError,
)
from moderation.ports import BlobStore, ImageSource, JobStore, StreamingImageSource

__all__ = [
    "DuplicateSchemeError",
    "EvidenceSource",
    "ImageSources",
    "InlineSource",
    "SpillSource",
    "payload_head",
    "release",
]

log = logging.getLogger(__name__)


class DuplicateSchemeError(ValueError):
    """Two sources claim the same scheme (a wiring mistake, found at start-up)."""


class InlineSource:
    """``inline:<key>``: bytes uploaded with the request, kept in the job store."""

    schemes = (INLINE_SCHEME,)
    public = False

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def check(self, ref: ImageRef, *, tenant: str | None) -> None:
        if not ref.inline_key:
            raise ImageFetchError("inline reference without a key", code="bad_reference")

    def fetch(self, ref: ImageRef, *, tenant: str | None) -> bytes:
        """Raises:
        ImageFetchError: the bytes expired (code ``inline_expired``).
        """
        result = self.fetch_many([ref])[0]
        if isinstance(result, ModerationError):
            raise result
        return result

    def fetch_many(self, refs: Sequence[ImageRef]) -> list[bytes | ModerationError]:
        """Every ref's bytes in one store round trip (an error where they expired)."""
        found = self.store.inline_bytes_many([ref.inline_key for ref in refs])
        return [
            data
            if data is not None
            else ImageFetchError(
                f"the inline image {ref.inline_key} has expired", code="inline_expired"
            )
            for ref, data in zip(refs, found, strict=True)
        ]


def _blob_key(ref: ImageRef, prefix: str, where: str) -> str:
    """The object-store key ``ref`` names (``scheme:<key>``), which must be well formed and
    inside ``prefix``.

    Raises:
        ImageFetchError: code ``bad_reference`` otherwise.
    """
    key = ref.uri.partition(":")[2]
    try:
        check_key(key)
    except BlobKeyInvalid as exc:
        raise ImageFetchError(str(exc), code="bad_reference") from exc
    if not key.startswith(prefix):
        raise ImageFetchError(f"{ref.scheme} reference outside {where}", code="bad_reference")
    return key


class SpillSource:
    """``spill:<key>``: bytes uploaded with the request that were larger than
    ``queue.inline_spill_bytes``, which the API wrote to the object store instead of Redis."""

    schemes = (SPILL_SCHEME,)
    public = False

    def __init__(self, blobs: BlobStore, *, memory_bytes: int = 8 * 1024 * 1024) -> None:
        self.blobs = blobs
        #: Larger objects are streamed into a local file (``video.stream_above_bytes``).
        self.memory_bytes = memory_bytes

    def check(self, ref: ImageRef, *, tenant: str | None) -> None:
        _blob_key(ref, SPILL_PREFIX, "the spill folder")

    def fetch(self, ref: ImageRef, *, tenant: str | None) -> bytes:
        """Raises:
        ImageFetchError: the bytes are gone (code ``inline_expired``) or the key is malformed.
        BlobStoreUnavailable: the object store cannot be reached (transient: retried).
        """
        self.check(ref, tenant=tenant)
        try:
            return self.blobs.get(ref.uri.partition(":")[2])
        except BlobNotFound as exc:
            raise ImageFetchError(
                f"the inline image {ref.uri} has expired", code="inline_expired"
            ) from exc

    def fetch_media(self, ref: ImageRef, *, tenant: str | None) -> Payload:
        """:meth:`fetch`, streamed into a local file past ``memory_bytes`` (a video uploaded
        in a stream, :mod:`moderation.pipeline.uploads`).

        Raises:
            as :meth:`fetch`.
        """
        self.check(ref, tenant=tenant)
        try:
            return self.blobs.get_media(ref.uri.partition(":")[2], memory_bytes=self.memory_bytes)
        except BlobNotFound as exc:
            raise ImageFetchError(
                f"the inline image {ref.uri} has expired", code="inline_expired"
            ) from exc


class EvidenceSource:
    """``evidence:<key>``: the scored bytes of a review item, kept in the object store for its
    reviewer (:mod:`moderation.pipeline.review_evidence`); what a review export names when the
    job's inline bytes are gone. Never public: no tenant can name one in a job."""

    schemes = (EVIDENCE_SCHEME,)
    public = False

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs

    def check(self, ref: ImageRef, *, tenant: str | None) -> None:
        _blob_key(ref, EVIDENCE_PREFIX, "the review evidence")

    def fetch(self, ref: ImageRef, *, tenant: str | None) -> bytes:
        """Raises:
        ImageFetchError: the evidence is gone (past its retention: ``evidence_expired``), does
            not match the hash its key names (``evidence_mismatch``), or the key is malformed.
        BlobStoreUnavailable: the object store cannot be reached (transient).
        """
        self.check(ref, tenant=tenant)
        key = ref.uri.partition(":")[2]
        try:
            data = self.blobs.get(key)
        except BlobNotFound as exc:
            raise ImageFetchError(
                f"the review evidence {key} is gone (past review.evidence_retention_s)",
                code="evidence_expired",
            ) from exc
        if not verifies(data, key.rsplit("/", 1)[-1]):
            raise ImageFetchError(
                f"the review evidence {key} does not match its hash", code="evidence_mismatch"
            )
        return data


class ImageSources:
    """Image sources keyed by scheme. Validated once: a scheme claimed twice is an error."""

    def __init__(self, sources: Iterable[ImageSource]) -> None:
        self._by_scheme: dict[str, ImageSource] = {}
        for source in sources:
            for scheme in source.schemes:
                if scheme in self._by_scheme:
                    raise DuplicateSchemeError(f"two image sources claim scheme {scheme!r}")
                self._by_scheme[scheme] = source

    @property
    def public_schemes(self) -> list[str]:
        """Schemes upstream callers may use in ``image_url``."""
        return sorted(s for s, source in self._by_scheme.items() if source.public)

    def source_for(self, ref: ImageRef, *, public_only: bool = False) -> ImageSource:
        """The source of ``ref``'s scheme.

        Raises:
            UrlRefusedError: no (public) source reads that scheme (code ``bad_scheme``).
        """
        source = self._by_scheme.get(ref.scheme)
        if source is None or (public_only and not source.public):
            shown = f"scheme {ref.scheme!r}" if ref.scheme else "a reference without a scheme"
            allowed = ", ".join(f"{s}://" for s in self.public_schemes)
            raise UrlRefusedError(
                f"{ref.uri[:200]!r}: {shown} is not supported (use {allowed})", code="bad_scheme"
            )
        return source

    def check(self, ref: ImageRef, *, tenant: str) -> None:
        """Refuse a reference ``tenant`` may not send (unknown scheme, malformed, outside its
        sources) at submit time.

        Raises:
            ImageFetchError: with a stable code (``bad_scheme``, ``url_refused``,
                ``bad_reference``, ``source_not_allowed``).
        """
        self.source_for(ref, public_only=True).check(ref, tenant=tenant)

    def fetch(self, ref: ImageRef, *, tenant: str | None) -> bytes:
        """The image bytes, read on behalf of ``tenant`` (None: the operator's tools).

        Raises:
            ImageFetchError, ImageFetchTransient: from the source.
        """
        return self.source_for(ref).fetch(ref, tenant=tenant)

    def fetch_media(self, ref: ImageRef, *, tenant: str | None) -> Payload:
        """:meth:`fetch`, or (a large download of a streaming source) the local file it was
        streamed into: remove it with :func:`release` when done."""
        source = self.source_for(ref)
        if isinstance(source, StreamingImageSource):
            return source.fetch_media(ref, tenant=tenant)
        return source.fetch(ref, tenant=tenant)

    def fetch_many(
        self,
        refs: Sequence[ImageRef],
        *,
        tenants: Sequence[str | None],
        pool: Executor | None = None,
    ) -> list[Payload | ModerationError]:
        """Every ref's bytes, or the local file a large one was streamed into (read on behalf
        of the tenant at the same index), or the error that ref ended with: inline bytes in
        one store round trip, remote images concurrently on ``pool``. The caller
        :func:`releases <release>` the files."""
        if len(tenants) != len(refs):
            raise ValueError("fetch_many needs one tenant per reference")
        out: list[Payload | ModerationError | None] = [None] * len(refs)
        inline = [i for i, ref in enumerate(refs) if ref.inline]
        if inline:
            source = self.source_for(refs[inline[0]])
            if isinstance(source, InlineSource):
                for i, got in zip(
                    inline, source.fetch_many([refs[i] for i in inline]), strict=True
                ):
                    out[i] = got

        def one(i: int) -> Payload | ModerationError:
            try:
                return self.fetch_media(refs[i], tenant=tenants[i])
            except ModerationError as exc:
                return exc

        rest = [i for i in range(len(refs)) if out[i] is None]
        fetched = pool.map(one, rest) if pool is not None and len(rest) > 1 else map(one, rest)
        for i, got in zip(rest, fetched, strict=True):
            out[i] = got
        return [x for x in out if x is not None]


def release(fetched: Iterable[object]) -> None:
    """Remove the temporary files among ``fetched`` (:class:`MediaFile`, ``owned``) once the
    jobs they were fetched for have ended."""
    for media in fetched:
        if isinstance(media, MediaFile) and media.owned:
            try:
                media.path.unlink(missing_ok=True)
            except OSError as exc:  # never fails a job: the temp folder's own cleanup remains
                log.warning("cannot remove the temporary file %s: %s", media.path, exc)


def payload_head(payload: Payload, n: int = 64) -> bytes:
    """The first ``n`` bytes of what was fetched (read from the file of a large download; an
    unreadable file gives ``b""``)."""
    if isinstance(payload, MediaFile):
        try:
            with payload.path.open("rb") as fh:
                return fh.read(n)
        except OSError:
            return b""
    return payload[:n]
