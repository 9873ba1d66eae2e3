"""Inline images over ``queue.inline_spill_bytes`` go to the object store, not Redis: the job
carries a ``spill:`` reference, Redis's queued bytes count only its record, the source reads the
bytes back (``inline_expired`` once they are gone), and whole expired days are dropped. Over the
twins, and through the real Redis job store and a real local object store."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from moderation.adapters.local_blobs import LocalBlobStore
from moderation.adapters.memory import (
    MemoryBlobStore,
    MemoryJobStore,
    MemoryPublisher,
    MemoryRateLimiter,
)
from moderation.adapters.redis_jobs import RedisJobStore
from moderation.core.admission import Tenant
from moderation.core.image_ref import ImageRef, spill_key
from moderation.exceptions import ImageFetchError
from moderation.pipeline.sources import ImageSources, InlineSource, SpillSource
from moderation.pipeline.spill import SpillSweep
from moderation.pipeline.submit import PolicyCatalog, SubmitRequest, Submitter
from moderation.ports import BlobStore, JobStore
from moderation.settings import QueueSettings

ACME = Tenant("acme")
SMALL = b"\x89PNG" + b"s" * 500
LARGE = b"\x89PNG" + b"L" * 50_000


class _NoWorkers:
    def known_policies(self) -> list[str]:
        return []


def _submitter(store: JobStore, blobs: BlobStore | None, spill: int | None) -> Submitter:
    return Submitter(
        store=store,
        publisher=MemoryPublisher(),
        sources=ImageSources([InlineSource(store)]),
        catalog=PolicyCatalog(_NoWorkers(), set),
        settings=QueueSettings(max_queued_bytes=10_000_000, inline_spill_bytes=spill),
        check_callback_url=lambda url: None,
        limiter=MemoryRateLimiter(),
        blobs=blobs,
    )


def _check_spill(store: JobStore, blobs: BlobStore) -> None:
    submitter = _submitter(store, blobs, spill=10_000)
    small, large = submitter.submit(
        [SubmitRequest(image_bytes=SMALL), SubmitRequest(image_bytes=LARGE)], tenant=ACME
    )
    [small_job, large_job] = store.get_jobs([f"acme/{small.id}", f"acme/{large.id}"])
    assert small_job is not None and large_job is not None
    assert small_job.image.inline and not small_job.image.spilled
    assert large_job.image.spilled
    key = large_job.image.uri.partition(":")[2]
    assert blobs.get(key) == LARGE
    # Redis holds the small image, and of the large one only its record.
    assert store.inline_bytes_many([small_job.image.inline_key, large_job.id]) == [SMALL, None]
    assert store.queued_bytes() < len(LARGE)
    sources = ImageSources([InlineSource(store), SpillSource(blobs)])
    assert sources.fetch(large_job.image, tenant="acme") == LARGE
    # The same request again is the same job (the fingerprint is the bytes' hash).
    [again] = submitter.submit([SubmitRequest(image_bytes=LARGE, id=large.id)], tenant=ACME)
    assert again.duplicate
    blobs.delete(key)
    with pytest.raises(ImageFetchError) as gone:
        sources.fetch(large_job.image, tenant="acme")
    assert gone.value.code == "inline_expired"


def test_large_inline_images_spill_to_the_object_store_over_the_twins() -> None:
    _check_spill(MemoryJobStore(), MemoryBlobStore())


def test_large_inline_images_spill_through_redis_and_a_real_folder(
    redis_url: str, tmp_path: Path
) -> None:
    store = RedisJobStore.from_url(redis_url, QueueSettings(key_prefix="spill-test:"))
    _check_spill(store, LocalBlobStore(tmp_path / "blobs"))


def test_without_the_setting_or_an_object_store_nothing_spills() -> None:
    for blobs, spill in ((MemoryBlobStore(), None), (None, 10)):
        store = MemoryJobStore()
        [accepted] = _submitter(store, blobs, spill).submit(
            [SubmitRequest(image_bytes=LARGE)], tenant=ACME
        )
        [job] = store.get_jobs([f"acme/{accepted.id}"])
        assert job is not None and job.image.inline


def test_a_spill_reference_outside_the_spill_folder_is_refused() -> None:
    blobs = MemoryBlobStore()
    blobs.put("evidence/acme/x", b"secret")
    source = SpillSource(blobs)
    for uri in ("spill:evidence/acme/x", "spill:../x", "spill:"):
        with pytest.raises(ImageFetchError) as bad:
            source.fetch(ImageRef(uri=uri), tenant="acme")
        assert bad.value.code == "bad_reference"


def test_the_sweep_drops_whole_expired_days_only() -> None:
    blobs = MemoryBlobStore()
    today = date(2026, 12, 7)
    kept = spill_key("acme/new", date(2026, 12, 5))
    old = [spill_key(f"acme/{i}", date(2026, 12, 1)) for i in range(3)]
    for key in [kept, *old]:
        blobs.put(key, b"x")
    blobs.put("evidence/acme/y", b"y")  # not the sweep's
    sweep = SpillSweep(blobs, keep_s=2 * 86400)  # two days, plus one of margin
    assert sweep.expired_days(today)[-1] == date(2026, 12, 4)
    assert sweep.sweep(today) == 3
    assert sorted(blobs.list()) == sorted(["evidence/acme/y", kept])
    assert sweep.sweep(today) == 0
