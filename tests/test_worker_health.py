"""The worker's probe state (pure, on a fake clock) and its HTTP endpoint."""

from __future__ import annotations

import httpx
import pytest

from moderation.adapters.health_server import HealthServer
from moderation.pipeline.health import Phase, WorkerHealth


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ready_only_once_loaded_and_never_again_after_sigterm() -> None:
    clock = Clock()
    health = WorkerHealth(stuck_after_s=30, clock=clock)
    assert not health.readiness().ok and health.phase is Phase.STARTING
    health.ready("model ViT-B-32")
    assert health.readiness().ok
    health.draining()
    assert not health.readiness().ok and health.readiness().phase is Phase.DRAINING
    health.ready("model ViT-B-32")  # a late warm-up does not undo a shutdown
    assert not health.readiness().ok and health.shutdown_requested


def test_a_worker_without_its_weights_is_alive_but_never_ready_and_says_why() -> None:
    clock = Clock()
    health = WorkerHealth(stuck_after_s=30, clock=clock)
    health.tick()
    health.failed("the worker could not start: checkpoint /weights/model.safetensors is missing")
    report = health.readiness()
    assert not report.ok and report.phase is Phase.FAILED
    assert "checkpoint /weights/model.safetensors is missing" in report.detail
    assert health.liveness().ok  # restarting it would not bring the weights


def test_liveness_fails_when_the_consumer_loop_stops_ticking() -> None:
    clock = Clock()
    health = WorkerHealth(stuck_after_s=30, clock=clock)
    clock.now += 29
    assert health.liveness().ok  # still starting, within the limit
    clock.now += 2
    assert "has not started" in health.liveness().detail and not health.liveness().ok
    health.tick()
    for _ in range(10):  # a loop ticking every 2 s stays alive
        clock.now += 2
        health.tick()
        assert health.liveness().ok
    clock.now += 31
    report = health.liveness()
    assert not report.ok and "consumer loop has not ticked for 31s" in report.detail


def test_liveness_fails_when_a_task_runs_past_the_limit() -> None:
    clock = Clock()
    health = WorkerHealth(stuck_after_s=30, clock=clock)
    health.task_started("batch-1")
    clock.now += 20
    health.task_started("batch-2")
    clock.now += 11
    health.tick()
    report = health.liveness()
    assert not report.ok and "task batch-1 has run for 31s" in report.detail
    health.task_finished("batch-1")
    health.tick()
    assert health.liveness().ok
    health.task_finished("batch-2")
    clock.now += 100
    health.tick()
    assert health.liveness().ok  # idle is not stuck


def test_the_probe_endpoint_answers_200_or_503_with_the_reason() -> None:
    clock = Clock()
    health = WorkerHealth(stuck_after_s=30, clock=clock)
    server = HealthServer(
        liveness=health.liveness, readiness=health.readiness, port=0, host="127.0.0.1"
    ).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        health.tick()
        ready = httpx.get(f"{base}/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["phase"] == "starting"
        health.ready("model m")
        assert httpx.get(f"{base}/readyz", timeout=5).json() == {
            "ok": True,
            "phase": "ready",
            "detail": "model m",
        }
        assert httpx.get(f"{base}/livez", timeout=5).status_code == 200
        clock.now += 60
        live = httpx.get(f"{base}/livez?verbose=1", timeout=5)
        assert live.status_code == 503 and "stuck" in live.json()["detail"]
        assert httpx.get(f"{base}/metrics", timeout=5).status_code == 404
    finally:
        server.close()
    # Closed (a worker's last step before exiting): a probe is refused at once, not accepted
    # by the kernel and left unanswered while the process ends.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/readyz", timeout=5)


def test_a_celery_stop_nobody_asked_for_exits_non_zero() -> None:
    """kombu can stop the worker with status 0 or 1 after losing Redis: the supervisor must see
    the documented 75 and restart it; a requested stop (SIGTERM) keeps Celery's own status."""
    from workers import lifecycle

    class Controller:
        exitcode: int | None = 0

    state = lifecycle.health()
    assert not state.shutdown_requested
    crashed = Controller()
    lifecycle.on_stopped(crashed)
    assert crashed.exitcode == lifecycle.EXIT_UNREQUESTED_STOP == 75
    # Celery's own status for a stop after losing its broker is often 1 (EX_FAILURE): the
    # documented status is 75 (docs/deployment.md "Exit status"), whatever Celery chose.
    failed = Controller()
    failed.exitcode = 1
    lifecycle.on_stopped(failed)
    assert failed.exitcode == 75
    # The shutdown watchdog's 70 says more than 75: it is kept.
    overran = Controller()
    overran.exitcode = lifecycle.EXIT_SHUTDOWN_TIMEOUT
    lifecycle.on_stopped(overran)
    assert overran.exitcode == 70
    state.draining()
    try:
        asked = Controller()
        lifecycle.on_stopped(asked)
        assert asked.exitcode == 0
    finally:
        state.shutdown_requested = False
