"""Twin of the hash-exchange feed port: a scripted feed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from moderation.ports import ExchangeDelta

__all__ = ["MemoryExchangeFeed"]


@dataclass
class MemoryExchangeFeed:
    """The :class:`~moderation.ports.ExchangeFeed` twin: ``deltas[i]`` is the batch after
    checkpoint ``str(i).encode()``; ``fail`` raises after the batches it lets through."""

    deltas: list[ExchangeDelta] = field(default_factory=list)
    fail: Exception | None = None

    def fetch(self, checkpoint: bytes | None) -> Iterator[ExchangeDelta]:
        start = int(checkpoint.decode()) if checkpoint else 0
        for i in range(start, len(self.deltas)):
            delta = self.deltas[i]
            yield ExchangeDelta(delta.additions, delta.removals, delta.ignored, str(i + 1).encode())
        if self.fail is not None:
            raise self.fail
