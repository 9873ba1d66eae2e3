"""Reading one bank from a :class:`~moderation.ports.BankStore` into a searchable
:class:`~moderation.signals.hash_bank.BankIndex` (shared by administration and sync)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from moderation.core.banks import BankManifest, Segment
from moderation.exceptions import BankError
from moderation.ports import BankStore
from moderation.signals.hash_bank import (
    DEFAULT_FLAT_MAX,
    HASH_BYTES,
    BankIndex,
)

__all__ = ["load_codes", "load_index"]


def load_codes(store: BankStore, name: str, segments: Sequence[Segment]) -> NDArray[np.uint8]:
    """Every hash of ``segments`` as an (N, 32) array, in row order."""
    total = sum(s.count for s in segments)
    codes = np.empty((total, HASH_BYTES), dtype=np.uint8)
    row = 0
    for segment in segments:
        data = store.read_hashes(name, segment)
        if len(data) != segment.count * HASH_BYTES:
            raise BankError(f"bank {name!r}: segment {segment.number} is incomplete")
        codes[row : row + segment.count] = np.frombuffer(data, np.uint8).reshape(-1, HASH_BYTES)
        row += segment.count
    return codes


def load_index(
    store: BankStore,
    name: str,
    *,
    manifest: BankManifest | None = None,
    flat_max: int = DEFAULT_FLAT_MAX,
) -> BankIndex:
    """A full build of one bank from the store."""
    manifest = manifest or store.manifest(name)
    codes = load_codes(store, name, manifest.segments)
    return BankIndex.build(
        name,
        manifest.version,
        codes,
        manifest.segments,
        manifest.removed,
        flat_max=flat_max,
        epoch=manifest.epoch,
    )
