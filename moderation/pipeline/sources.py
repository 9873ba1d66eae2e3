"""The image sources of a process, by URI scheme: the one list of schemes there is.

A job's :class:`~moderation.core.image_ref.ImageRef` is read by the source registered for its
scheme. Inline bytes (sent with the request) are just another source: :class:`InlineSource`
reads them back from the job store. Adding a source is one adapter file plus one registration
line in :mod:`moderation.compose`.
"""

from __future__ import annotations

from collections.abc import Iterable

from moderation.core.image_ref import INLINE_SCHEME, ImageRef
from moderation.exceptions import ImageFetchError, UrlRefusedError
from moderation.ports import ImageSource, JobStore

__all__ = ["DuplicateSchemeError", "ImageSources", "InlineSource"]


class DuplicateSchemeError(ValueError):
    """Two sources claim the same scheme (a wiring mistake, found at start-up)."""


class InlineSource:
    """``inline:<key>``: bytes uploaded with the request, kept in the job store."""

    schemes = (INLINE_SCHEME,)
    public = False

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def check(self, ref: ImageRef) -> None:
        if not ref.inline_key:
            raise ImageFetchError("inline reference without a key", code="bad_reference")

    def fetch(self, ref: ImageRef) -> bytes:
        """Raises:
        ImageFetchError: the bytes expired (code ``inline_expired``).
        """
        data = self.store.inline_bytes(ref.inline_key)
        if data is None:
            raise ImageFetchError(
                f"the inline image {ref.inline_key} has expired", code="inline_expired"
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

    def check(self, ref: ImageRef) -> None:
        """Refuse a reference a caller may not send (unknown scheme, malformed) at submit time.

        Raises:
            ImageFetchError: with a stable code (``bad_scheme``, ``url_refused``,
                ``bad_reference``).
        """
        self.source_for(ref, public_only=True).check(ref)

    def fetch(self, ref: ImageRef) -> bytes:
        """The image bytes.

        Raises:
            ImageFetchError, ImageFetchTransient: from the source.
        """
        return self.source_for(ref).fetch(ref)
