"""Peak memory while moderating a 1 GB video: the decoder streams the file (FFmpeg reads it in
small blocks through PyAV's I/O buffer) and keeps a bounded number of frames (the samples, at
the model's input size, plus a few recent decoded frames), so its peak RSS should not depend on
the file's size.

The video is made here in /tmp with PyAV (libx264 ``ultrafast``, lossless, 1280x720 frames of
coarse noise: little encoding work per byte, so a gigabyte comes quickly) and deleted after.
Each measurement runs in a fresh child process (``ru_maxrss`` of that process alone):

* **path**: ``decode_video(Path)``, the streaming decode, from the file;
* **bytes**: ``decode_video(file.read_bytes())``, what a caller holding the whole file in memory
  costs (the worker's fetch path today: see docs/video.md, "Memory").

Prints JSON. Run under the suite lock::

    flock /work/notes/suite.lock .venv/bin/python bench/video_memory.py [--gb 1.0]
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
from typing import cast

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


def make_big(path: Path, target_bytes: int) -> tuple[int, int]:
    """Encode frames until the file holds ``target_bytes``: (bytes, frames)."""
    import av
    import numpy as np
    from av.video.stream import VideoStream

    rng = np.random.default_rng(0)
    tiles = [
        np.repeat(np.repeat(rng.integers(0, 255, (180, 320, 3), np.uint8), 4, 0), 4, 1)
        for _ in range(8)
    ]
    frames = 0
    with av.open(str(path), "w", format="mp4") as output:
        stream = cast("VideoStream", output.add_stream("libx264", rate=30))
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
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


def measure(path: Path, mode: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), mode],
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-video-memory-") as folder:
        path = Path(folder) / "big.mp4"
        started = time.perf_counter()
        size, frames = make_big(path, int(args.gb * 1024**3))
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
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
