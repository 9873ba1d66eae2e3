"""Video decoding (PyAV): containers and codecs, sampling that decodes little, hostile files with
coded errors, and animations sampled like video. Every clip is generated here from the test
world's shapes (moderation.testmodel.clips), never committed."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from moderation.adapters.images import SafeDecoder, decode_image, sniff_format
from moderation.adapters.video import decode_video
from moderation.compose.registries import media_decoder
from moderation.core.image_ref import ImageRef
from moderation.core.sampling import SampleReason
from moderation.exceptions import ImageDecodeError, ImageError, UnsupportedFormatError
from moderation.settings import ImageLimits, Settings, VideoSettings
from moderation.testmodel.clips import (
    Shot,
    allow_image,
    animation,
    background_image,
    block_image,
    clip,
)

ALLOW = allow_image()
BLOCK = block_image()
VIDEO = VideoSettings()


def _looks_like(frame: Image.Image, reference: Image.Image) -> float:
    a = np.asarray(frame.convert("RGB").resize((32, 32)), np.float32)
    b = np.asarray(reference.convert("RGB").resize((32, 32)), np.float32)
    return float(np.abs(a - b).mean())


def _is_block(frame: Image.Image) -> bool:
    return _looks_like(frame, BLOCK) < _looks_like(frame, ALLOW)


@pytest.fixture(scope="module")
def star_clip() -> bytes:
    """30 s at 10 fps: harmless, a red star from 12 s to 15 s, harmless again."""
    return clip([Shot(12, ALLOW), Shot(3, BLOCK), Shot(15, ALLOW)], fps=10)


def _codes(data: bytes, settings: VideoSettings = VIDEO) -> str:
    with pytest.raises(ImageError) as caught:
        decode_video(data, settings, min_side=64)
    return caught.value.code


# --- containers, codecs, sampling -----------------------------------------------------------


@pytest.mark.parametrize(
    ("codec", "container", "name"),
    [
        ("libx264", "mp4", "h264"),
        ("libx264", "mov", "h264"),
        ("libx264", "matroska", "h264"),
        ("libx265", "mp4", "hevc"),
        ("libvpx-vp9", "webm", "vp9"),
        ("libsvtav1", "matroska", "av1"),
    ],
)
def test_containers_and_codecs_sample_one_frame_a_second(
    codec: str, container: str, name: str
) -> None:
    data = clip([Shot(2, ALLOW), Shot(2, BLOCK)], fps=10, codec=codec, container=container)
    video = decode_video(data, VIDEO, min_side=64)
    assert video.codec == name and video.fps == 10.0
    assert video.duration_s == pytest.approx(4.0, abs=0.15)
    assert [round(s.timestamp_s) for s in video.samples if s.reason is SampleReason.INTERVAL] == [
        0,
        1,
        2,
        3,
    ]
    interval = [s for s in video.samples if s.reason is SampleReason.INTERVAL]
    assert [_is_block(s.image) for s in interval] == [False, False, True, True]


def test_the_star_is_sampled_where_it_is(star_clip: bytes) -> None:
    video = decode_video(star_clip, VIDEO, min_side=64)
    blocks = [s.timestamp_s for s in video.samples if _is_block(s.image)]
    assert blocks and min(blocks) >= 12.0 and max(blocks) < 15.0
    assert {round(t) for t in blocks} >= {12, 13, 14}
    times = [s.timestamp_s for s in video.samples]
    assert times == sorted(times) and times[-1] >= 29.0
    assert all(s.frame_number == round(s.timestamp_s * 10) for s in video.samples)


def test_samples_are_scaled_down_to_the_short_side_asked() -> None:
    data = clip([Shot(1, ALLOW)], fps=10, size=(320, 240))
    video = decode_video(data, VIDEO, min_side=120)
    assert video.samples[0].image.size == (160, 120) and video.samples[0].image.mode == "RGB"
    assert decode_video(data, VIDEO, min_side=0).samples[0].image.size == (320, 240)


def test_decodes_far_fewer_frames_than_the_video_has(star_clip: bytes) -> None:
    # x264's default GOP (250 frames) spans the clip: packets after a cell's sample are held
    # back; non-reference frames are skipped while catching up.
    assert decode_video(star_clip, VIDEO, min_side=64).frames_decoded < 300 * 0.6
    # a keyframe every second: the keyframes are the samples, and almost nothing else decodes
    keyed = clip([Shot(12, ALLOW), Shot(3, BLOCK), Shot(15, ALLOW)], fps=10, gop=10)
    video = decode_video(keyed, VIDEO, min_side=64)
    interval = [s for s in video.samples if s.reason is SampleReason.INTERVAL]
    assert len(interval) == 30 and all(s.keyframe for s in interval)
    assert video.frames_decoded <= 40


def test_a_long_video_is_covered_within_the_sample_budget() -> None:
    data = clip([Shot(100, ALLOW), Shot(10, BLOCK), Shot(90, ALLOW)], fps=2)
    settings = VideoSettings(max_samples=20, scene_cuts=False)
    video = decode_video(data, settings, min_side=64)
    assert len(video.samples) == 20
    assert video.samples[-1].timestamp_s >= 180.0
    assert any(_is_block(s.image) for s in video.samples)


class _Unseekable:
    """A write-only sink: the Matroska muxer cannot go back to write the duration (as a
    browser's MediaRecorder WebM)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk: bytes) -> int:
        self.data += chunk
        return len(chunk)


def _live_mkv(seconds: int, fps: int = 10) -> bytes:
    sink = _Unseekable()
    with av.open(sink, "w", format="matroska") as output:
        stream = output.add_stream("libx264", rate=fps)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for k in range(seconds * fps):
            image = BLOCK if k // fps == seconds - 3 else ALLOW
            frame = av.VideoFrame.from_image(image.convert("RGB"))
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return bytes(sink.data)


def test_a_video_without_a_duration_is_still_covered_to_its_end() -> None:
    data = _live_mkv(60)
    assert av.open(io.BytesIO(data)).duration is None
    settings = VideoSettings(max_samples=10, scene_cuts=False)
    video = decode_video(data, settings, min_side=64)
    times = [s.timestamp_s for s in video.samples]
    assert len(times) <= 10 and times[0] == 0.0 and times[-1] >= 48.0
    assert max(np.diff(times)) <= 16.0  # evenly spread: the interval doubled to 8 s


def test_scene_cuts_are_sampled_between_regular_samples() -> None:
    data = clip([Shot(2.5, background_image()), Shot(5, BLOCK)], fps=10)
    settings = VideoSettings(sample_fps=0.1)  # one regular sample every 10 s
    video = decode_video(data, settings, min_side=64)
    cuts = [s for s in video.samples if s.reason is SampleReason.SCENE_CUT]
    assert [round(s.timestamp_s, 1) for s in cuts] == [2.5] and _is_block(cuts[0].image)


def _held_still(container: str) -> bytes:
    """A variable frame rate: a harmless frame for 0.1 s, then the star held still for 10 s
    (one frame), then harmless frames (a screen recording does this)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as output:
        stream = output.add_stream("libx264", rate=10)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 10)
        for pts, image in [(0, ALLOW), (1, BLOCK), (100, ALLOW), (101, ALLOW)]:
            frame = av.VideoFrame.from_image(image.convert("RGB"))
            frame.pts = pts
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


@pytest.mark.parametrize("container", ["mp4", "matroska"])
def test_a_frame_held_still_over_later_seconds_is_sampled(container: str) -> None:
    video = decode_video(_held_still(container), VideoSettings(scene_cuts=False), min_side=64)
    found = [(s.timestamp_s, _is_block(s.image)) for s in video.samples]
    assert [(round(t, 1), star) for t, star in found[:2]] == [(0.0, False), (0.1, True)]
    assert len(found) == 3 and 10.0 <= found[2][0] < 11.0 and not found[2][1]


def test_paths_and_file_objects_are_streamed(tmp_path, star_clip: bytes) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "clip.mp4"
    path.write_bytes(star_clip)
    from_path = decode_video(path, VIDEO, min_side=64)
    with path.open("rb") as handle:
        from_file = decode_video(handle, VIDEO, min_side=64)
    assert [s.timestamp_s for s in from_path.samples] == [s.timestamp_s for s in from_file.samples]
    with pytest.raises(ImageError) as caught:
        decode_video(path, VideoSettings(max_bytes=1000), min_side=64)
    assert caught.value.code == "video_too_large"


# --- hostile video --------------------------------------------------------------------------


def test_truncated_files() -> None:
    data = clip([Shot(4, ALLOW), Shot(4, BLOCK)], fps=10)  # index (moov) at the end
    assert _codes(data[: len(data) // 2]) == "video_corrupt"
    fast = clip([Shot(20, ALLOW)], fps=10, faststart=True)  # index first, data cut short
    assert fast.index(b"moov") < fast.index(b"mdat")
    assert _codes(fast[: len(fast) // 2]) == "video_corrupt"


def test_corrupt_packets() -> None:
    data = bytearray(clip([Shot(4, ALLOW), Shot(4, BLOCK)], fps=10))
    start = data.index(b"mdat") + 200
    for i in range(start, start + 600, 3):
        data[i] ^= 0xFF
    assert _codes(bytes(data)) == "video_corrupt"


def test_audio_only() -> None:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as output:
        stream = output.add_stream("aac", rate=44100)
        for k in range(10):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 44100, k * 1024
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    assert _codes(buffer.getvalue()) == "video_no_stream"


def _ten_hours() -> bytes:
    """Two frames ten hours apart: a file of a few KB whose container says 10 h."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as output:
        stream = output.add_stream("libx264", rate=1)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1)
        for pts in (0, 36_000):
            frame = av.VideoFrame.from_image(ALLOW.convert("RGB"))
            frame.pts = pts
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


def test_a_container_claiming_ten_hours() -> None:
    data = _ten_hours()
    assert len(data) < 20_000
    assert _codes(data) == "video_too_long"


def test_a_stream_without_duration_running_past_the_limit() -> None:
    assert _codes(_live_mkv(12), VideoSettings(max_duration_s=5)) == "video_too_long"


def test_dimensions_and_frame_rates_over_the_limits() -> None:
    data = clip([Shot(1, ALLOW)], fps=10)
    assert _codes(data, VideoSettings(max_pixels=64 * 63)) == "video_too_large"
    assert _codes(data, VideoSettings(max_side=32)) == "video_too_large"
    assert _codes(data, VideoSettings(max_fps=5)) == "video_frame_rate"
    absurd = clip([Shot(0.05, ALLOW)], fps=1000)
    assert _codes(absurd) == "video_frame_rate"


def test_a_video_that_would_decode_forever_is_cut_off() -> None:
    data = clip([Shot(4, ALLOW), Shot(4, BLOCK)], fps=10)
    assert _codes(data, VideoSettings(max_frames_decoded=5)) == "video_decode_limit"
    assert _codes(data, VideoSettings(max_decode_s=1e-6)) == "video_decode_limit"


def test_codecs_and_containers_outside_the_allowlists() -> None:
    data = clip([Shot(1, ALLOW)], fps=10, container="matroska")
    assert _codes(data, VideoSettings(codecs=["vp9"])) == "video_codec"
    assert _codes(data, VideoSettings(containers=["mov"])) == "video_corrupt"  # not probed


def test_empty_and_not_a_video() -> None:
    assert _codes(b"") == "video_corrupt"
    assert _codes(b"hello, not a video\n" * 100) == "video_corrupt"
    assert _codes(clip([Shot(1, ALLOW)], fps=10), VideoSettings(max_bytes=100)) == (
        "video_too_large"
    )


# --- through the pipeline's decoder ---------------------------------------------------------


def test_sniffing_names_video_containers() -> None:
    assert sniff_format(clip([Shot(1, ALLOW)], container="mp4")) == "MP4/MOV video"
    assert sniff_format(clip([Shot(1, ALLOW)], container="mov")) == "MP4/MOV video"
    assert sniff_format(clip([Shot(1, ALLOW)], container="matroska")) == "Matroska/WebM video"


def test_the_pipeline_decoder_samples_videos(star_clip: bytes) -> None:
    decoder = media_decoder(Settings())
    frames = decoder.decode(star_clip, min_side=64)
    assert 30 <= len(frames) <= 40 and any(_is_block(f) for f in frames)
    with pytest.raises(ImageDecodeError) as caught:
        decoder.decode(star_clip[: len(star_clip) // 2], min_side=64)
    assert caught.value.code == "video_corrupt"


def test_without_a_video_decoder_a_video_is_an_unsupported_format(star_clip: bytes) -> None:
    with pytest.raises(UnsupportedFormatError, match="MP4/MOV video") as info:
        SafeDecoder(ImageLimits()).decode(star_clip)
    assert info.value.code == "unsupported_format"


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animations_are_sampled_like_video_by_default(fmt: str) -> None:
    """A harmless first frame no longer hides the rest: the pipeline's decoder samples."""
    data = animation([Shot(1, ALLOW), Shot(2, BLOCK), Shot(1, ALLOW)], fmt=fmt)
    frames = SafeDecoder(ImageLimits()).decode(data)
    # (the encoders merge repeated frames: one 2 s frame of the star, sampled once)
    assert [_is_block(f) for f in frames] == [False, True, False]
    # the old behaviour stays available: first frame only
    off = SafeDecoder(ImageLimits(), video=VideoSettings(sample_animations=False))
    assert [_is_block(f) for f in off.decode(data)] == [False]
    assert len(decode_image(data, ImageLimits())) == 1


def test_animation_sampling_follows_the_frame_timing() -> None:
    data = animation([Shot(0.2, ALLOW), Shot(6, BLOCK)], fmt="GIF", frame_ms=200)
    frames = SafeDecoder(ImageLimits(), video=VideoSettings(sample_fps=0.5)).decode(data)
    # (one 6 s frame of the star after a 0.2 s harmless one: sampled, once)
    assert [_is_block(f) for f in frames] == [False, True]


# --- scored like photos ---------------------------------------------------------------------


def test_a_video_is_scored_by_its_sampled_frames(scoring, star_clip: bytes) -> None:  # type: ignore[no-untyped-def]
    moderator = scoring.moderator
    harmless = clip([Shot(6, ALLOW)], fps=10)
    prepared = [moderator.prepare(star_clip), moderator.prepare(harmless)]
    assert prepared[0].frames >= 30 and prepared[1].frames == 6
    verdicts = moderator.moderate(prepared)
    assert [v.decision.value for v in verdicts] == ["block", "allow"]
    assert verdicts[0].category_id == "contraband_symbol"


def test_a_harmless_first_frame_no_longer_hides_an_animation(scoring) -> None:  # type: ignore[no-untyped-def]
    data = animation([Shot(1, ALLOW), Shot(2, BLOCK)], fmt="GIF")
    verdict = scoring.moderator.moderate([scoring.moderator.prepare(data)])[0]
    assert verdict.decision.value == "block"


def test_videos_and_images_have_their_own_byte_caps() -> None:
    from moderation.compose.registries import build_sources
    from moderation.testmodel.samples import encoded

    settings = Settings(images=ImageLimits(max_bytes=2_000), video=VideoSettings(max_bytes=200_000))
    sources = build_sources(settings, None)
    for url in ("https://example.com/a.mp4", "s3://bucket/a.mp4"):  # downloads stop here
        source = sources.source_for(ImageRef(uri=url))
        assert source.max_bytes == 200_000  # type: ignore[attr-defined]
    decoder = media_decoder(settings)
    video = clip([Shot(3, ALLOW)], fps=10)
    assert 2_000 < len(video) < 200_000
    assert len(decoder.decode(video, min_side=64)) == 3
    with pytest.raises(ImageError) as caught:
        decoder.decode(encoded(BLOCK), min_side=64)  # a 6 KB PNG: over the image cap
    assert caught.value.code == "image_too_large"
    with pytest.raises(ImageError) as caught:
        media_decoder(settings.model_copy(update={"video": VideoSettings(max_bytes=1_500)})).decode(
            video
        )
    assert caught.value.code == "video_too_large"


def test_an_animation_too_large_to_walk_is_refused_before_decoding() -> None:
    """Sampling walks every frame: frames x pixels is bounded (a GIF bomb of many frames)."""
    import tests.data.hostile as hostile

    settings = VideoSettings(max_pixels=4096, max_samples=60, max_scene_cuts=10)
    decoder = SafeDecoder(ImageLimits(), video=settings)  # 245,760 pixels to walk, at most
    assert len(decoder.decode(hostile.animated_gif(200, size=16))) >= 2
    with pytest.raises(ImageError) as caught:
        decoder.decode(hostile.animated_gif(1000, size=32))  # 256 distinct frames of 32x32
    assert caught.value.code == "image_too_large" and "frames of 32x32" in str(caught.value)
