"""The embedding history before (a Redis stream) and after (Parquet shards in the object store):
what a worker pays to keep each decided image, what each stored embedding costs in bytes, and
how fast a backtest scans and re-scores the history; plus how often float16 storage moves a
decision against float32.

Two setups:

* ``test``: the bundled test model (128-d), the test-world policy; the history is real image
  embeddings of fresh labelled test-world images (2,000 encoded, repeated with a little noise up
  to N), and the candidate moves two categories' thresholds;
* ``starter``: ViT-B-32-shaped embeddings (512-d random unit vectors) against all six starter
  policies (12 categories) compiled with a random text tower; the candidate moves the weapons
  policy's thresholds.

Each side runs in its own process. ``after`` is this checkout: a worker's
:class:`~moderation.pipeline.history.EmbeddingHistory` buffering batches of 64 decided jobs and
writing 10,000-row Parquet shards to a local folder (the ``--s3`` flag: to a moto S3 server),
then ``backtest`` over the shards (local runner, groups of 8 shards). ``before`` is another
checkout given with ``--before-root`` (the commit before the move, e.g. ``git worktree add
/tmp/history-before f170d9f``): its ``EmbeddingHistory`` over an embedded valkey stream (one
pipelined ``XADD`` per job), then its ``backtest`` over ``XRANGE`` pages. Rounds alternate
before/after (``--rounds``) so that a busy machine weighs on both alike; the JSON holds every
round.

    python bench/backtest.py [--n 100000] [--setups test,starter] [--rounds 2]
                             [--before-root /tmp/history-before] [--s3]

Figures: ``write_us_per_image_job_thread`` is the time a job's thread spends handing the
embedding over (the Redis round trip before; appending to the buffer after);
``write_us_per_image_total`` adds what the background writer spends per image (encoding and
uploading shards); ``bytes_per_embedding`` is Redis ``used_memory`` growth per item before and
the shards' bytes per item after; ``backtest_items_per_s`` is items read and re-scored per
second of wall time, ``backtest_cpu_s`` the process CPU it took.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent.parent
#: The checkout under test: this one, or ``--root`` (the side's own process).
ROOT = Path(os.environ.get("BENCH_ROOT", HERE))
sys.path.insert(0, str(ROOT))

BATCH = 64  # jobs per message, as the workers decide them


def _test_setup(n: int) -> tuple[Any, Any, np.ndarray, Path]:
    from moderation import testmodel
    from moderation.adapters.policy_files import edit_policy_text
    from moderation.compose.scoring import build_scoring
    from moderation.core.policy import PolicyMode
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
    return scoring.policies.current, candidate, x.astype(np.float32), path


def _starter_setup(n: int) -> tuple[Any, Any, np.ndarray, Path]:
    from bench.scoring import RandomTextEncoder
    from moderation.adapters.policy_files import edit_policy_text, load_policies, load_policy_text
    from moderation.core.compiled import compile_policy
    from moderation.pipeline.policies import CompiledSet
    from moderation.signals import builtin_signals

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
    path = Path(tempfile.mkdtemp()) / "weapons.next.yaml"
    path.write_text(text)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, encoder.dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return live, candidate, x, path


def _decided(live: Any, x: np.ndarray, start: int) -> list[tuple[Any, Any, np.ndarray, str]]:
    """One message's jobs as the processor hands them to the history (3 tenants)."""
    from moderation.core.image_ref import ImageRef
    from moderation.core.jobs import Job
    from moderation.core.scoring import FeatureBatch

    verdicts = live.verdicts(FeatureBatch(embeddings=x))
    out = []
    for i, (row, verdict) in enumerate(zip(x, verdicts, strict=True)):
        n = start + i
        tenant = ("acme", "globex", "initech")[n % 3]
        job = Job(id=f"{tenant}/job-{n}", image=ImageRef(uri=f"s3://uploads/{n}.jpg"))
        if hasattr(job, "tenant"):
            job = job.model_copy(update={"tenant": tenant})
        out.append((job, verdict, row[None, :], f"{n:064x}"))
    return out


def _after(live: Any, candidate: Any, x: np.ndarray, text: str, s3: bool) -> dict[str, Any]:
    from moderation.adapters.local_blobs import LocalBlobStore
    from moderation.adapters.parquet_history import ParquetHistory
    from moderation.pipeline.backtest import backtest
    from moderation.pipeline.history import EmbeddingHistory
    from moderation.pipeline.history_shards import HistoryShards
    from moderation.settings import EmbeddingSettings

    server = None
    if s3:
        from moderation.adapters.s3_blobs import S3BlobStore
        from moderation.settings import BlobSettings, S3Settings
        from tests.servers import MotoServer

        server = MotoServer()
        server.start()
        server.client().create_bucket(Bucket="bench")
        blobs: Any = S3BlobStore(
            S3Settings(
                endpoint_url=server.url,
                access_key_id="testing",  # type: ignore[arg-type]
                secret_access_key="testing",  # type: ignore[arg-type]
            ),
            BlobSettings(bucket="bench"),
        )
    else:
        blobs = LocalBlobStore(Path(tempfile.mkdtemp()) / "blobs")
    try:
        shards = HistoryShards(blobs, ParquetHistory())
        # no thread: the buffer is flushed here, timed apart from the job threads' share
        settings = EmbeddingSettings(store=True, flush_rows=10**9, flush_bytes=10**12)
        history = EmbeddingHistory(shards, writer="bench-1", settings=settings)
        job_s = flush_s = 0.0
        for start in range(0, len(x), BATCH):
            decided = _decided(live, x[start : start + BATCH], start)
            t = time.perf_counter()
            history.record_many(decided)
            job_s += time.perf_counter() - t
            if history.buffered >= 10_000 or start + BATCH >= len(x):
                t = time.perf_counter()
                history.flush(force=True)
                flush_s += time.perf_counter() - t
        keys = [k.key for k in shards.keys(0)]
        stored = sum(len(blobs.get(k)) for k in keys)
        cpu = time.process_time()
        t = time.perf_counter()
        report = backtest(shards, live=live, candidate=candidate, candidate_text=text, since=0)
        seconds = time.perf_counter() - t
        cpu = time.process_time() - cpu
    finally:
        if server is not None:
            server.stop()
    n = len(x)
    return {
        "store": "shards (s3: moto)" if s3 else "shards (local folder)",
        "shards": len(keys),
        "write_us_per_image_job_thread": round(job_s / n * 1e6, 2),
        "write_us_per_image_total": round((job_s + flush_s) / n * 1e6, 2),
        "bytes_per_embedding": round(stored / n, 1),
        "backtest_s": round(seconds, 3),
        "backtest_cpu_s": round(cpu, 3),
        "backtest_items_per_s": round(n / seconds),
        "scored": report.scored,
        "changed": report.changed,
        "drift": report.drift,
        "transitions": report.transitions,
    }


def _before(live: Any, candidate: Any, x: np.ndarray) -> dict[str, Any]:
    """The checkout before the move: the Redis stream (``--before-root``)."""
    from moderation.adapters.redis_embeddings import (  # type: ignore[import-not-found]
        RedisEmbeddingStore,
    )

    from moderation.adapters.embedded_redis import EmbeddedRedis
    from moderation.pipeline.backtest import backtest
    from moderation.pipeline.history import EmbeddingHistory
    from moderation.settings import EmbeddingSettings

    server = EmbeddedRedis()
    store = RedisEmbeddingStore.from_url(server.start(), EmbeddingSettings(max_items=None))
    try:
        base = int(store.redis.info("memory")["used_memory"])
        history = EmbeddingHistory(store)
        job_s = 0.0
        for start in range(0, len(x), BATCH):
            decided = _decided(live, x[start : start + BATCH], start)
            t = time.perf_counter()
            history.record_many(decided)
            job_s += time.perf_counter() - t
        memory = int(store.redis.info("memory")["used_memory"]) - base
        cpu = time.process_time()
        t = time.perf_counter()
        report = backtest(store, live=live, candidate=candidate, since=0)
        seconds = time.perf_counter() - t
        cpu = time.process_time() - cpu
    finally:
        server.stop()
    n = len(x)
    return {
        "store": "redis stream (embedded valkey)",
        "write_us_per_image_job_thread": round(job_s / n * 1e6, 2),
        "write_us_per_image_total": round(job_s / n * 1e6, 2),
        "bytes_per_embedding": round(memory / n, 1),
        "backtest_s": round(seconds, 3),
        "backtest_cpu_s": round(cpu, 3),
        "backtest_items_per_s": round(n / seconds),
        "scored": report.scored,
        "changed": report.changed,
        "drift": report.drift,
        "transitions": report.transitions,
    }


def _precision(live: Any, candidate: Any, x: np.ndarray) -> dict[str, Any]:
    """float16 storage against float32: decisions that differ (live set and candidate set),
    and the backtest's changed items computed both ways."""
    from moderation.core.decision import decisions
    from moderation.core.scoring import FeatureBatch

    after = live.replacing(candidate)
    x16 = x.astype(np.float16).astype(np.float32)

    def ranks(compiled: Any, rows: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(rows), 20_000):
            batch = FeatureBatch(embeddings=rows[start : start + 20_000])
            out.append(decisions(compiled.scorer(None).score(batch))[0])
        return np.concatenate(out)

    live32, live16 = ranks(live, x), ranks(live, x16)
    cand32, cand16 = ranks(after, x), ranks(after, x16)
    changed32 = set(np.flatnonzero(live32 != cand32).tolist())
    changed16 = set(np.flatnonzero(live16 != cand16).tolist())
    return {
        "live_decisions_differ": int((live32 != live16).sum()),
        "candidate_decisions_differ": int((cand32 != cand16).sum()),
        "changed_float32": len(changed32),
        "changed_float16": len(changed16),
        "changed_items_differ": len(changed32 ^ changed16),
        "agreement": round(1 - len(changed32 ^ changed16) / len(x), 6),
    }


def run_side(side: str, setup: str, n: int, s3: bool) -> dict[str, Any]:
    live, candidate, x, path = (_test_setup if setup == "test" else _starter_setup)(n)
    if side == "before":
        result = _before(live, candidate, x)
    else:
        result = _after(live, candidate, x, path.read_text(), s3)
        result["float16_vs_float32"] = _precision(live, candidate, x)
    return {
        "side": side,
        "setup": setup,
        "n": n,
        "dim": int(x.shape[1]),
        "model": live.model.id,
        **result,
    }


def _spawn(side: str, root: Path, setup: str, n: int, s3: bool) -> dict[str, Any]:
    env = {**os.environ, "BENCH_ROOT": str(root), "PYTHONPATH": str(root)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--setups", setup]
    cmd += ["--n", str(n), *(["--s3"] if s3 else [])]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{side} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--setups", default="test,starter")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before-root", type=Path, default=None)
    parser.add_argument("--s3", action="store_true", help="shards in a moto S3 server")
    parser.add_argument("--side", choices=["before", "after"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:  # one side, in its own process
        print(json.dumps(run_side(args.side, args.setups, args.n, args.s3)))
        return
    results = []
    for _ in range(args.rounds):
        for setup in args.setups.split(","):
            if args.before_root is not None:
                results.append(_spawn("before", args.before_root, setup, args.n, args.s3))
            results.append(_spawn("after", HERE, setup, args.n, args.s3))
    print(
        json.dumps(
            {
                "benchmark": "backtest",
                "machine": f"{platform.node()}: {os.cpu_count()} cores, {platform.processor()}"
                f" {platform.machine()}, Python {platform.python_version()}",
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
