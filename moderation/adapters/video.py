"""Safe video decoding with PyAV (FFmpeg bundled in its wheel): hostile bytes in, a few sampled
RGB frames with their timestamps out, or a clear coded :class:`~moderation.exceptions.ImageError`.

Defences, in order (limits in :class:`~moderation.settings.VideoSettings`):

1. **Byte cap** (``video.max_bytes``); empty input refused.
2. **Container allowlist**: FFmpeg may only probe the allowed demuxers (``format_whitelist``:
   MP4/MOV and Matroska/WebM by default), so playlists (HLS), concat lists and image sequences
   never reach a demuxer, and nothing is opened but the bytes given. External data references
   of MOV files stay off (FFmpeg's default).
3. **Stream checks before any frame is decoded**: a video stream exists (an audio-only file is
   ``video_no_stream``), its codec is allowed, its dimensions are sane and within
   ``max_pixels``/``max_side``, its frame rate is known and at most ``max_fps``, and the
   container's claimed duration is at most ``max_duration_s``.
4. **Limits while decoding**: each packet's timestamp stays within ``max_duration_s`` and
   near the claimed duration (a container that claims 10 s but holds an hour is refused, not
   sampled over its first 10 s), at most ``max_frames_decoded`` frames, at most
   ``max_decode_s`` CPU seconds of this thread (CPU time, not wall time: a loaded machine does
   not fail videos), a frame whose size changes mid-stream is re-checked. A corrupt packet or a
   truncated file is ``video_corrupt``.
5. **Decode no more than sampling needs** (:mod:`moderation.core.sampling`): keyframes are
   always decoded (they are cheap, need nothing else, and sit at scene cuts); the packets
   after a keyframe are held back, not decoded, until a frame is needed for a cell that has no
   sample yet, and are dropped at the next keyframe when none is. Non-reference frames are
   skipped by the decoder (``skip_frame=NONREF``) when cells span several frames. Only sampled
   frames are converted to RGB, scaled down by FFmpeg's scaler to the short side the model
   needs. The in-loop deblocking filter is skipped (``skip_loop_filter``; about a third of an
   H.264 decode).

Every failure is an ``ImageError`` subclass with a ``video_*`` code; PyAV's errors are
translated here.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import av
import av.error
import numpy as np
from PIL import Image

from moderation.core.decision import Timeline
from moderation.core.sampling import (
    FrameSampler,
    SampleReason,
    SamplingRules,
    plan_samples,
)
from moderation.exceptions import (
    ImageError,
    UnsupportedVideoCodec,
    VideoDecodeError,
    VideoDecodeLimit,
    VideoFrameRateError,
    VideoNoStream,
    VideoTooLargeError,
    VideoTooLongError,
)
from moderation.ports import DecodedMedia
from moderation.settings import VideoSettings

__all__ = ["DecodedVideo", "VideoDecoder", "VideoSample", "decode_video", "sampling_rules"]

#: FFmpeg demuxer names per allowlist entry (``format_whitelist`` takes demuxer names).
_DEMUXERS = {"mov": ("mov",), "matroska": ("matroska",), "webm": ("matroska",)}
#: A stream may run this far past the container's claimed duration (rounding, B-frame delay).
_DURATION_SLACK_S = 2.0
#: Held-back packets after a keyframe, at most (a stream without keyframes is decoded instead).
_MAX_PENDING = 2_000
#: Presentation-time jumps between packets (in decode order) up to this many frames are B-frame
#: reordering, not a frame held still.
_REORDER_FRAMES = 8
#: Decoded frames kept for a while (see ``_Decoding._resolve``).
_RECENT_FRAMES = 4
#: Bytes FFmpeg may read and microseconds of stream it may analyse to find the streams.
_PROBE_OPTIONS = {"probesize": str(8 * 1024 * 1024), "analyzeduration": str(10_000_000)}


@dataclass(frozen=True, slots=True)
class VideoSample:
    """One sampled frame: RGB, scaled down; its presentation time and estimated frame number."""

    image: Image.Image
    timestamp_s: float
    frame_number: int
    reason: SampleReason
    keyframe: bool


@dataclass(frozen=True, slots=True)
class DecodedVideo:
    """What decoding found: the samples (in time order) and the facts of the stream."""

    samples: tuple[VideoSample, ...]
    duration_s: float
    fps: float
    width: int
    height: int
    container: str
    codec: str
    frames_decoded: int
    packets: int

    @property
    def frames(self) -> list[Image.Image]:
        return [s.image for s in self.samples]

    @property
    def timeline(self) -> Timeline:
        return Timeline(
            "video",
            self.duration_s,
            tuple(s.timestamp_s for s in self.samples),
            tuple(s.frame_number for s in self.samples),
        )


def sampling_rules(settings: VideoSettings) -> SamplingRules:
    """The pure sampling rules of ``settings``."""
    return SamplingRules(
        sample_fps=settings.sample_fps,
        max_samples=settings.max_samples,
        scene_cuts=settings.scene_cuts,
        scene_cut_threshold=settings.scene_cut_threshold,
        max_scene_cuts=settings.max_scene_cuts,
    )


Source = bytes | Path | IO[bytes]


def decode_video(source: Source, settings: VideoSettings, *, min_side: int = 448) -> DecodedVideo:
    """Decode the sampled frames of an untrusted video.

    Args:
        source: the file's bytes, a path, or a readable binary file object (streamed).
        settings: the limits and sampling rules.
        min_side: sampled frames are scaled down (never up) to this short side; 0 keeps them
            at full size.

    Raises:
        VideoTooLargeError: too many bytes, or frames with too many pixels or too long a side.
        VideoTooLongError: a claimed or decoded duration over ``max_duration_s``.
        VideoDecodeLimit: more frames or CPU seconds than the limits allow.
        UnsupportedVideoCodec: a container or codec outside the allowlists.
        VideoNoStream: no video stream (audio only).
        VideoFrameRateError: zero, unknown or absurd frame rate.
        VideoDecodeError: empty, truncated, corrupt packets, nothing decodable.
    """
    started = time.thread_time()
    with _opened(source, settings) as container:
        try:
            return _Decoding(container, settings, min_side, started).run()
        except ImageError:
            raise
        except MemoryError as exc:
            raise VideoTooLargeError("video needs too much memory to decode") from exc
        except av.error.FFmpegError as exc:
            raise VideoDecodeError(f"corrupt or truncated video: {_ffmpeg_message(exc)}") from exc
        except (ValueError, OSError, EOFError) as exc:
            raise VideoDecodeError(f"corrupt or truncated video: {exc}") from exc


class VideoDecoder:
    """:func:`decode_video` with fixed settings. Thread-safe (stateless)."""

    def __init__(self, settings: VideoSettings) -> None:
        self.settings = settings

    def decode(self, source: Source, *, min_side: int = 448) -> DecodedVideo:
        """See :func:`decode_video`."""
        return decode_video(source, self.settings, min_side=min_side)

    def media(self, data: bytes | Path, *, min_side: int) -> DecodedMedia:
        """The sampled frames and their timeline
        (:class:`~moderation.adapters.images.VideoFrames`); a path is decoded from the file,
        never read whole."""
        video = decode_video(data, self.settings, min_side=min_side)
        return DecodedMedia(video.frames, video.timeline)


def _ffmpeg_message(exc: av.error.FFmpegError) -> str:
    return str(getattr(exc, "strerror", None) or exc)[:200]


@contextmanager
def _opened(source: Source, settings: VideoSettings) -> Iterator[Any]:
    stream: IO[bytes]
    if isinstance(source, bytes):
        if not source:
            raise VideoDecodeError("empty file (0 bytes)")
        if len(source) > settings.max_bytes:
            raise VideoTooLargeError(
                f"{len(source)} bytes exceeds the {settings.max_bytes}-byte video limit"
            )
        stream = io.BytesIO(source)
    elif isinstance(source, Path):
        size = source.stat().st_size
        if size == 0:
            raise VideoDecodeError("empty file (0 bytes)")
        if size > settings.max_bytes:
            raise VideoTooLargeError(
                f"{size} bytes exceeds the {settings.max_bytes}-byte video limit"
            )
        stream = source.open("rb")
    else:
        stream = source
    demuxers = sorted({d for c in settings.containers for d in _DEMUXERS.get(c.lower(), (c,))})
    options = {**_PROBE_OPTIONS, "format_whitelist": ",".join(demuxers)}
    try:
        container = av.open(stream, mode="r", options=options, metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        if isinstance(source, Path):
            stream.close()
        raise VideoDecodeError(
            f"not a readable video ({', '.join(settings.containers)}): {_ffmpeg_message(exc)}"
        ) from exc
    try:
        yield container
    finally:
        container.close()
        if isinstance(source, Path):
            stream.close()


def _seconds(value: Any, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


class _Decoding:
    """One video's decode loop (see the module docstring, step 5)."""

    def __init__(self, container: Any, settings: VideoSettings, min_side: int, started: float):
        self.container = container
        self.settings = settings
        self.min_side = min_side
        self.started = started
        self.frames_decoded = 0
        self.packets = 0
        self.samples: list[VideoSample] = []
        self.last_time = 0.0
        self.time_base: Fraction | None = None
        #: Frames (by pts) held on screen past the start of later cells: until when.
        self.until: dict[int, float] = {}
        #: The last few decoded frames, by pts (a frame found held still after it was decoded)
        self.recent: dict[int, Any] = {}
        self.tick_fps = 0.0  # the stream's nominal frame rate (of a variable one: the highest)

    # --- checks before decoding -----------------------------------------------------------

    def _stream(self) -> Any:
        names = set(str(self.container.format.name).split(","))
        allowed = {d for c in self.settings.containers for d in _DEMUXERS.get(c.lower(), (c,))}
        if not names & allowed:  # defence in depth: the whitelist already refused it
            raise UnsupportedVideoCodec(f"container {self.container.format.name} is not allowed")
        videos = list(self.container.streams.video)
        if not videos:
            kinds = sorted({s.type for s in self.container.streams}) or ["no streams"]
            raise VideoNoStream(f"no video stream in the file (found: {', '.join(kinds)})")
        stream = videos[0]
        codec = str(stream.codec_context.codec.canonical_name)
        if codec not in self.settings.codecs:
            raise UnsupportedVideoCodec(
                f"video codec {codec} is not allowed (allowed: {', '.join(self.settings.codecs)})"
            )
        self._check_size(stream.codec_context.width, stream.codec_context.height)
        return stream

    def _check_size(self, width: int, height: int) -> None:
        if width <= 0 or height <= 0:
            raise VideoDecodeError(f"invalid frame dimensions {width}x{height}")
        if width * height > self.settings.max_pixels or max(width, height) > self.settings.max_side:
            raise VideoTooLargeError(
                f"{width}x{height} = {width * height} pixels per frame exceeds the limit "
                f"({self.settings.max_pixels} pixels, {self.settings.max_side} px a side)"
            )

    def _fps(self, stream: Any) -> float:
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        if not math.isfinite(fps) or fps <= 0:
            raise VideoFrameRateError("the video's frame rate is zero or unknown")
        if fps > self.settings.max_fps:
            raise VideoFrameRateError(
                f"frame rate {fps:.6g} fps exceeds the limit ({self.settings.max_fps:g} fps)"
            )
        return fps

    def _claimed_duration(self, stream: Any) -> float | None:
        claims = [
            _seconds(stream.duration, stream.time_base),
            self.container.duration / av.time_base if self.container.duration else None,
        ]
        known = [c for c in claims if c is not None and c > 0]
        longest = max(known, default=None)
        if longest is not None and longest > self.settings.max_duration_s:
            raise VideoTooLongError(
                f"the video claims {longest:.1f} s, "
                f"over the {self.settings.max_duration_s:g} s limit"
            )
        return longest

    # --- the loop -------------------------------------------------------------------------

    def run(self) -> DecodedVideo:
        stream = self._stream()
        fps = self._fps(stream)
        rates = (stream.base_rate, stream.guessed_rate, stream.average_rate)
        self.tick_fps = max(float(r) for r in rates if r) if any(rates) else fps
        claimed = self._claimed_duration(stream)
        plan = plan_samples(claimed, sampling_rules(self.settings))
        sampler = FrameSampler(plan)
        context = stream.codec_context
        context.thread_count = self.settings.decoder_threads
        context.thread_type = "SLICE" if self.settings.decoder_threads > 1 else "NONE"
        if self.settings.skip_loop_filter:  # no deblocking: about a third less decode work
            context.options = {**context.options, "skip_loop_filter": "all"}
        if plan.interval_s * fps >= 4:  # cells span several frames: skip disposable ones
            context.skip_frame = "NONREF"
        limit_s = (
            min(self.settings.max_duration_s, claimed + _DURATION_SLACK_S)
            if claimed is not None
            else self.settings.max_duration_s
        )
        time_base = self.time_base = stream.time_base
        start = _seconds(stream.start_time, time_base) or 0.0
        pending: list[Any] = []
        # The cell a decoded keyframe will sample once the decoder hands its frame out (after
        # its reordering delay): the packets behind it in that cell are held back meanwhile.
        promised = -1
        # (time, pts) of recent packets, put in presentation order once B-frame reordering
        # cannot change it: how long each frame stays on screen
        shown: list[tuple[float, int]] = []
        for packet in self.container.demux(stream):
            if packet.size == 0:  # the demuxer's end-of-stream marker
                continue
            self.packets += 1
            self._check_cpu()
            t = _seconds(packet.pts if packet.pts is not None else packet.dts, time_base)
            if t is not None:
                t -= start
                self._check_time(t, limit_s, claimed)
                if packet.is_keyframe:  # nothing after it is shown before it (closed GOP)
                    self._resolve(shown, t, sampler, context, pending, fps, start)
                shown.append((t, packet.pts))
                if len(shown) >= 2 * _REORDER_FRAMES:
                    shown.sort()
                    upto = shown[_REORDER_FRAMES][0]
                    self._resolve(
                        shown[:_REORDER_FRAMES], upto, sampler, context, pending, fps, start
                    )
                    del shown[:_REORDER_FRAMES]
            if packet.is_keyframe:
                pending.clear()
                if t is not None and sampler.needs(t):  # its frame will sample this cell
                    promised = sampler.cell(t)
                self._feed(context, [packet], sampler, fps, start)
            elif (
                t is None
                or (sampler.needs(t) and sampler.cell(t) != promised)
                or len(pending) >= _MAX_PENDING
            ):
                pending.append(packet)
                self._feed(context, pending, sampler, fps, start)
                pending.clear()
            else:
                pending.append(packet)
        self._resolve(shown, claimed, sampler, context, pending, fps, start)
        self._feed(context, [None], sampler, fps, start)  # drain the decoder
        if not self.samples:
            raise VideoDecodeError("no decodable video frame (truncated or corrupt)")
        duration = claimed if claimed is not None else self.last_time
        if claimed is not None and self.last_time < claimed - max(2 * plan.interval_s, 2.0):
            raise VideoDecodeError(
                f"truncated: frames end at {self.last_time:.1f} s of the {claimed:.1f} s claimed"
            )
        self.samples.sort(key=lambda s: s.timestamp_s)
        return DecodedVideo(
            samples=tuple(self.samples),
            duration_s=duration,
            fps=fps,
            width=int(context.width),
            height=int(context.height),
            container=str(self.container.format.name),
            codec=str(context.codec.canonical_name),
            frames_decoded=self.frames_decoded,
            packets=self.packets,
        )

    def _check_cpu(self) -> None:
        spent = time.thread_time() - self.started
        if spent > self.settings.max_decode_s:
            raise VideoDecodeLimit(
                f"decoding took over {self.settings.max_decode_s:g} CPU seconds: refused"
            )

    def _check_time(self, t: float, limit_s: float, claimed: float | None) -> None:
        if t > self.settings.max_duration_s:
            raise VideoTooLongError(
                f"the stream runs past {self.settings.max_duration_s:g} s (the limit)"
            )
        if t > limit_s and claimed is not None:
            raise VideoDecodeError(
                f"the stream runs past the {claimed:.1f} s its container claims (at {t:.1f} s)"
            )

    def _feed(
        self, context: Any, packets: list[Any], sampler: FrameSampler, fps: float, start: float
    ) -> None:
        for packet in packets:
            try:
                frames = context.decode(packet)
            except av.error.FFmpegError as exc:
                raise VideoDecodeError(f"corrupt video packet: {_ffmpeg_message(exc)}") from exc
            for frame in frames:
                self._frame(frame, sampler, fps, start)

    def _resolve(
        self,
        shown: list[tuple[float, int]],
        end: float | None,
        sampler: FrameSampler,
        context: Any,
        pending: list[Any],
        fps: float,
        start: float,
    ) -> None:
        """A frame rate that varies: a frame that stays on screen over a whole cell (longer
        than ``_REORDER_FRAMES`` frames and than a cell) samples the cells no other frame is
        shown in. ``shown``: packets whose successors in presentation order are known, the last
        one shown until ``end`` (None: unknown). Empties ``shown``."""
        if not shown:
            return
        shown.sort()
        ends = [s[0] for s in shown[1:]] + [end]
        threshold = max(sampler.interval_s, _REORDER_FRAMES / max(fps, self.tick_fps))
        for (t, pts), until in zip(shown, ends, strict=True):
            if until is None or until - t < threshold:
                continue
            boundary = (sampler.cell(t) + 1) * sampler.interval_s
            if boundary >= until or not sampler.needs(boundary, until):
                continue
            held = self.recent.get(pts)
            if held is not None:  # decoded already: offer it again for the later cells
                if sampler.offer(t, None, until) is not None and all(
                    s.timestamp_s != t for s in self.samples
                ):
                    self._keep(held, t, SampleReason.INTERVAL, fps)
                continue
            self.until[pts] = until  # held back or in the decoder: decode it now
            self._feed(context, pending, sampler, fps, start)
            pending.clear()
        shown.clear()

    def _keep(self, frame: Any, t: float, reason: SampleReason, fps: float) -> None:
        self.samples.append(
            VideoSample(
                image=_rgb(frame, self.min_side),
                timestamp_s=t,
                frame_number=round(t * fps),
                reason=reason,
                keyframe=bool(frame.key_frame),
            )
        )

    def _frame(self, frame: Any, sampler: FrameSampler, fps: float, start: float) -> None:
        self.frames_decoded += 1
        if self.frames_decoded > self.settings.max_frames_decoded:
            raise VideoDecodeLimit(
                f"over {self.settings.max_frames_decoded} frames decoded: refused"
            )
        self._check_cpu()
        if frame.width != self._width or frame.height != self._height:
            self._check_size(frame.width, frame.height)
            self._width, self._height = frame.width, frame.height
        # frame.time needs the frame's time base, which frames drained at the end lack
        t = _seconds(frame.pts, self.time_base)
        t = self.last_time if t is None or not math.isfinite(t) else max(0.0, t - start)
        self.last_time = max(self.last_time, t)
        self.recent[frame.pts] = frame
        while len(self.recent) > _RECENT_FRAMES:
            del self.recent[next(iter(self.recent))]
        signature = _signature(frame) if self.settings.scene_cuts else None
        reason = sampler.offer(t, signature, self.until.pop(frame.pts, None))
        if sampler.evicted:  # an open-ended plan coarsened: drop the merged samples
            gone = set(sampler.evicted)
            sampler.evicted.clear()
            self.samples = [
                s
                for s in self.samples
                if s.reason is not SampleReason.INTERVAL or s.timestamp_s not in gone
            ]
        if reason is not None:
            self._keep(frame, t, reason, fps)

    _width = 0
    _height = 0


#: Planar 8-bit YUV layouts whose planes are read directly for a signature.
_PLANAR_YUV = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p"})
#: Points read per side of a plane for a signature (a 32x32 lattice: 16 per grid cell).
_LATTICE = 32


def _signature(frame: Any) -> np.ndarray[Any, np.dtype[np.float32]]:
    """The 8x8 mean-colour layout of a frame (YUV, 0-1) from a 32x32 lattice of its planes'
    samples: no scaling and no RGB conversion (a few microseconds). Other pixel layouts go
    through FFmpeg's area scaler."""
    if frame.format.name not in _PLANAR_YUV:
        small = frame.reformat(width=8, height=8, format="rgb24", interpolation="AREA")
        array: np.ndarray[Any, np.dtype[np.uint8]] = small.to_ndarray()
        return (array.astype(np.float32) / 255.0).reshape(8, 8, 3)
    grids = []
    for plane in frame.planes[:3]:
        rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
        ys = np.linspace(0, plane.height - 1, _LATTICE).astype(np.intp)
        xs = np.linspace(0, plane.width - 1, _LATTICE).astype(np.intp)
        lattice = rows[np.ix_(ys, xs)].astype(np.float32)
        grids.append(lattice.reshape(8, _LATTICE // 8, 8, _LATTICE // 8).mean(axis=(1, 3)))
    return (np.stack(grids, axis=-1) / 255.0).astype(np.float32)


def _rgb(frame: Any, min_side: int) -> Image.Image:
    """The frame as 8-bit RGB, scaled down (area) so that its short side is ``min_side``."""
    width, height = frame.width, frame.height
    short = min(width, height)
    if 0 < min_side < short:
        scale = min_side / short
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
        frame = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA")
    image: Image.Image = frame.to_image()
    return image.convert("RGB") if image.mode != "RGB" else image
