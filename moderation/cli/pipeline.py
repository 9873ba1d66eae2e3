"""Queue pipeline commands: ``moderation api | worker | submit | dlq``."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

from moderation.cli.common import api_url, client_key, err, fail, load_settings, out, warn_insecure
from moderation.exceptions import ModerationError

__all__ = ["pipeline_app"]

pipeline_app = typer.Typer(no_args_is_help=True, help="Queue pipeline: API, workers, demo.")
dlq_app = typer.Typer(no_args_is_help=True, help="Dead-letter list: inspect, requeue, purge.")
pipeline_app.add_typer(dlq_app, name="dlq")


@pipeline_app.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option(help="Messages handled at once (default: queue.concurrency)")
    ] = None,
    loglevel: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Run a Celery worker (thread pool + in-process micro-batcher) on the Redis broker.

    The worker process is Celery's own (``celery -A workers.celery_app worker``); it reads the
    same MODERATION_* settings from the environment.
    """
    from celery.bin.celery import main as celery_main

    from moderation.adapters.celery_queue import consumed_queues, worker_concurrency

    # Idle OpenMP threads sleep instead of spinning (torch reads this once, at import): a
    # spinning intra-op team takes the cores the decode threads need (measured on 2 cores: the
    # worker's CPU per image 7.2 -> 4.4 ms, see docs/performance.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    settings = load_settings()
    warn_insecure(settings)
    if not settings.redis_url:
        raise fail(ModerationError("set MODERATION_REDIS_URL (or run `moderation demo`)"))
    q = settings.queue
    if q.worker_metrics_port:
        from moderation.metrics import serve

        serve(q.worker_metrics_port)
    sys.argv = [
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        str(concurrency or worker_concurrency(q)),
        "--queues",
        ",".join(consumed_queues(settings)),
        "--hostname",
        f"moderation-{os.getpid()}@%h",
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
    ]
    celery_main()


@pipeline_app.command()
def api(
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option(help="0: any free port (for both ports)")] = None,
    ops_port: Annotated[
        int | None,
        typer.Option(help="/healthz, /readyz, /metrics for probes and scrapes; 0: any free port"),
    ] = None,
) -> None:
    """Serve the HTTP API (uvicorn), and its operations endpoints on their own port
    (``api_ops_port``). ``--port 0`` binds free ports (the operations port too, unless
    ``--ops-port`` says otherwise); both addresses are printed, the API's first."""
    from moderation.api.ops import create_ops_app
    from moderation.api.server import serve_sockets
    from moderation.app import create_app
    from moderation.compose.api import build_api

    settings = load_settings()
    warn_insecure(settings)
    bind_host = host or settings.api_host
    bind_port = settings.api_port if port is None else port
    bind_ops = ops_port if ops_port is not None else 0 if port == 0 else settings.api_ops_port
    sock = _listen(bind_host, bind_port)
    ops_sock = _listen(bind_host, bind_ops) if bind_ops is not None else None
    try:
        process = build_api(settings)
    except ModerationError as exc:
        sock.close()
        if ops_sock is not None:
            ops_sock.close()
        raise fail(exc) from exc
    shown = f"[{bind_host}]" if ":" in bind_host else bind_host
    print(f"serving the API on http://{shown}:{sock.getsockname()[1]}", flush=True)
    if ops_sock is not None:
        print(f"serving operations on http://{shown}:{ops_sock.getsockname()[1]}", flush=True)
    # A SIGTERM / SIGINT makes serve_sockets return (not kill the process): the audit log is
    # closed below, which flushes its spool to the store, then the command exits 0.
    try:
        serve_sockets(
            create_app(process),
            sock,
            ops_app=create_ops_app(process) if ops_sock is not None else None,
            ops_sock=ops_sock,
            log_level=settings.log_level.lower(),
            limit_concurrency=settings.api_max_connections,
        )
    finally:
        process.close()
        sock.close()
        if ops_sock is not None:
            ops_sock.close()


def _listen(host: str, port: int) -> socket.socket:
    """A bound TCP socket (IPv6 for a host with a colon).

    Raises:
        typer.Exit: the address cannot be bound.
    """
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise fail(ModerationError(f"cannot listen on {host}:{port}: {exc}")) from exc
    return sock


@pipeline_app.command()
def submit(
    images: Annotated[
        list[str], typer.Argument(help="Files (sent inline) or s3:// / https:// refs")
    ],
    policy: Annotated[list[str] | None, typer.Option("--policy", "-p")] = None,
    url: Annotated[str | None, typer.Option("--api")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for and print the results")] = True,
    timeout: Annotated[float, typer.Option()] = 120.0,
) -> None:
    """Submit images to the API; print job ids (and results with --wait)."""
    from moderation.client import ImageInput, ModerationClient

    settings = load_settings()
    inputs: list[ImageInput] = [Path(i) if Path(i).is_file() else i for i in images]
    try:
        with ModerationClient(api_url(settings, url), api_key=client_key(settings)) as client:
            ids = client.submit_many(inputs, policies=policy)
            if not wait:
                for ref, job_id in zip(images, ids, strict=True):
                    print(json.dumps({"input": ref, "id": job_id}))
                return
            failed = 0
            for ref, result in zip(images, client.wait_many(ids, timeout), strict=True):
                failed += result.error is not None
                print(json.dumps({"input": ref, **result.model_dump(mode="json")}))
    except ModerationError as exc:
        raise fail(exc) from exc
    raise typer.Exit(1 if failed else 0)


@dlq_app.command("list")
def dlq_list() -> None:
    """Print dead-lettered jobs as JSON lines."""
    from moderation.compose.stores import open_delivery_log

    settings = load_settings()
    try:
        for entry in open_delivery_log(settings).dead_letters():
            print(entry.model_dump_json())
    except ModerationError as exc:
        raise fail(exc) from exc


@dlq_app.command("requeue")
def dlq_requeue(
    job_ids: Annotated[list[str] | None, typer.Argument(help="Default: every dead letter")] = None,
) -> None:
    """Put dead-lettered jobs back on the queue (delivery count reset)."""
    from moderation.compose.database import database_configured, open_database
    from moderation.compose.stores import open_delivery_log, open_queue

    settings = load_settings()
    database = None
    try:
        database = open_database(settings) if database_configured(settings) else None
        store = open_delivery_log(settings, database=database)
        queue = open_queue(settings)
        wanted = job_ids or [e.job_id for e in store.dead_letters()]
        taken = []
        for job_id in wanted:
            if store.take_dead_letter(job_id) is None:
                err.print(f"[yellow]skip[/] {job_id}: not dead-lettered (or expired)")
                continue
            taken.append(job_id)
        # One message per job: each of them crashed a worker before.
        for job_id in taken:
            queue.publish([job_id])
        requeued = len(taken)
    except ModerationError as exc:
        raise fail(exc) from exc
    finally:
        if database is not None:
            database.close()
    out.print(f"requeued {requeued} job(s)")


@dlq_app.command("purge")
def dlq_purge() -> None:
    """Forget every dead letter (their error results stay until they expire)."""
    from moderation.compose.stores import open_delivery_log

    settings = load_settings()
    try:
        n = open_delivery_log(settings).purge_dead_letters()
    except ModerationError as exc:
        raise fail(exc) from exc
    out.print(f"purged {n} dead letter(s)")
