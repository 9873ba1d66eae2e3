"""Preparing images in separate processes, out of the worker's GIL.

A worker's Python-bound work per image (Celery, Redis replies, scoring, the audit record) shares
one GIL with whatever its decode threads do while holding it: Pillow's glue, and PDQ hashing,
which holds the GIL for its whole run (0.8 ms per 320x240 frame). :class:`PreparePool` runs
:class:`~moderation.pipeline.moderator.Preparation` (safe decode, crop, image-signal features,
content hash) in a pool of processes instead; the worker only pickles bytes in and crops out.

The processes come from a ``forkserver`` preloaded with the decode modules: the server process is
a fresh interpreter (never a fork of the threaded worker), torch is never imported, and each new
process starts in milliseconds.

A process that dies on an image (a decoder crash, the kernel's OOM killer) breaks the pool. The
pool is replaced, and the images of the batches caught in it are prepared again one at a time,
so only the image that kills its process fails (``image_corrupt``: "crashed its decoder"),
while the worker itself lives on.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import repeat

from moderation.core.payload import Payload
from moderation.exceptions import ImageDecodeError, ModerationError
from moderation.pipeline.moderator import Preparation, PreparedImage

__all__ = ["PreparePool"]

log = logging.getLogger(__name__)

#: Imported once by the fork server, so that each pool process starts warm.
_PRELOAD = [
    "moderation.adapters.support.prepare_pool",
    "moderation.adapters.images",
    "moderation.adapters.support.crop",
    "moderation.signals",
]


def _start_process() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the worker decides when the pool
    # stops. One thread per process: a pool process is one unit of parallelism.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["OMP_NUM_THREADS"] = "1"


def _prepare(preparation: Preparation, data: Payload) -> PreparedImage | Exception:
    """One image, in a pool process. Errors come back as values (every job's error is its own)."""
    try:
        return preparation(data)
    except ModerationError as exc:
        return exc
    except Exception as exc:  # a bug: report it in a form that survives pickling
        log.exception("preparing an image failed unexpectedly")
        return RuntimeError(f"{type(exc).__name__}: {exc}")


class PreparePool:
    """A pool of ``processes`` prepare processes. Thread-safe; :meth:`close` stops it."""

    def __init__(self, processes: int) -> None:
        if processes < 1:
            raise ValueError("a prepare pool needs at least one process")
        self.processes = processes
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(_PRELOAD)
        self._lock = threading.Lock()
        self._pool = self._new_pool()
        self.replaced = 0  # pools lost to a process that died

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.processes, mp_context=self._context, initializer=_start_process
        )

    def prepare_many(
        self, preparation: Preparation, images: Sequence[Payload]
    ) -> list[PreparedImage | Exception]:
        """Prepare ``images`` (results in order; an image's error is its result)."""
        if not images:
            return []
        pool = self._pool
        chunk = max(1, len(images) // (4 * self.processes))
        try:
            return list(pool.map(_prepare, repeat(preparation), images, chunksize=chunk))
        except BrokenProcessPool:
            self._replace(pool)
        # A process died on one of these images (or on another thread's): find which, alone.
        return [self._isolated(preparation, data) for data in images]

    def _isolated(self, preparation: Preparation, data: Payload) -> PreparedImage | Exception:
        pool = self._pool
        try:
            return pool.submit(_prepare, preparation, data).result()
        except BrokenProcessPool:
            self._replace(pool)
            log.error("an image crashed its prepare process; the process was replaced")
            return ImageDecodeError("the image crashed its decoder process")

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:
                self._pool = self._new_pool()
                self.replaced += 1
        broken.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
