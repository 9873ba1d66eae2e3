"""``mem://`` images (the :class:`~moderation.ports.ImageSource` twin)."""

from __future__ import annotations

from moderation.core.image_ref import ImageRef
from moderation.exceptions import (
    ImageFetchError,
)

__all__ = ["MemorySource"]


class MemorySource:
    """``mem://<name>``: images registered with :meth:`put`."""

    schemes = ("mem",)
    public = True

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.fetched: list[str] = []

    def put(self, name: str, data: bytes) -> ImageRef:
        self.objects[name] = data
        return ImageRef(uri=f"mem://{name}")

    def check(self, ref: ImageRef, *, tenant: str | None = None) -> None:
        if not ref.uri.startswith("mem://") or len(ref.uri) == len("mem://"):
            raise ImageFetchError(f"bad reference {ref.uri!r}", code="bad_reference")

    def fetch(self, ref: ImageRef, *, tenant: str | None = None) -> bytes:
        self.fetched.append(ref.uri)
        data = self.objects.get(ref.uri.removeprefix("mem://"))
        if data is None:
            raise ImageFetchError(f"{ref.uri}: not found", code="not_found")
        return data
