"""Peak memory while moderating a 1 GB video: the decoder streams the file (FFmpeg reads it in
small blocks through PyAV's I/O buffer) and keeps a bounded number of frames (the samples, at
the model's input size, plus a few recent decoded frames), so its peak RSS should not depend on
the file's size.

The video is made here in /tmp with PyAV (libx264 ``ultrafast``, lossless, 1280x720 frames of
coarse noise: little encoding work per byte, so a gigabyte comes quickly) and deleted after.
Each measurement runs in a fresh child process (``ru_maxrss`` of that process alone):

* **path**: ``decode_video(Path)``, the streaming decode, from the file;
* **bytes**: ``decode_video(file.read_bytes())``, what a caller holding the whole file in memory
  costs (the worker's fetch path before downloads were streamed);
* **worker**: the worker's own path for a URL job: the image sources download the file over HTTP
  (served by this process on 127.0.0.1) with ``fetch_media``, which streams it into a temporary
  file past ``video.stream_above_bytes``, and the pipeline's decoder (``media_decoder``) decodes
  the video from that file, as a worker does; the file is then removed;
* **worker_bytes** (``--worker-bytes``): the same download read whole into memory
  (``fetch``) and decoded from the bytes: the worker before streaming, for contrast.

Prints JSON. Run under the suite lock::

    flock /work/notes/suite.lock .venv/bin/python bench/video_memory.py [--gb 1.0] \
        [--size 1920x1080] [--worker-bytes]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_CHILD = """
import json, resource, sys, time
from pathlib import Path
from moderation.adapters.video import decode_video
from moderation.settings import VideoSettings
path, mode = Path(sys.argv[1]), sys.argv[2]
settings = VideoSettings(max_bytes=8 * 1024**3, max_decode_s=3600, max_frames_decoded=10**6)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.process_time()
video = decode_video(path if mode == "path" else path.read_bytes(), settings, min_side=224)
print(json.dumps({
    "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "rss_before_decode_mib": round(base / 1024, 1),
    "cpu_s": round(time.process_time() - started, 1),
    "duration_s": round(video.duration_s, 1),
    "frames_decoded": video.frames_decoded,
    "samples": len(video.samples),
}))
"""


_WORKER_CHILD = """
import json, resource, sys, time
from moderation.compose.registries import build_sources, media_decoder
from moderation.core.image_ref import ImageRef
from moderation.pipeline.sources import release
from moderation.settings import ImageLimits, QueueSettings, Settings, VideoSettings
url, mode = sys.argv[1], sys.argv[2]
settings = Settings(
    queue=QueueSettings(allow_private_hosts=["127.0.0.1/32"], http_timeout_s=120),
    images=ImageLimits(fetch_deadline_s=3600),
    video=VideoSettings(max_bytes=8 * 1024**3, max_decode_s=3600, max_frames_decoded=10**6),
)
sources = build_sources(settings, None)
decoder = media_decoder(settings)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.process_time()
ref = ImageRef(uri=url)
fetch = sources.fetch_media if mode == "worker" else sources.fetch
media = fetch(ref, tenant=None)
fetched_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
decoded = decoder.decode_media(media, min_side=224)
release([media])
print(json.dumps({
    "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "rss_before_fetch_mib": round(base / 1024, 1),
    "peak_rss_after_fetch_mib": round(fetched_rss / 1024, 1),
    "held_as": type(media).__name__,
    "cpu_s": round(time.process_time() - started, 1),
    "duration_s": round(decoded.timeline.duration_s, 1),
    "samples": len(decoded.frames),
}))
"""


def make_big(
    path: Path, target_bytes: int, width: int = 1280, height: int = 720
) -> tuple[int, int]:
    """Encode frames until the file holds ``target_bytes``: (bytes, frames)."""
    import av
    import numpy as np
    from av.video.stream import VideoStream

    rng = np.random.default_rng(0)
    tiles = [
        np.repeat(
            np.repeat(rng.integers(0, 255, (height // 4, width // 4, 3), np.uint8), 4, 0), 4, 1
        )
        for _ in range(8)
    ]
    frames = 0
    with av.open(str(path), "w", format="mp4") as output:
        stream = cast("VideoStream", output.add_stream("libx264", rate=30))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "qp": "0"}
        written = 0
        while written < target_bytes:
            frame = av.VideoFrame.from_ndarray(tiles[frames % len(tiles)], format="rgb24")
            for packet in stream.encode(frame):
                written += packet.size
                output.mux(packet)
            frames += 1
        for packet in stream.encode():
            output.mux(packet)
    return path.stat().st_size, frames


def measure(path: Path | str, mode: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = _WORKER_CHILD if mode.startswith("worker") else _CHILD
    done = subprocess.run(
        [sys.executable, "-c", child, str(path), mode],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return cast("dict[str, object]", json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--skip-bytes", action="store_true", help="only the streaming decode")
    parser.add_argument(
        "--worker-bytes", action="store_true", help="also the worker's path before streaming"
    )
    parser.add_argument(
        "--size", default="1280x720", help="frame size of the generated video (e.g. 1920x1080)"
    )
    args = parser.parse_args()
    width, height = (int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="bench-video-memory-") as folder:
        path = Path(folder) / "big.mp4"
        started = time.perf_counter()
        size, frames = make_big(path, int(args.gb * 1024**3), width, height)
        made_s = time.perf_counter() - started
        report: dict[str, object] = {
            "benchmark": "video_memory",
            "machine": {
                "cpu": platform.processor() or platform.machine(),
                "cores": os.cpu_count(),
                "note": "shared, busy development machine",
            },
            "file_bytes": size,
            "file_mib": round(size / 1024**2, 1),
            "frames": frames,
            "made_in_s": round(made_s, 1),
            "path": measure(path, "path"),
        }
        if not args.skip_bytes:
            report["bytes"] = measure(path, "bytes")
        with _served(Path(folder)) as url:
            report["worker"] = measure(url + "/big.mp4", "worker")
            if args.worker_bytes:
                report["worker_bytes"] = measure(url + "/big.mp4", "worker_bytes")
        print(json.dumps(report, indent=2))


@contextmanager
def _served(folder: Path) -> Iterator[str]:
    """``folder`` over HTTP on 127.0.0.1 (a thread of this process, not the measured one)."""
    handler = partial(_Quiet, directory=str(folder))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


if __name__ == "__main__":
    main()
