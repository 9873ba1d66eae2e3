"""Videos in lanes of their own (issue 19): a video costs a worker about twenty photos' worth,
so video jobs go to the video lanes that video workers consume, and a photo never waits behind
a backlog of videos.

Fast tests over the twins (what the content is, where the submit use case publishes it, the
photo worker handing a download that turns out to be a video to the video lanes, the queues
each kind of worker consumes), then the flow with real worker processes on a real valkey: a
photo worker ends a photo while a backlog of videos stays untouched on the video lanes, and a
video worker then takes the tenants' videos in turns. What is asserted is what the routing
guarantees (which queue holds which message, the order jobs end in), never a time.
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from moderation import testmodel
from moderation.adapters.celery_queue import (
    consumed_queues,
    job_lanes,
    video_cap,
    worker_concurrency,
)
from moderation.adapters.memory import (
    MemoryAuditSink,
    MemoryCallbacks,
    MemoryDeliveryLog,
    MemoryJobStore,
    MemoryPublisher,
    MemoryReviewQueue,
    MemorySource,
    MemoryWorkerRegistry,
)
from moderation.core.admission import Tenant
from moderation.core.fairness import FairOrder, lanes
from moderation.core.jobs import JobStatus, scoped_id
from moderation.core.media import IMAGE, VIDEO, is_video_container, media_hint, media_of
from moderation.pipeline.batching import MicroBatcher
from moderation.pipeline.outcomes import Outcomes
from moderation.pipeline.process import Processor
from moderation.pipeline.sources import ImageSources, InlineSource
from moderation.pipeline.submit import PolicyCatalog, SubmitRequest, Submitter
from moderation.settings import QueueSettings, Settings
from moderation.testmodel.clips import Shot, allow_image, clip
from moderation.testmodel.samples import encoded

DEFAULT = Tenant("default")


def _png(seed: int) -> bytes:
    return encoded(testmodel.sample_images("allow", 1, seed)[0][0])


@pytest.fixture(scope="module")
def video() -> bytes:
    """2 s at 5 fps, 64x64 H.264: a harmless clip."""
    return clip([Shot(2, allow_image())], fps=5, threads=1)


# --- what the content is ----------------------------------------------------------------------


def test_video_containers_are_told_from_images_by_their_magic_and_urls_by_extension(
    video: bytes,
) -> None:
    assert media_of(video) == VIDEO
    assert media_of(clip([Shot(1, allow_image())], fps=5, container="matroska")) == VIDEO
    assert media_of(_png(1)) == IMAGE
    # HEIF and AVIF stills share MP4's ``ftyp`` box: their brands keep them images.
    assert not is_video_container(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00")
    assert not is_video_container(b"\x00\x00\x00\x18ftypavif\x00\x00\x00\x00")
    assert is_video_container(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00")
    assert media_hint("https://cdn.example/u/clip.MP4?sig=1") == VIDEO
    assert media_hint("s3://bucket/uploads/a.webm") == VIDEO
    assert media_hint("https://cdn.example/mp4/photo.jpg") == IMAGE
    assert media_hint("https://cdn.example/clip.mp4/") == IMAGE


# --- the use cases over the twins ---------------------------------------------------------------


class _World:
    def __init__(self, scoring: Any, *, videos_elsewhere: bool) -> None:
        self.queue = QueueSettings(max_inline_bytes=2_000_000)
        self.store = MemoryJobStore()
        self.deliveries = MemoryDeliveryLog(self.store)
        self.publisher = MemoryPublisher()
        self.images = MemorySource()
        sources = ImageSources([self.images, InlineSource(self.store)])
        policies = scoring.policies
        self.submitter = Submitter(
            store=self.store,
            publisher=self.publisher,
            sources=sources,
            catalog=PolicyCatalog(MemoryWorkerRegistry(), lambda: set(policies.current.by_id)),
            settings=self.queue,
            check_callback_url=lambda url: None,
        )
        outcomes = Outcomes(
            self.store,
            deliveries=self.deliveries,
            audit=MemoryAuditSink(),
            callbacks=MemoryCallbacks(),
            review=MemoryReviewQueue(),
            policies=lambda: policies.current.policies,
            weights_sha256="w" * 64,
        )
        encoder = scoring.model.encoder
        self.batcher: MicroBatcher[Any, NDArray[np.float32]] = MicroBatcher(
            lambda xs: list(encoder.encode_prepared(xs)), max_batch=8, max_wait_s=0.0
        )
        self.processor = Processor(
            store=self.store,
            deliveries=self.deliveries,
            sources=sources,
            moderator=scoring.moderator,
            batcher=self.batcher,
            outcomes=outcomes,
            settings=self.queue,
            videos_elsewhere=videos_elsewhere,
        )

    def submit(self, **kw: Any) -> str:
        accepted = self.submitter.submit([SubmitRequest(**kw)], tenant=DEFAULT)[0]
        return scoped_id(DEFAULT.name, accepted.id)


@pytest.fixture
def photo_worker(scoring: Any) -> Iterator[_World]:
    world = _World(scoring, videos_elsewhere=True)
    yield world
    world.batcher.close()


def test_submit_publishes_videos_on_the_video_lanes_by_their_bytes_or_their_url(
    photo_worker: _World, video: bytes
) -> None:
    w = photo_worker
    photo = w.submit(image_bytes=_png(2))
    inline = w.submit(image_bytes=video)
    by_url = w.submit(image_url="mem://videos/clip.mp4")
    assert w.publisher.published == [photo, inline, by_url]
    assert w.publisher.video == [inline, by_url]
    assert [w.store.get_job(j).media for j in (photo, inline, by_url)] == [  # type: ignore[union-attr]
        IMAGE,
        VIDEO,
        VIDEO,
    ]


def test_a_photo_worker_hands_a_download_that_is_a_video_to_the_video_lanes(
    photo_worker: _World, video: bytes
) -> None:
    w = photo_worker
    w.images.put("upload", video)  # no extension: taken for a photo at submit
    w.images.put("photo", _png(3))
    disguised = w.submit(image_url="mem://upload")
    photo = w.submit(image_url="mem://photo")
    assert w.publisher.video == []
    done = w.processor.process_many([disguised, photo])
    assert [(d.outcome, d.video) for d in done] == [("video", True), ("verdict", False)]
    # Not ended, and that start is taken back: the video lane's delivery is its first.
    assert w.store.get_result(disguised).status is JobStatus.QUEUED  # type: ignore[union-attr]
    assert w.deliveries.count_deliveries([disguised]) == [1]


def test_a_worker_of_every_lane_decodes_the_video_itself(scoring: Any, video: bytes) -> None:
    world = _World(scoring, videos_elsewhere=False)
    try:
        world.images.put("upload", video)
        job = world.submit(image_url="mem://upload")
        assert [d.outcome for d in world.processor.process_many([job])] == ["verdict"]
        result = world.store.get_result(job)
        assert result is not None and result.verdict is not None
        assert result.verdict.video is not None and result.verdict.video.frames_scored >= 2
    finally:
        world.batcher.close()


# --- the queues each kind of worker consumes ----------------------------------------------------


def _settings(**queue: Any) -> Settings:
    return Settings(queue=QueueSettings(**queue), tenants={"acme": {"weight": 2.0}})


def test_photo_and_video_workers_consume_their_own_lanes_with_their_own_concurrency() -> None:
    photos = consumed_queues(_settings(worker_lanes="photos"))
    videos = consumed_queues(_settings(worker_lanes="videos"))
    both = consumed_queues(_settings())
    assert "moderation" in photos and "moderation.t.acme" in photos
    assert not any(name.startswith("moderation-video") for name in photos)
    assert videos == [
        "moderation-video",
        "moderation-video.t.acme",
        "moderation-video.high.acme",
        "moderation-video.high.default",
    ]
    assert set(both) == set(photos) | set(videos)
    assert worker_concurrency(_settings(worker_lanes="videos", video_concurrency=3).queue) == 3
    assert worker_concurrency(_settings(worker_lanes="photos", batch_size=8).queue) == 16
    # Without a video queue every worker takes everything from the photo lanes, as before.
    legacy = _settings(worker_lanes="videos", video_queue_name=None)
    assert consumed_queues(legacy) == consumed_queues(_settings(video_queue_name=None))
    assert {lane.name for lane in job_lanes(legacy)} == {
        lane.name for lane in lanes("moderation", {"acme": 2.0, "default": 1.0})
    }


@pytest.mark.parametrize("name", ["", "moderation", "moderation-callbacks", "moderation.t.x"])
def test_a_video_queue_that_is_not_a_queue_of_its_own_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="video_queue_name"):
        QueueSettings(video_queue_name=name)


def test_a_worker_of_both_kinds_takes_every_photo_lane_before_any_video_lane() -> None:
    every = job_lanes(_settings())
    order = FairOrder(every)
    names = [lane.name for lane in every]
    for _ in range(20):  # however long the video lanes waited
        order.served("moderation.t.acme")
    ranked = order.order(names)
    first_video = min(i for i, n in enumerate(ranked) if n.startswith("moderation-video"))
    assert all(not n.startswith("moderation-video") for n in ranked[:first_video])
    assert first_video == len([lane for lane in every if not lane.video])
    # Within the video lanes, the tenants take weighted turns (acme: weight 2).
    busy = ["moderation-video", "moderation-video.t.acme"]
    taken = []
    for _ in range(30):
        lane = next(n for n in order.order(names) if n in busy)
        order.served(lane)
        taken.append(lane)
    assert Counter(taken) == {"moderation-video.t.acme": 20, "moderation-video": 10}


def test_a_worker_of_both_kinds_leaves_the_video_lanes_out_while_it_holds_its_cap() -> None:
    from moderation.adapters.support import fair_lanes

    settings = _settings(concurrency=4, video_concurrency=2)
    assert video_cap(settings.queue) == 2
    # Photo-only and video-only workers have no cap; a cap always leaves a thread to photos.
    assert video_cap(_settings(worker_lanes="photos").queue) is None
    assert video_cap(_settings(worker_lanes="videos").queue) is None
    assert video_cap(_settings(video_queue_name=None).queue) is None
    assert video_cap(_settings(concurrency=2, video_concurrency=5).queue) == 1
    every = job_lanes(settings)
    names = [lane.name for lane in every]
    fair_lanes.declare_lanes(every)
    fair_lanes.declare_video_cap(2)
    try:
        cycle = fair_lanes.FairCycle(names)
        assert set(cycle.consume(len(names))) == set(names)
        cycle.rotate("moderation-video.t.acme")
        cycle.rotate("moderation")  # photos never count
        assert fair_lanes.videos_held() == 1
        cycle.rotate("moderation-video")
        # At the cap: the next BRPOP asks only the photo lanes.
        offered = cycle.consume(len(names))
        assert len(offered) == len(set(offered))
        assert set(offered) == {lane.name for lane in every if not lane.video}
        fair_lanes.declare_video_cap(2)  # declared again (another producer): the count stays
        fair_lanes.video_done("moderation")  # a photo's task ending frees nothing
        assert fair_lanes.videos_held() == 2
        fair_lanes.video_done("moderation-video")
        assert fair_lanes.videos_held() == 1
        assert any(n.startswith("moderation-video") for n in cycle.consume(len(names)))
        # A lost connection drops the videos taken but not started: only running ones count.
        cycle.rotate("moderation-video")
        fair_lanes.video_started("moderation-video", "t-1")
        fair_lanes.video_started("moderation", "t-2")  # a photo: not counted
        fair_lanes.videos_restart()
        assert fair_lanes.videos_held() == 1
        fair_lanes.video_done("moderation-video", "t-1")
        fair_lanes.videos_restart()
        assert fair_lanes.videos_held() == 0
    finally:
        fair_lanes.declare_video_cap(None)
        fair_lanes.declare_lanes(())


# --- real worker processes ------------------------------------------------------------------


@contextmanager
def _site(settings: Settings, root: Path) -> Iterator[Any]:
    from tests.attack_support import started_site
    from tests.servers import valkey_url

    tuned = settings.model_copy(
        update={"queue": settings.queue.model_copy(update={"publish_wait_ms": 0.0})}
    )
    with valkey_url() as url, started_site(tuned, url, root) as running:
        yield running


def _wait_ended(site: Any, job_ids: set[str], *workers: Any) -> list[str]:
    """The ended jobs, once every job of ``job_ids`` has (the bound only keeps a broken build
    from hanging: nothing is asserted about the time taken)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ended = [job_id for job_id, _ in site.store.outcomes()]
        if job_ids <= set(ended):
            return ended
        time.sleep(0.2)
    raise AssertionError(f"{sorted(job_ids)} never ended:\n" + "\n".join(w.log() for w in workers))


@pytest.mark.xdist_group("video_lanes")
def test_a_photo_is_not_queued_behind_a_backlog_of_videos(
    test_model_settings: Settings, tmp_path: Path, video: bytes
) -> None:
    from tests.attack_support import KEY_A, KEY_B, image_b64
    from tests.pipeline_support import WorkerProcess

    backlog = 6
    with (
        _site(test_model_settings, tmp_path) as site,
        site.client(KEY_A) as acme,
        site.client(KEY_B) as globex,
    ):
        clip_b64 = base64.b64encode(video).decode()
        for i in range(backlog):  # acme's videos are queued first (no worker runs yet)
            answer = acme.post("/v1/jobs", json={"image_base64": clip_b64, "id": f"v-{i}"})
            assert answer.status_code == 202, answer.text
        answer = globex.post("/v1/jobs", json={"image_base64": clip_b64, "id": "v-b"})
        assert answer.status_code == 202, answer.text
        answer = acme.post("/v1/jobs", json={"image_base64": image_b64(1), "id": "p-1"})
        assert answer.status_code == 202, answer.text
        every = job_lanes(site.settings)
        redis = site.store.redis

        def waiting(video_lanes: bool) -> int:
            return sum(int(redis.llen(lane.name)) for lane in every if lane.video == video_lanes)

        assert (waiting(False), waiting(True)) == (1, backlog + 1)
        photos = WorkerProcess(
            site.settings,
            tmp_path / "photos.log",
            extra_env={"MODERATION_QUEUE__WORKER_LANES": "photos"},
        ).start()
        try:
            photos.wait_ready(site.store)
            ended = _wait_ended(site, {"acme/p-1"}, photos)
            # The photo ended while every video still waits, untouched, on the video lanes.
            assert ended == ["acme/p-1"]
            assert (waiting(False), waiting(True)) == (0, backlog + 1)
            assert int(redis.hlen("unacked")) == 0
        finally:
            photos.stop()
        videos = WorkerProcess(
            site.settings,
            tmp_path / "videos.log",
            extra_env={
                "MODERATION_QUEUE__WORKER_LANES": "videos",
                "MODERATION_QUEUE__VIDEO_CONCURRENCY": "1",
            },
        ).start()
        try:
            videos.wait_ready(site.store)
            wanted = {f"acme/v-{i}" for i in range(backlog)} | {"globex/v-b"}
            ended = _wait_ended(site, wanted, videos)
        finally:
            videos.stop()
        for job_id in wanted:
            result = site.store.get_result(job_id)
            assert result is not None and result.verdict is not None, job_id
            assert result.verdict.video is not None, job_id
    # Within the video lanes the tenants take turns: globex's one video did not wait behind
    # acme's backlog (one message at a time, one reserved: at most a few of acme's first).
    order = ended[1:]
    assert order.index("globex/v-b") <= 3, order


@pytest.mark.xdist_group("video_lanes")
def test_a_worker_of_both_kinds_holds_at_most_its_cap_of_videos_and_still_ends_photos(
    test_model_settings: Settings, tmp_path: Path, video: bytes
) -> None:
    from moderation.adapters.celery_queue import message_job_ids
    from tests.attack_support import KEY_A, image_b64
    from tests.pipeline_support import WorkerProcess

    backlog, cap = 6, 1
    with _site(test_model_settings, tmp_path) as site, site.client(KEY_A) as acme:
        clip_b64 = base64.b64encode(video).decode()
        redis = site.store.redis
        videos = {f"acme/v-{i}" for i in range(backlog)}
        most = 0

        def held_videos() -> int:
            """Video messages the worker took and has not acknowledged (kombu's ``unacked``)."""
            nonlocal most
            held = sum(1 for raw in redis.hvals("unacked") if set(message_job_ids(raw)) & videos)
            most = max(most, held)
            return held

        both = WorkerProcess(
            site.settings,
            tmp_path / "both.log",
            extra_env={
                "MODERATION_QUEUE__WORKER_LANES": "all",
                "MODERATION_QUEUE__CONCURRENCY": "4",
                "MODERATION_QUEUE__PREFETCH_MULTIPLIER": "2",
                "MODERATION_QUEUE__VIDEO_CONCURRENCY": str(cap),
            },
        ).start()
        try:
            # The heartbeat can come after the worker starts consuming: the videos are sent
            # once it is ready, so a backlog is there to hold back while it works.
            both.wait_ready(site.store)
            for i in range(backlog):
                answer = acme.post("/v1/jobs", json={"image_base64": clip_b64, "id": f"v-{i}"})
                assert answer.status_code == 202, answer.text
            deadline = time.monotonic() + 240  # only keeps a broken build from hanging
            while not held_videos() and not videos & {j for j, _ in site.store.outcomes()}:
                assert time.monotonic() < deadline, both.log()
                time.sleep(0.05)
            # A video is in progress, the rest wait: now a photo arrives.
            answer = acme.post("/v1/jobs", json={"image_base64": image_b64(1), "id": "p-1"})
            assert answer.status_code == 202, answer.text
            while "acme/p-1" not in {j for j, _ in site.store.outcomes()}:
                held_videos()
                assert time.monotonic() < deadline, both.log()
                time.sleep(0.05)
            ended = _wait_ended(site, videos | {"acme/p-1"}, both)
            held_videos()
        finally:
            both.stop()
    # Without the cap the worker would have taken up to concurrency x prefetch (8) videos.
    assert 1 <= most <= cap, most
    assert set(ended) == videos | {"acme/p-1"}
