"""Backtest throughput: re-score N stored embeddings with a candidate policy version.

Two setups, each timed against the in-memory store (pure re-scoring) and a real Redis stream
(embedded valkey; the adapter the workers write to, read page by page):

* ``test``: the bundled test model (128-d), the test-world policy; the history is real image
  embeddings of fresh labelled test-world images (2,000 encoded, repeated with a little noise up
  to N), and the candidate moves two categories' thresholds;
* ``starter``: ViT-B-32-shaped embeddings (512-d random unit vectors) against all six starter
  policies (12 categories) compiled with a random text tower; the candidate moves the weapons
  policy's thresholds.

Prints JSON::

    python bench/backtest.py [--n 100000] [--setups test,starter] [--stores memory,redis]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scoring import RandomTextEncoder  # noqa: E402
from moderation.adapters.memory import MemoryEmbeddingStore  # noqa: E402
from moderation.adapters.policy_files import (  # noqa: E402
    edit_policy_text,
    load_policies,
    load_policy_text,
)
from moderation.core.compiled import CompiledPolicy, compile_policy  # noqa: E402
from moderation.core.embeddings import StoredEmbedding  # noqa: E402
from moderation.core.policy import PolicyMode  # noqa: E402
from moderation.core.scoring import FeatureBatch  # noqa: E402
from moderation.pipeline.backtest import backtest  # noqa: E402
from moderation.pipeline.policies import CompiledSet  # noqa: E402
from moderation.ports import EmbeddingStore  # noqa: E402
from moderation.signals import builtin_signals  # noqa: E402


def _test_setup(n: int) -> tuple[CompiledSet, CompiledPolicy, np.ndarray]:
    from moderation import testmodel
    from moderation.compose.scoring import build_scoring
    from moderation.settings import Settings
    from moderation.testmodel import world

    settings = Settings(
        model=testmodel.model_settings(),
        policy_paths=[testmodel.POLICY_PATH],
        cache_dir=Path(tempfile.mkdtemp()) / "cache",
    )
    scoring = build_scoring(settings)
    images = [item.image for item in world.labelled_images(2000, 4242)]
    real = scoring.model.encoder.encode_images(images)
    rng = np.random.default_rng(0)
    x = real[rng.integers(0, len(real), n)] + rng.normal(0, 0.01, (n, real.shape[1]))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    text = testmodel.POLICY_PATH.read_text()
    candidate_text = edit_policy_text(
        text,
        version=2,
        mode=PolicyMode.SHADOW,
        thresholds={"contraband_symbol": (0.35, 0.58), "restricted_logo": (0.47, 0.56)},
    )
    path = Path(tempfile.mkdtemp()) / "testworld.v2.yaml"
    path.write_text(candidate_text)
    candidate = scoring.compile([path]).current.by_id["testworld"]
    return scoring.policies.current, candidate, x.astype(np.float32)


def _starter_setup(n: int) -> tuple[CompiledSet, CompiledPolicy, np.ndarray]:
    encoder = RandomTextEncoder()
    policies = load_policies([ROOT / "policies"])
    compiled = [compile_policy(policies[pid], encoder) for pid in policies]
    live = CompiledSet(compiled, builtin_signals())
    source = Path(policies.source("weapons"))
    weapons = policies["weapons"]
    thresholds = {c.id: (c.thresholds.review * 0.9, c.thresholds.block * 0.95) for c in
                  weapons.categories}  # fmt: skip
    text = edit_policy_text(source.read_text(), version=weapons.version + 1, thresholds=thresholds)
    candidate = compile_policy(load_policy_text(text), encoder)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, encoder.dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return live, candidate, x


def _fill(store: EmbeddingStore, live: CompiledSet, x: np.ndarray) -> float:
    """Store every row as a worker would (its live decision included); returns seconds."""
    started = time.perf_counter()
    for start in range(0, len(x), 10_000):
        chunk = x[start : start + 10_000]
        decided = live.verdicts(FeatureBatch(embeddings=chunk))
        for i, (row, verdict) in enumerate(zip(chunk, decided, strict=True)):
            store.add(
                StoredEmbedding(
                    job_id=f"job-{start + i}",
                    model_id=verdict.model,
                    embeddings=StoredEmbedding.quantize(row),
                    decision=verdict.decision.value,
                    versions={p.id: p.version for p in verdict.policies},
                    image=f"s3://bucket/{start + i}.jpg",
                )
            )
    return time.perf_counter() - started


def run(setup: str, store_kind: str, n: int) -> dict[str, Any]:
    live, candidate, x = (_test_setup if setup == "test" else _starter_setup)(n)
    server = None
    if store_kind == "redis":
        from moderation.adapters.redis_embeddings import RedisEmbeddingStore

        from moderation.adapters.embedded_redis import EmbeddedRedis
        from moderation.settings import EmbeddingSettings

        server = EmbeddedRedis()
        store: EmbeddingStore = RedisEmbeddingStore.from_url(
            server.start(), EmbeddingSettings(max_items=None)
        )
    else:
        store = MemoryEmbeddingStore(max_items=None)
    try:
        fill_s = _fill(store, live, x)
        memory = None
        if server is not None:
            info = store.redis.info("memory")  # type: ignore[attr-defined]
            memory = int(info["used_memory"])
        started = time.perf_counter()
        report = backtest(store, live=live, candidate=candidate, since=0, examples=20)
        seconds = time.perf_counter() - started
    finally:
        if server is not None:
            server.stop()
    return {
        "setup": setup,
        "store": store_kind,
        "n": n,
        "dim": int(x.shape[1]),
        "policies": len(live.by_id),
        "categories": sum(len(p.categories) for p in live.by_id.values()),
        "model": live.model.id,
        "backtest_s": round(seconds, 3),
        "items_per_s": round(n / seconds),
        "fill_s": round(fill_s, 2),
        "store_bytes_per_item": round(memory / n) if memory else None,
        "scored": report.scored,
        "changed": report.changed,
        "transitions": report.transitions,
        "drift": report.drift,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--setups", default="test,starter")
    parser.add_argument("--stores", default="memory,redis")
    args = parser.parse_args()
    results = [
        run(setup, store, args.n)
        for setup in args.setups.split(",")
        for store in args.stores.split(",")
    ]
    print(json.dumps({"benchmark": "backtest", "results": results}, indent=2))


if __name__ == "__main__":
    main()
