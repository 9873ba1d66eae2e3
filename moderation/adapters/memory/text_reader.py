"""In-memory twin of :class:`~moderation.ports.TextReader`: the text each image holds is looked
up by a key read from its pixels, and every call is counted."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from moderation.core.text import TextLine

__all__ = ["MemoryTextReader"]


class MemoryTextReader:
    """``lines[key(image)]`` for each image (none when the key is unknown); ``calls`` counts the
    frames read. The default key is the colour of the image's top-left pixel, as a hex string
    (``"ff0000"``), so tests paint the text they want an image to "hold"."""

    def __init__(
        self,
        lines: Mapping[str, tuple[TextLine, ...]],
        *,
        key: Callable[[Any], str] | None = None,
    ) -> None:
        self.lines = dict(lines)
        self.key = key or _corner_colour
        self.calls = 0
        self._lock = threading.Lock()

    def read(self, image: Any) -> tuple[TextLine, ...]:
        with self._lock:
            self.calls += 1
        return self.lines.get(self.key(image), ())


def _corner_colour(image: Any) -> str:
    r, g, b = image.convert("RGB").getpixel((0, 0))[:3]
    return f"{r:02x}{g:02x}{b:02x}"
