"""``file://`` image references: local files, for the policy tools only (``moderation eval``,
``moderation calibrate`` read labelled datasets from disk).

Never public: the API refuses ``file://`` from upstream callers (a worker's disk is not theirs to
read), and worker processes do not register this source at all.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from moderation.core.image_ref import ImageRef
from moderation.exceptions import ImageFetchError, ImageTooLargeError

__all__ = ["FileSource", "file_ref", "read_file"]


def file_ref(path: Path) -> ImageRef:
    """The ``file://`` reference of a local path (made absolute)."""
    return ImageRef(uri=path.resolve().as_uri())


def read_file(path: Path) -> bytes:
    """A local file's bytes (raises OSError)."""
    return path.read_bytes()


class FileSource:
    """Reads ``file:///absolute/path`` references."""

    schemes = ("file",)
    public = False

    def __init__(self, *, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    @staticmethod
    def path_of(ref: ImageRef) -> Path:
        """Raises:
        ImageFetchError: not an absolute local file URI (code ``bad_reference``).
        """
        parsed = urlparse(ref.uri)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost") or not parsed.path:
            raise ImageFetchError(f"{ref.uri!r}: not a local file URI", code="bad_reference")
        path = Path(unquote(parsed.path))
        if not path.is_absolute():
            raise ImageFetchError(f"{ref.uri!r}: not an absolute path", code="bad_reference")
        return path

    def check(self, ref: ImageRef, *, tenant: str | None) -> None:
        self.path_of(ref)

    def fetch(self, ref: ImageRef, *, tenant: str | None) -> bytes:
        """Raises:
        ImageFetchError: missing or unreadable (codes ``not_found``, ``unreadable``).
        ImageTooLargeError: larger than ``max_bytes``.
        """
        path = self.path_of(ref)
        try:
            size = path.stat().st_size
            if size > self.max_bytes:
                raise ImageTooLargeError(f"{path}: {size} bytes exceeds {self.max_bytes}")
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise ImageFetchError(f"{path}: no such file", code="not_found") from exc
        except OSError as exc:
            raise ImageFetchError(
                f"{path}: cannot read ({exc.strerror or exc})", code="unreadable"
            ) from exc
