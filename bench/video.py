"""Video decoding and sampling throughput: seconds of video moderated per CPU second (one core:
one decoder thread), ours against the naive path, for 720p and 1080p H.264.

* **ours**: :func:`moderation.adapters.video.decode_video` at the default sampling (one frame a
  second plus scene cuts): keyframes decoded, other packets held back until a cell needs them,
  non-reference frames skipped, only the samples converted to RGB at the model's input size.
* **ours, deblocking on**: the same with ``video.skip_loop_filter=false`` (the codec's in-loop
  deblocking filter runs): the figure before that setting, measured in the same run; and how
  much the sampled frames differ (mean absolute difference of the 0-255 RGB samples).
* **naive**: decode every frame, convert every frame to RGB at full size, then keep one a
  second (what a straightforward ``for frame in container.decode(...)`` loop does).

The clips are made here with PyAV's libx264 from moving test-world shapes (a slow pan and a
little noise, so P-frames carry data), in two GOP layouts: ``gop2s`` (a keyframe every 2 s, as
streaming and short-video platforms encode) and ``x264default`` (keyint 250, keyframes at scene
cuts). Run under the suite lock; prints JSON (and writes it with ``--out``)::

    flock /work/notes/suite.lock .venv/bin/python bench/video.py [--seconds 20] [--repeats 3]

Timing is ``time.thread_time`` around each decode (the CPU time of the decoding thread), best of
``--repeats``, so another process on the machine does not change the figure much.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import time
from typing import Any

import av
import numpy as np
from av.video.stream import VideoStream

from moderation.adapters.video import decode_video
from moderation.settings import VideoSettings
from moderation.testmodel.clips import allow_image, block_image

MODEL_SIDE = 224  # the sampled frames' short side (ViT-B-32's input)


def make_clip(width: int, height: int, seconds: int, fps: int, keyint: int | None) -> bytes:
    """A moving test-world scene as H.264 in MP4 (yuv420p, crf 23, preset veryfast)."""
    rng = np.random.default_rng(0)
    scenes = [
        np.asarray(img.convert("RGB").resize((width // 2, height // 2)), np.int16)
        for img in (allow_image(), block_image(), allow_image(3))
    ]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as output:
        stream = output.add_stream("libx264", rate=fps)
        assert isinstance(stream, VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        params = "scenecut=40" if keyint is None else f"keyint={keyint}:min-keyint={keyint}"
        stream.options = {"crf": "23", "preset": "veryfast", "x264-params": params}
        canvas = np.zeros((height, width, 3), np.int16)
        for k in range(seconds * fps):
            scene = scenes[(k // (fps * 7)) % len(scenes)]  # a cut every 7 s
            dx = (k * 3) % (width // 2)
            dy = (k * 2) % (height // 2)
            canvas[dy : dy + height // 2, dx : dx + width // 2] = scene
            noisy = canvas + rng.integers(-3, 4, canvas.shape, dtype=np.int16)
            frame = av.VideoFrame.from_ndarray(np.clip(noisy, 0, 255).astype(np.uint8), "rgb24")
            for packet in stream.encode(frame):
                output.mux(packet)
            canvas[:] = 16
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


def naive(data: bytes, sample_fps: float = 1.0) -> int:
    """Decode every frame to full-size RGB, then keep one a second: the samples kept."""
    kept = 0
    next_t = 0.0
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for frame in container.decode(stream):
            rgb = frame.to_ndarray(format="rgb24")
            t = float(frame.pts * stream.time_base) if frame.pts is not None else 0.0
            if t >= next_t:
                kept += 1
                next_t += 1.0 / sample_fps
            del rgb
    return kept


def _best(fn: Any, repeats: int) -> tuple[float, Any]:
    best = float("inf")
    out = None
    for _ in range(repeats):
        started = time.thread_time()
        out = fn()
        best = min(best, time.thread_time() - started)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    settings = VideoSettings()
    deblocking = VideoSettings(skip_loop_filter=False)
    rows = []
    for name, (width, height) in {"720p": (1280, 720), "1080p": (1920, 1080)}.items():
        for layout, keyint in {"gop2s": 2 * args.fps, "x264default": None}.items():
            data = make_clip(width, height, args.seconds, args.fps, keyint)
            ours_s, video = _best(
                lambda data=data: decode_video(data, settings, min_side=MODEL_SIDE), args.repeats
            )
            deblock_s, deblocked = _best(
                lambda data=data: decode_video(data, deblocking, min_side=MODEL_SIDE),
                args.repeats,
            )
            naive_s, naive_kept = _best(lambda data=data: naive(data), args.repeats)
            pairs = list(zip(video.samples, deblocked.samples, strict=False))
            drift = [
                float(
                    np.abs(np.asarray(a.image, np.float32) - np.asarray(b.image, np.float32)).mean()
                )
                for a, b in pairs
                if a.timestamp_s == b.timestamp_s and a.image.size == b.image.size
            ]
            rows.append(
                {
                    "resolution": name,
                    "gop": layout,
                    "video_seconds": args.seconds,
                    "fps": args.fps,
                    "bytes": len(data),
                    "ours": {
                        "cpu_s": round(ours_s, 4),
                        "video_s_per_cpu_s": round(args.seconds / ours_s, 1),
                        "frames_decoded": video.frames_decoded,
                        "samples": len(video.samples),
                    },
                    "ours_deblocking_on": {
                        "cpu_s": round(deblock_s, 4),
                        "video_s_per_cpu_s": round(args.seconds / deblock_s, 1),
                        "frames_decoded": deblocked.frames_decoded,
                        "samples": len(deblocked.samples),
                        "sample_mean_abs_diff_0_255": round(max(drift), 2) if drift else None,
                    },
                    "naive": {
                        "cpu_s": round(naive_s, 4),
                        "video_s_per_cpu_s": round(args.seconds / naive_s, 1),
                        "frames_decoded": args.seconds * args.fps,
                        "samples": naive_kept,
                    },
                    "speedup": round(naive_s / ours_s, 1),
                    "speedup_deblocking_on": round(naive_s / deblock_s, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    report = {
        "benchmark": "video",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "pyav": av.__version__,
            "ffmpeg_libavcodec": av.library_versions.get("libavcodec"),
        },
        "sampling": {"sample_fps": settings.sample_fps, "scene_cuts": settings.scene_cuts},
        "note": "CPU seconds of the decoding thread, best of --repeats; the machine is shared",
        "rows": rows,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
