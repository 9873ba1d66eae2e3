"""Scoring local images without the queue: ``moderation score``, ``policy test`` and the policy
tools. The same prepare / embed / decide path as the workers, batched in-process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from moderation.core.decision import Timeline, Verdict
from moderation.exceptions import ModerationError
from moderation.pipeline.moderator import Moderator, PreparedImage
from moderation.pipeline.policies import CompiledSet

__all__ = ["LocalResult", "score_local"]

#: Reads one input's bytes; raises ModerationError when it cannot (missing, too large, ...).
Loader = Callable[[], bytes]


@dataclass(frozen=True, slots=True)
class LocalResult:
    """The verdict for one input, or why it could not be scored."""

    name: str
    verdict: Verdict | None = None
    error: ModerationError | None = None
    content_sha256: str | None = None
    #: A video's or an animation's sampled frames: each one's own verdict, and when it was
    #: shown (``frames`` is set only by ``score_local(frames=True)``).
    frames: tuple[Verdict, ...] = ()
    timeline: Timeline | None = None


def score_local(
    items: Sequence[tuple[str, Loader]],
    moderator: Moderator,
    *,
    policy_ids: Iterable[str] | None = None,
    compiled: CompiledSet | None = None,
    batch_size: int = 32,
    threads: int | None = None,
    on_done: Callable[[int], None] | None = None,
    frames: bool = False,
    complete: bool = False,
) -> Iterator[LocalResult]:
    """Score ``(name, loader)`` items in order: decode on a thread pool, one forward pass per
    ``batch_size`` images.

    Args:
        items: what to score.
        moderator: the scoring path.
        policy_ids: policies to apply (default: every active one).
        compiled: a policy set to score against instead of the one in service (a draft).
        batch_size: images per forward pass.
        threads: decode threads (default: the CPU count, at most 8).
        on_done: called with the number of items finished after each batch (progress bars).
        frames: also give a video's (or an animation's) per-frame verdicts and timeline.
        complete: run every signal on every image (no cost-order skip; evaluation).
    """
    workers = threads or max(1, min(8, os.cpu_count() or 1))

    def prepare(item: tuple[str, Loader]) -> PreparedImage | ModerationError:
        try:
            return moderator.prepare(item[1]())
        except ModerationError as exc:
            return exc

    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            prepared = list(pool.map(prepare, chunk))
            images = [p for p in prepared if isinstance(p, PreparedImage)]
            found = iter(
                moderator.moderate_frames(images, policy_ids, compiled=compiled, complete=complete)
                if images
                else []
            )
            for (name, _), outcome in zip(chunk, prepared, strict=True):
                if isinstance(outcome, PreparedImage):
                    verdict, per_frame = next(found)
                    media = frames and outcome.timeline is not None
                    yield LocalResult(
                        name=name,
                        verdict=verdict,
                        content_sha256=outcome.content_sha256,
                        frames=tuple(per_frame) if media else (),
                        timeline=outcome.timeline if media else None,
                    )
                else:
                    yield LocalResult(name=name, error=outcome)
            if on_done is not None:
                on_done(len(chunk))
