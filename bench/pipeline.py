"""Pipeline benchmark: bare image encoder vs the whole pipeline on the same images, model and
threads; plus decode throughput (from bench/decode.py). Prints one JSON object.

    python bench/pipeline.py [--images 256] [--model ViT-B-32|test] [--batch-size 32]
        [--device auto] [--workers 1] [--upload multipart|json] [--profile DIR]
        [--store redis|postgres|both] [--rounds 1]

The encoder has random weights (``pretrained=None``): speed does not depend on their values.
``--model test`` runs the bundled test model instead: it is tiny, so on a CPU it stands in for a
fast accelerator and shows what the rest of the pipeline costs per image.
``pipeline_images_per_s`` is client submit (inline JPEG bytes, batch endpoint) -> API -> Redis
(embedded valkey) -> Celery worker (thread pool + micro-batcher) -> verdict, timed from the first
submit to the last result. On a GPU the worker runs CUDA + bf16 automatically.
``--store postgres`` keeps job records and results in an embedded PostgreSQL (pgserver) as a
configured database does, and counts its server processes' CPU (``cpu_ms_per_image.postgres``);
``--store redis`` (the default) keeps them in Redis. ``--store both --rounds N`` runs N rounds
of both, interleaved (the order alternates each round, so machine noise hits both alike), and
reports every run and the medians per store, with PostgreSQL's difference: total CPU per image
(every process but the client) and throughput.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _images(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((640, 480), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def bench_encoder(
    model_settings: Any, images: list[bytes], batch_size: int, limits: Any
) -> dict[str, Any]:
    from moderation import testmodel
    from moderation.adapters.clip import load_clip
    from moderation.adapters.images import decode_image

    encoder = load_clip(
        model_settings, config_path=testmodel.config_path_for(model_settings.architecture)
    )
    prepared = [
        encoder.prepare(decode_image(data, limits, min_side=encoder.image_size)[0])
        for data in images
    ]
    encoder.encode_prepared(prepared[:batch_size])  # warm-up
    started = time.perf_counter()
    for i in range(0, len(prepared), batch_size):
        encoder.encode_prepared(prepared[i : i + batch_size])
    elapsed = time.perf_counter() - started
    return {
        "encoder_images_per_s": len(prepared) / elapsed,
        "device": str(encoder.device),
        "precision": encoder.precision,
    }


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_profilers(
    pids: dict[str, int], folder: Path, rate: int, *, gil: bool = False
) -> list[Any]:
    """py-spy on each process (raw collapsed stacks), until stopped with SIGINT. ``gil``: only
    the thread holding the GIL is sampled (where a process's GIL-bound time goes)."""
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        raise SystemExit(f"--profile needs py-spy next to {sys.executable} (pip install py-spy)")
    return [
        subprocess.Popen(
            [
                str(spy),
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(rate),
                "--format",
                "raw",
                "--nonblocking",
                "--full-filenames",
                *(["--gil"] if gil else []),
                "--output",
                str(folder / f"{name}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]


def _stop_profilers(profilers: list[Any]) -> None:
    import signal

    for proc in profilers:
        proc.send_signal(signal.SIGINT)
    for proc in profilers:
        proc.wait(timeout=60)


def bench_pipeline(
    settings: Any,
    images: list[bytes],
    tmp: Path,
    *,
    workers: int = 1,
    profile: Path | None = None,
    profile_rate: int = 250,
    profile_gil: bool = False,
    upload: str = "multipart",
    store: str = "redis",
    finish_times: bool = False,
    worker_env: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """The whole pipeline: this process is the client; the API (uvicorn) and each worker run in
    their own process, as in production. ``finish_times``: also report when each item's result
    was written, seconds after the first submit (``finished_s``, in submit order).
    ``worker_env``: extra environment per worker process (e.g. a video worker's
    ``MODERATION_QUEUE__WORKER_LANES=videos``)."""
    import contextlib
    import subprocess

    from pydantic import SecretStr

    from moderation.adapters.embedded_redis import EmbeddedRedis
    from moderation.adapters.postgres.embedded import EmbeddedPostgres
    from moderation.adapters.redis_workers import RedisWorkerRegistry
    from moderation.client import ModerationClient
    from moderation.metrics import render

    metrics_dir = tmp / "metrics"
    metrics_dir.mkdir()
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(EmbeddedRedis(data_dir=tmp / "redis"))
        settings = settings.model_copy(update={"redis_url": redis.url})
        postgres = None
        if store == "postgres":
            postgres = stack.enter_context(EmbeddedPostgres(data_dir=tmp / "pg", delete=True))
            database = settings.database.model_copy(update={"url": SecretStr(postgres.url)})
            settings = settings.model_copy(update={"database": database})
        env = settings.to_env()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
        )
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "moderation.cli", "worker", "--loglevel", "WARNING"],
                env={
                    **env,
                    "MODERATION_WORKER_SLOT": str(i),
                    **(worker_env[i] if worker_env and i < len(worker_env) else {}),
                },
                cwd=ROOT,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
            )
            for i in range(workers)
        ]
        port = _free_port()
        api = subprocess.Popen(
            [sys.executable, "-m", "moderation.cli", "api", "--port", str(port), "--ops-port", "0"],
            env={**env, "MODERATION_LOG_LEVEL": "WARNING"},
            cwd=ROOT,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
        )
        try:
            registry = RedisWorkerRegistry.from_url(redis.url, settings.queue)
            deadline = time.monotonic() + 600
            while len(registry.workers()) < workers:
                if any(w.poll() is not None for w in procs) or time.monotonic() > deadline:
                    raise SystemExit("worker did not start")
                time.sleep(0.2)
            base = f"http://127.0.0.1:{port}"
            with ModerationClient(base, timeout=120) as client:
                while True:
                    try:
                        client.healthz()
                        break
                    except Exception:
                        if api.poll() is not None or time.monotonic() > deadline:
                            raise SystemExit("the API did not start") from None
                        time.sleep(0.2)
                submit = client.upload_many if upload == "multipart" else client.submit_many
                warm = settings.queue.batch_size
                client.wait_many(submit(images[:warm]), timeout=600)
                before = _batch_totals(render(path=str(metrics_dir))[0].decode())
                profilers = (
                    _start_profilers(
                        {"api": api.pid, **{f"worker-{i}": w.pid for i, w in enumerate(procs)}},
                        profile,
                        profile_rate,
                        gil=profile_gil,
                    )
                    if profile
                    else []
                )
                pids = {
                    "api": api.pid,
                    **{f"worker-{i}": w.pid for i, w in enumerate(procs)},
                    "redis": _pid_listening(redis.url),
                    **({"postgres": postgres.pid} if postgres is not None else {}),
                }
                cpu_before = {name: _cpu_s(pid) for name, pid in pids.items()}
                client_before = _own_cpu_s()
                started = time.perf_counter()
                started_wall = time.time()
                ids = submit(images, chunk=100)
                submitted = time.perf_counter() - started
                submitted_at = time.time()
                results = client.wait_many(ids, timeout=1800)
                elapsed = time.perf_counter() - started
                cpu = {name: _cpu_s(pid) - cpu_before[name] for name, pid in pids.items()}
                cpu["client"] = _own_cpu_s() - client_before
                _stop_profilers(profilers)
            text = render(path=str(metrics_dir))[0].decode()
            after = _batch_totals(text)
            stored = _postgres_bytes(postgres.url) if postgres is not None else None
            if os.environ.get("BENCH_DUMP_METRICS"):
                print(
                    "\n".join(
                        line
                        for line in text.splitlines()
                        if line.startswith(
                            (
                                "moderation_stage_seconds_sum",
                                "moderation_stage_seconds_count",
                                "moderation_batch_size_",
                            )
                        )
                    ),
                    file=sys.stderr,
                )
        finally:
            for proc in [api, *procs]:
                proc.terminate()
            for proc in [api, *procs]:
                proc.wait(timeout=30)
    batches = after[0] - before[0]
    errors = sum(r.error is not None for r in results)
    # Once every image is accepted the API and the client are (nearly) idle: the rate at which
    # the worker then ends the rest is its own.
    late = sorted(
        r.finished_at.timestamp()
        for r in results
        if r.finished_at is not None and r.finished_at.timestamp() > submitted_at
    )
    drain = len(late) / (late[-1] - submitted_at) if len(late) > 50 else None
    out: dict[str, Any] = {
        "store": store,
        "pipeline_images_per_s": len(images) / elapsed,
        "pipeline_errors": errors,
        # How fast the client got every image accepted (the API's side alone, with the worker
        # busy at the same time).
        "submit_images_per_s": len(images) / submitted,
        "drain_images_per_s": drain,
        "batches": batches,
        "mean_batch_size": (after[1] - before[1]) / batches if batches else None,
        "upload": upload,
        # CPU time each process spent per image (user + system), whatever the wall clock did:
        # what the pipeline costs on a machine whose cores are all busy.
        "cpu_ms_per_image": {name: round(v * 1000 / len(images), 3) for name, v in cpu.items()},
        "cpu_cores_busy": round(sum(cpu.values()) / elapsed, 2),
    }
    if finish_times:
        out["finished_s"] = [
            None if r.finished_at is None else r.finished_at.timestamp() - started_wall
            for r in results
        ]
    if stored is not None:
        out["postgres_jobs"], out["postgres_bytes_per_job"] = stored
    if profile:
        from bench.stages import report

        out["stages_ms_per_image"] = {
            process: {stage: v["ms_per_image"] for stage, v in stages.items()}
            for process, stages in report(profile, len(images), profile_rate).items()
        }
    return out


def compare_stores(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per store of interleaved runs, and PostgreSQL's difference from Redis: total
    CPU per image of every process but the client (ms), and throughput (%)."""
    from statistics import median

    out: dict[str, Any] = {}
    for store in ("redis", "postgres"):
        mine = [r for r in runs if r["store"] == store]
        if not mine:
            continue
        names = sorted({name for r in mine for name in r["cpu_ms_per_image"]})
        out[store] = {
            "runs": len(mine),
            "pipeline_images_per_s": round(median(r["pipeline_images_per_s"] for r in mine), 1),
            "drain_images_per_s": round(median(r["drain_images_per_s"] or 0.0 for r in mine), 1),
            "cpu_ms_per_image": {
                name: round(median(r["cpu_ms_per_image"].get(name, 0.0) for r in mine), 3)
                for name in names
            },
            "cpu_ms_per_image_total_no_client": round(
                median(
                    sum(v for k, v in r["cpu_ms_per_image"].items() if k != "client") for r in mine
                ),
                3,
            ),
            "cpu_cores_busy": round(median(r["cpu_cores_busy"] for r in mine), 2),
        }
    if "redis" in out and "postgres" in out:
        redis, postgres = out["redis"], out["postgres"]
        out["postgres_minus_redis_cpu_ms_per_image"] = round(
            postgres["cpu_ms_per_image_total_no_client"]
            - redis["cpu_ms_per_image_total_no_client"],
            3,
        )
        out["postgres_vs_redis_throughput_pct"] = round(
            100.0 * (postgres["pipeline_images_per_s"] / redis["pipeline_images_per_s"] - 1.0), 1
        )
        # The same difference per round (each round runs both stores back to back).
        rounds = sorted({r["round"] for r in runs})
        per_round = []
        for n in rounds:
            pair = {r["store"]: r for r in runs if r["round"] == n}
            if len(pair) == 2:
                per_round.append(
                    sum(v for k, v in pair["postgres"]["cpu_ms_per_image"].items() if k != "client")
                    - sum(v for k, v in pair["redis"]["cpu_ms_per_image"].items() if k != "client")
                )
        if per_round:
            out["per_round_cpu_ms_difference"] = [round(d, 3) for d in per_round]
            out["median_per_round_cpu_ms_difference"] = round(median(per_round), 3)
    return out


def _postgres_bytes(url: str) -> tuple[int, float]:
    """Rows of the ``jobs`` partitions and their bytes per row, indexes and TOAST included."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:  # VACUUM: outside a transaction
        conn.execute("VACUUM (ANALYZE) jobs")
        row = conn.execute(
            "SELECT (SELECT count(*) FROM jobs), sum(pg_total_relation_size(i.inhrelid)) "
            "FROM pg_inherits i WHERE i.inhparent = 'jobs'::regclass"
        ).fetchone()
    count, size = (int(row[0]), int(row[1] or 0)) if row else (0, 0)
    return count, round(size / count, 1) if count else 0.0


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds so far of a process and all its descendants that are alive
    (a worker's prepare processes; Linux ``/proc``; 0 when unknown)."""
    if pid is None:
        return 0.0
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(proc.name)] = int(fields[1])
        cpu[int(proc.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def descends(p: int) -> bool:
        while p > 1:
            if p == pid:
                return True
            p = parents.get(p, 0)
        return False

    return sum(v for p, v in cpu.items() if descends(p))


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _pid_listening(url: str) -> int | None:
    """The pid of the local server process whose command line names ``url``'s port."""
    port = url.rsplit(":", 1)[-1].split("/")[0]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if ("server" in cmdline and f":{port}" in cmdline) or f"--port {port}" in cmdline:
            return int(proc.name)
    return None


def _batch_totals(text: str) -> tuple[float, float]:
    values = dict(
        line.rsplit(" ", 1)
        for line in text.splitlines()
        if line.startswith("moderation_batch_size_")
    )
    return (
        float(values.get("moderation_batch_size_count", 0)),
        float(values.get("moderation_batch_size_sum", 0)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default all)")
    parser.add_argument("--decode-images", type=int, default=40)
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="record every process with py-spy into this folder",
    )
    parser.add_argument(
        "--profile-rate",
        type=int,
        default=250,
        help="py-spy samples per second (lower it for a process with many threads: py-spy "
        "drops samples it cannot take in time)",
    )
    parser.add_argument(
        "--gil",
        action="store_true",
        help="with --profile: sample only the thread holding the GIL (GIL-bound time)",
    )
    parser.add_argument(
        "--upload",
        choices=["multipart", "json"],
        default="multipart",
        help="how the client sends image bytes",
    )
    parser.add_argument(
        "--store",
        choices=["redis", "postgres", "both"],
        default="redis",
        help="where job records and results live (both: interleaved rounds of each)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="with --store both: rounds of each store"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes (scale-out: one per GPU or per few cores)",
    )
    args = parser.parse_args()

    from moderation import testmodel
    from moderation.settings import ModelSettings, Settings

    model = ModelSettings(
        architecture=args.model,
        pretrained=None,
        device=args.device,
        fallback_to_test_model=False,
        threads=args.threads,
    )
    if args.model == "test":
        model = testmodel.model_settings(model)
    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    settings = Settings(
        environment="development",  # embedded, open API
        model=model,
        policy_paths=[testmodel.POLICY_PATH],
        cache_dir=tmp / "cache",
        rate_limits={"rate_per_s": 1e9, "burst": 10**9},  # measure the pipeline, not a quota
    )
    settings = settings.model_copy(
        update={
            "queue": settings.queue.model_copy(
                update={
                    "batch_size": args.batch_size,
                    "batch_wait_ms": 20,
                    "concurrency": 2 * args.batch_size,
                    "visibility_timeout_s": 1800,
                }
            )
        }
    )
    images = _images(args.images)
    report: dict[str, Any] = {
        "images": args.images,
        "model": args.model,
        "batch_size": args.batch_size,
        "threads": args.threads or os.cpu_count(),
        "mean_jpeg_kb": sum(map(len, images)) / len(images) / 1024,
    }
    report.update(bench_encoder(model, images, args.batch_size, settings.images))
    report["workers"] = args.workers
    if args.store == "both":
        runs = []
        for round_ in range(args.rounds):
            order = ["redis", "postgres"] if round_ % 2 == 0 else ["postgres", "redis"]
            for store in order:
                folder = tmp / f"run-{round_}-{store}"
                folder.mkdir()
                run = bench_pipeline(
                    settings, images, folder, workers=args.workers, upload=args.upload, store=store
                )
                run["round"] = round_ + 1
                print(json.dumps(run), file=sys.stderr)
                runs.append(run)
        report["runs"] = runs
        report["medians"] = compare_stores(runs)
    else:
        report.update(
            bench_pipeline(
                settings,
                images,
                tmp,
                workers=args.workers,
                profile=args.profile,
                profile_rate=args.profile_rate,
                profile_gil=args.gil,
                upload=args.upload,
                store=args.store,
            )
        )
        report["pipeline_vs_encoder"] = (
            report["pipeline_images_per_s"] / report["encoder_images_per_s"]
        )
    try:
        from bench.decode import measure_decode

        if args.model == "test":
            testmodel.register_config()
        decode = measure_decode(args.decode_images, architecture=model.architecture)
        report["decode_images_per_s_per_core"] = decode["decode_images_per_s_per_core"]
        report["naive_decode_images_per_s_per_core"] = decode["naive_decode_images_per_s_per_core"]
    except ImportError as exc:
        report["decode_error"] = f"bench/decode.py unavailable: {exc}"
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
