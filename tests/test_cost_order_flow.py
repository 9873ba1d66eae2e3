"""Cost order across processes: the API, valkey and a `moderation worker` process running the
real open_nsfw ONNX model beside a PDQ hash bank. A banked image is blocked by the bank and the
classifier does not run on it: the job result says so, and the worker's
``moderation_signal_skips_total`` counts it; an image the bank does not know is classified.
"""

from __future__ import annotations

import shutil
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from moderation import testmodel
from moderation.adapters.images import SafeDecoder
from moderation.adapters.redis_jobs import RedisJobStore
from moderation.client import ModerationClient
from moderation.compose.banks import build_banks
from moderation.core.banks import EntryData
from moderation.core.decision import Decision
from moderation.metrics import render
from moderation.pipeline.banks import image_feature
from moderation.settings import ImageLimits, Settings
from tests.pipeline_support import (
    WorkerProcess,
    live_workers,
    pipeline_settings,
    png_bytes,
    start_api,
    stop_api,
)
from tests.servers import start_valkey

pytestmark = pytest.mark.slow

POLICY = textwrap.dedent(
    """\
    id: known
    version: 1
    description: known-bad images by hash, explicit nudity by open_nsfw
    categories:
      - id: banked
        description: images in the known-bad bank
        severity: critical
        signal: hash_bank
        bank: {name: known-bad, max_distance: 31}
        thresholds: {review: 0.5, block: 0.85}
      - id: explicit
        description: open_nsfw very confident
        severity: critical
        signal: nsfw
        labels: [nsfw]
        thresholds: {review: 0.8, block: 0.97}
    """
)


def _image(seed: int) -> bytes:
    return png_bytes(testmodel.render("green", "square", seed=seed).resize((400, 400)))


@pytest.fixture
def flow(test_model_settings: Settings, tmp_path: Path) -> Iterator[dict[str, Any]]:
    policies = tmp_path / "policies"
    policies.mkdir()
    shutil.copy(testmodel.POLICY_PATH, policies / "testworld.yaml")
    (policies / "known.yaml").write_text(POLICY)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    redis = start_valkey()
    settings = pipeline_settings(
        test_model_settings.model_copy(
            update={"policy_paths": [policies], "cache_dir": tmp_path / "cache"}
        ),
        redis.connection_url,
    )
    decoder = SafeDecoder(ImageLimits())
    banked = next(
        data for data in map(_image, range(50)) if image_feature(decoder, data).quality >= 60
    )
    feature = image_feature(decoder, banked)
    banks = build_banks(settings)
    banks.create("known-bad")
    banks.add("known-bad", [EntryData(pdq=feature.hex, label="known", quality=feature.quality)])
    store = RedisJobStore.from_url(redis.connection_url, settings.queue)
    worker = WorkerProcess(settings, tmp_path / "worker.log", metrics_dir=metrics_dir).start()
    server = None
    try:
        worker.wait_ready(store)
        deadline = time.monotonic() + 60
        while not any(
            w.get("banks", {}).get("known-bad", {}).get("entries") == 1 for w in live_workers(store)
        ):
            assert time.monotonic() < deadline, worker.log()
            time.sleep(0.1)
        server, url = start_api(settings)
        with ModerationClient(url) as client:
            yield {"client": client, "banked": banked, "metrics": metrics_dir, "worker": worker}
    finally:
        if server is not None:
            stop_api(server)
        worker.stop()
        redis.stop()


def test_a_banked_image_skips_the_classifier_in_the_worker(flow: dict[str, Any]) -> None:
    client: ModerationClient = flow["client"]
    ids = client.submit_many([flow["banked"], _image(1000)])
    banked, unknown = client.wait_many(ids, timeout=120)
    assert banked.verdict is not None and unknown.verdict is not None, flow["worker"].log()
    verdict = banked.verdict
    assert verdict.decision is Decision.BLOCK and verdict.category_id == "banked"
    (skipped,) = verdict.skipped
    assert (skipped.signal, skipped.reason, skipped.settled_by) == (
        "nsfw",
        "settled",
        "known/banked",
    )
    assert skipped.categories == ["known/explicit"] and "known/explicit" not in verdict.scores
    assert unknown.verdict.skipped == [] and "known/explicit" in unknown.verdict.scores
    # counted just after the result is stored (a client may see the result first)
    deadline = time.monotonic() + 30
    while True:
        body = render(path=str(flow["metrics"]))[0].decode()
        counted = [
            line for line in body.splitlines() if line.startswith("moderation_signal_skips_total{")
        ]
        if counted or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(counted) == 1 and 'signal="nsfw"' in counted[0] and 'reason="settled"' in counted[0]
    assert float(counted[0].rsplit(" ", 1)[1]) == 1.0
