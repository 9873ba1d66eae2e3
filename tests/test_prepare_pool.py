"""Prepare processes (``queue.prepare_processes``): the same prepared images as in-process
preparation, each image's error its own, and an image that kills its process fails alone while
the pool is replaced and the worker lives on."""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from moderation.adapters.images import SafeDecoder
from moderation.adapters.support.prepare_pool import PreparePool
from moderation.exceptions import ImageDecodeError
from moderation.pipeline.moderator import Moderator, Preparation, PreparedImage
from moderation.settings import ImageLimits
from moderation.signals.hash_bank import HashBankSignal, LoadedBanks
from moderation.testmodel import world
from moderation.testmodel.samples import encoded

#: The bytes that make :class:`_CrashingDecoder` kill its process.
POISON = b"\x89POISON"


class _CrashingDecoder(SafeDecoder):
    """A decoder that dies (like a segfaulting codec would) on :data:`POISON`."""

    def decode_media(self, data: bytes, *, min_side: int | None = None) -> Any:
        if data == POISON:
            os._exit(139)
        return super().decode_media(data, min_side=min_side)


@pytest.fixture(scope="module")
def pool() -> Iterator[PreparePool]:
    pool = PreparePool(2)
    yield pool
    pool.close()


@pytest.fixture
def moderator(scoring: Any) -> Moderator:
    m: Moderator = scoring.moderator
    return m


def _images(n: int) -> list[bytes]:
    return [encoded(im) for im, _ in world.sample_images("block", n, 21)]


def test_prepare_processes_give_what_preparing_here_gives(
    pool: PreparePool, moderator: Moderator
) -> None:
    preparation = moderator.preparation()
    assert preparation is not None
    assert any(isinstance(s, HashBankSignal) for s in preparation.signals)
    images = _images(12)
    there = pool.prepare_many(preparation, images)
    here = [moderator.prepare(data) for data in images]
    for a, b in zip(there, here, strict=True):
        assert isinstance(a, PreparedImage)
        assert a.content_sha256 == b.content_sha256
        assert a.fingerprints == b.fingerprints and len(a.fingerprints["pdq"]) == 64
        assert all(np.array_equal(x, y) for x, y in zip(a.inputs, b.inputs, strict=True))
    verdicts = moderator.moderate([p for p in there if isinstance(p, PreparedImage)])
    assert [v.decision.value for v in verdicts] == ["block"] * 12


def test_each_image_error_is_its_own(pool: PreparePool, moderator: Moderator) -> None:
    preparation = moderator.preparation()
    assert preparation is not None
    good = _images(2)
    out = pool.prepare_many(preparation, [good[0], b"not an image", good[1]])
    assert isinstance(out[0], PreparedImage) and isinstance(out[2], PreparedImage)
    assert isinstance(out[1], ImageDecodeError) and out[1].code == "image_corrupt"


def test_an_image_that_kills_its_process_fails_alone(moderator: Moderator) -> None:
    base = moderator.preparation()
    assert base is not None
    preparation = Preparation(
        decoder=_CrashingDecoder(ImageLimits()),
        crop=base.crop,
        min_side=base.min_side,
        signals=base.signals,
    )
    images = _images(5)
    pool = PreparePool(2)
    try:
        out = pool.prepare_many(preparation, [*images[:2], POISON, *images[2:]])
        assert [isinstance(x, PreparedImage) for x in out] == [True, True, False, True, True, True]
        assert isinstance(out[2], ImageDecodeError) and "crashed" in str(out[2])
        assert pool.replaced >= 1
        # The replacement pool serves the next batch as usual.
        again = pool.prepare_many(preparation, images)
        assert all(isinstance(x, PreparedImage) for x in again)
    finally:
        pool.close()


def test_a_hash_bank_signal_travels_without_its_banks() -> None:
    banks = LoadedBanks()
    signal = HashBankSignal(banks)
    copy = pickle.loads(pickle.dumps(signal))
    assert isinstance(copy, HashBankSignal) and copy.banks is not banks
    assert len(pickle.dumps(signal)) < 200
