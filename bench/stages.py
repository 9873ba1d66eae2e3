"""Per-stage cost of the pipeline from py-spy samples: where each millisecond per image goes.

``bench/pipeline.py --profile DIR`` records every process of the pipeline with py-spy (raw
collapsed stacks, one file per process) during the timed run. This script reads those files and
attributes every sample to one stage: walking each stack from the innermost frame outwards, the
first frame that belongs to a stage decides (a Redis call made by the job store's ``finish``
counts as "result write", the same call made by kombu counts as "celery consume").

    python bench/stages.py DIR --images 1500 [--rate 250] [--markdown]

Prints JSON: per process and stage, CPU milliseconds per image (samples / rate / images) and the
share of that process's samples. Only active samples are recorded (py-spy's default), so idle
waits do not count.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

Rule = tuple[str, Callable[[str, str], bool]]


def _in(path: str) -> Callable[[str, str], bool]:
    return lambda func, file: path in file


def _fn(path: str, *names: str) -> Callable[[str, str], bool]:
    """Frames of these functions in ``path``. py-spy writes qualified names (``Class.method``,
    ``Class.method.<locals>.run``): any part may match, so a closure counts as its function."""
    wanted = set(names)
    return lambda func, file: path in file and not wanted.isdisjoint(func.split("."))


#: Worker-process stages, most specific first (checked on each frame, innermost frame first).
WORKER: list[Rule] = [
    (
        "encode (forward pass)",
        _fn(
            "adapters/clip.py",
            "encode_prepared",
            "start",
            "_start",
            "_assemble",
            "_forward",
            "result",
        ),
    ),
    (
        "encode (forward pass)",
        _fn("adapters/support/preprocess.py", "normalize", "decode", "_crop"),
    ),
    ("decode", _in("adapters/images.py")),
    ("prepare (preprocess)", _in("adapters/support/preprocess.py")),
    ("prepare (preprocess)", _in("adapters/support/crop.py")),
    ("prepare (preprocess)", _in("adapters/support/prepare_pool.py")),
    ("prepare (preprocess)", _in("adapters/clip.py")),
    (
        "signal features (PDQ hash)",
        _fn("signals/hash_bank/pdq_hasher.py", "hash_frame", "_pdq", "_border"),
    ),
    ("signal features (PDQ hash)", _fn("signals/hash_bank/signal.py", "features", "fingerprint")),
    ("signal features", _fn("pipeline/moderator.py", "prepare", "__call__", "_preparation")),
    ("score", _in("core/scoring.py")),
    ("score", _in("signals/")),
    ("verdict", _in("core/decision.py")),
    ("audit", _in("adapters/audit_log.py")),
    ("audit", _in("adapters/support/audit_spool.py")),
    ("audit", _in("core/audit/")),
    ("result write", _fn("adapters/redis_jobs.py", "finish_many")),
    ("result write", _fn("adapters/redis_deliveries.py", "mark_effects_done_many")),
    ("job store reads", _in("adapters/redis_jobs.py")),
    ("job store reads", _in("adapters/redis_deliveries.py")),
    ("review", _in("adapters/redis_review.py")),
    ("callback", _in("adapters/http_callbacks.py")),
    ("callback", _fn("adapters/celery_queue.py", "send")),
    ("celery publish (retries, sweep)", _in("adapters/celery_queue.py")),
    ("metrics", _in("prometheus_client/")),
    ("micro-batcher", _in("pipeline/batching.py")),
    ("result write", _fn("pipeline/outcomes.py", "finish_verdict", "finish_many")),
    ("process (orchestration)", _in("pipeline/")),
    ("celery consume", _in("celery/")),
    ("celery consume", _in("kombu/")),
    ("celery consume", _in("billiard/")),
]

#: API-process stages.
API: list[Rule] = [
    ("parse + validate", _fn("api/app.py", "_decode_inline", "_request", "_requests")),
    ("parse + validate", _fn("pipeline/submit.py", "validate")),
    ("redis writes", _in("adapters/redis_jobs.py")),
    ("celery publish", _in("adapters/celery_queue.py")),
    ("celery publish", _in("kombu/")),
    ("celery publish", _in("celery/")),
    ("submit (orchestration)", _in("pipeline/submit.py")),
    ("metrics", _in("prometheus_client/")),
    ("response serialization", _fn("fastapi/routing.py", "serialize_response")),
    ("parse + validate", _in("fastapi/dependencies/")),
    ("parse + validate", _in("multipart/")),
    ("parse + validate", _fn("starlette/requests.py", "json", "body", "form", "_get_form")),
    ("parse + validate", _in("pydantic")),
    ("endpoint", _in("moderation/api/")),
    ("http server", _in("uvicorn/")),
    ("http server", _in("h11/")),
    ("http server", _in("starlette/")),
    ("http server", _in("fastapi/")),
    ("http server", _in("anyio/")),
    ("http server", _in("asyncio/")),
]

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


#: Innermost frames that mean the thread is waiting, not working (py-spy cannot always tell).
WAITS = (
    "Condition.wait",
    "Event.wait",
    "_epoll.poll",
    "select",
    "sleep",
    "Lock.acquire",
    "SimpleQueue.get",
    "Queue.get",
    "_recv_into",
    "recv_into",
    "accept",
    "poll",
    "Runner.run",
    "run_forever",
)


def classify(stack: str, rules: list[Rule]) -> str:
    """The stage of one collapsed stack (``outer;...;inner``)."""
    frames = stack.split(";")
    leaf = frames[-1].split(" (")[0].strip() if frames else ""
    if leaf.endswith(WAITS):
        return "(waiting)"
    for frame in reversed(frames):
        match = _FRAME.match(frame.strip())
        func, file = (match["func"], match["file"]) if match else (frame, "")
        for stage, predicate in rules:
            if predicate(func, file):
                return stage
    return "other"


def read(path: Path, rules: list[Rule]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[classify(stack, rules)] += int(n)
    return counts


def report(folder: Path, images: int, rate: float) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for path in sorted(folder.glob("*.txt")):
        rules = API if path.stem.startswith("api") else WORKER
        counts = read(path, rules)
        counts.pop("(waiting)", None)
        total = sum(counts.values()) or 1
        out[path.stem] = {
            stage: {
                "ms_per_image": round(n / rate / images * 1000, 3),
                "share": round(n / total, 3),
            }
            for stage, n in counts.most_common()
        }
        out[path.stem]["total"] = {
            "ms_per_image": round(total / rate / images * 1000, 3),
            "share": 1.0,
        }
    return out


def markdown(result: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = []
    for process, stages in result.items():
        lines += [f"**{process}**", "", "| stage | ms/image | share |", "|---|---|---|"]
        lines += [
            f"| {stage} | {v['ms_per_image']:.3f} | {v['share']:.0%} |"
            for stage, v in stages.items()
        ]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--images", type=int, required=True)
    parser.add_argument("--rate", type=float, default=250.0)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    result = report(args.folder, args.images, args.rate)
    print(markdown(result) if args.markdown else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
