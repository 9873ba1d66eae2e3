"""A worker's position among the worker processes of its host, for spreading them over GPUs.

Each worker process holds an exclusive ``flock`` on ``slot-<n>.lock`` in a host-local folder,
taking the lowest free ``n``; the lock goes with the process (a crash frees it at once), so the
N workers of a host hold slots 0..N-1 and worker ``n`` uses GPU ``n % gpus``.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["claim_slot"]

#: Slot per folder held by this process; the lock files' descriptors stay open for its life.
_held: dict[Path, int] = {}
_slot_of: dict[Path, int] = {}


def claim_slot(folder: Path, *, limit: int = 1024) -> int:
    """The lowest free slot number on this host (held until the process exits). A process
    asking again (a worker whose start failed and is retried) gets the slot it already holds.

    Raises:
        OSError: the folder cannot be created or no slot below ``limit`` is free.
    """
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _held:
        return _slot_of[key]
    for slot in range(limit):
        fd = os.open(folder / f"slot-{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _held[key] = fd
        _slot_of[key] = slot
        return slot
    raise OSError(f"no free worker slot in {folder}")
