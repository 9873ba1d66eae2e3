"""The per-stage profile reader (``bench/stages.py``): which stage a py-spy stack is charged to,
and the report's arithmetic (not any speed)."""

from __future__ import annotations

from pathlib import Path

from bench.stages import API, WORKER, classify, report

M = "/repo/moderation"


def _stack(*frames: tuple[str, str]) -> str:
    """A collapsed stack, outermost first, as py-spy's raw format writes it."""
    return ";".join(f"{func} ({file}:1)" for func, file in frames)


THREAD = ("Thread.run", "/usr/lib/python3.11/threading.py")


def test_the_innermost_frame_of_a_stage_decides() -> None:
    write = _stack(
        THREAD,
        ("Outcomes.finish_many", f"{M}/pipeline/outcomes.py"),
        ("RedisJobStore.finish_many.<locals>.run", f"{M}/adapters/redis_jobs.py"),
        ("Pipeline.execute", "/venv/redis/client.py"),
        ("Connection.send_packed_command", "/venv/redis/connection.py"),
    )
    read = _stack(
        THREAD,
        ("Processor.run", f"{M}/pipeline/process.py"),
        ("RedisJobStore.inline_bytes_many", f"{M}/adapters/redis_jobs.py"),
        ("Redis.mget", "/venv/redis/commands/core.py"),
    )
    consume = _stack(
        ("Consumer.start", "/venv/celery/worker/consumer/consumer.py"),
        ("Channel._brpop_read", "/venv/kombu/transport/redis.py"),
        ("Redis.parse_response", "/venv/redis/client.py"),
    )
    pdq = _stack(
        THREAD,
        ("Moderator.prepare", f"{M}/pipeline/moderator.py"),
        ("HashBankSignal.features", f"{M}/signals/hash_bank/signal.py"),
        ("hash_frame", f"{M}/signals/hash_bank/pdq_hasher.py"),
        ("_pdq", f"{M}/signals/hash_bank/pdq_hasher.py"),
    )
    assert classify(write, WORKER) == "result write"
    assert classify(read, WORKER) == "job store reads"
    assert classify(consume, WORKER) == "celery consume"
    assert classify(pdq, WORKER) == "signal features (PDQ hash)"


def test_waiting_threads_and_api_stages() -> None:
    waiting = _stack(THREAD, ("Condition.wait", "/usr/lib/python3.11/threading.py"))
    publish = _stack(
        ("Server.serve", "/venv/uvicorn/server.py"),
        ("Submitter.submit_many", f"{M}/pipeline/submit.py"),
        ("CeleryQueue.publish", f"{M}/adapters/celery_queue.py"),
        ("Producer.publish", "/venv/kombu/messaging.py"),
    )
    assert classify(waiting, WORKER) == "(waiting)"
    assert classify(publish, API) == "celery publish"
    assert classify(_stack(("h11.next_event", "/venv/h11/_connection.py")), API) == "http server"


def test_the_report_turns_samples_into_milliseconds_per_image(tmp_path: Path) -> None:
    read = _stack(
        THREAD, ("RedisJobStore.get_jobs", f"{M}/adapters/redis_jobs.py"), ("mget", "/r.py")
    )
    idle = _stack(THREAD, ("Event.wait", "/usr/lib/python3.11/threading.py"))
    decode = _stack(THREAD, ("_decode", f"{M}/adapters/images.py"))
    (tmp_path / "worker-0.txt").write_text(f"{read} 300\n{decode} 100\n{idle} 5000\n")
    result = report(tmp_path, images=100, rate=100.0)["worker-0"]
    # 300 samples at 100 Hz over 100 images: 30 ms per image; idle samples are dropped.
    assert result["job store reads"] == {"ms_per_image": 30.0, "share": 0.75}
    assert result["decode"] == {"ms_per_image": 10.0, "share": 0.25}
    assert result["total"]["ms_per_image"] == 40.0
    assert "(waiting)" not in result
