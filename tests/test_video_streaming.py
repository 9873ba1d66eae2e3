"""The decoder streams a video (the mechanism behind bench/video_memory.py's bounded peak
memory): from a file it reads small blocks through PyAV's I/O buffer, never the whole file at
once, and keeps a bounded number of decoded frames however long the video is."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from moderation.adapters import video as video_adapter
from moderation.adapters.video import decode_video
from moderation.settings import VideoSettings
from moderation.testmodel.clips import Shot, allow_image, background_image, block_image, clip


class CountingFile(io.RawIOBase):
    """A read-only file that records the size of every read FFmpeg asks for."""

    def __init__(self, path: Path) -> None:
        self.inner = path.open("rb")
        self.reads: list[int] = []

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.inner.seek(offset, whence)

    def tell(self) -> int:
        return self.inner.tell()

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.reads.append(len(data))
        return data

    def close(self) -> None:
        self.inner.close()
        super().close()


def test_a_video_is_read_in_small_blocks_and_sampled_whole(tmp_path: Path) -> None:
    shots = [Shot(5, background_image()), Shot(5, block_image()), Shot(5, allow_image())] * 4
    path = tmp_path / "long.mp4"
    path.write_bytes(clip(shots, fps=5, size=(160, 120), noise=12.0))
    size = path.stat().st_size
    source = CountingFile(path)
    video = decode_video(source, VideoSettings(), min_side=64)
    source.close()
    assert video.duration_s >= 59.0 and video.samples[-1].timestamp_s >= 58.0
    assert sum(source.reads) >= size * 0.9  # the whole file went through...
    assert max(source.reads) <= 64 * 1024 < size / 4  # ...a small block at a time


def test_decoded_frames_kept_are_bounded_whatever_the_length(monkeypatch: Any) -> None:
    """Only the samples (at the model's size) and a few recent frames stay referenced: the
    decoder's frame cache never grows past ``_RECENT_FRAMES``."""
    seen: list[int] = []
    original = video_adapter._Decoding._frame

    def spy(self: Any, frame: Any, sampler: Any, fps: float, start: float) -> None:
        original(self, frame, sampler, fps, start)
        seen.append(len(self.recent))

    monkeypatch.setattr(video_adapter._Decoding, "_frame", spy)
    data = clip([Shot(20, background_image())], fps=5, size=(64, 48), gop=100, noise=6.0)
    video = decode_video(data, VideoSettings(), min_side=32)
    assert video.frames_decoded > 2 * video_adapter._RECENT_FRAMES
    assert max(seen) <= video_adapter._RECENT_FRAMES
    assert len(video.samples) <= VideoSettings().max_samples


def test_the_pipeline_decoder_reads_a_downloaded_video_from_its_file(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """A large download arrives as a file (MediaFile): the pipeline's decoder hands PyAV the
    path (the file is never read whole), and a photo in a file decodes as before."""
    import hashlib

    import pytest

    from moderation.adapters.images import SafeDecoder
    from moderation.core.payload import MediaFile
    from moderation.exceptions import ImageTooLargeError
    from moderation.settings import ImageLimits
    from tests.pipeline_support import png_bytes

    data = clip([Shot(3, allow_image()), Shot(3, block_image())], fps=5, size=(96, 96))
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    given: list[Any] = []
    original = video_adapter.decode_video

    def spy(source: Any, settings: VideoSettings, *, min_side: int = 448) -> Any:
        given.append(source)
        return original(source, settings, min_side=min_side)

    monkeypatch.setattr(video_adapter, "decode_video", spy)
    decoder = SafeDecoder(
        ImageLimits(max_bytes=1000), video_frames=video_adapter.VideoDecoder(VideoSettings())
    )
    media = MediaFile(path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    decoded = decoder.decode_media(media, min_side=64)
    assert given == [path]  # the path, not the bytes
    assert decoded.timeline is not None and decoded.timeline.duration_s >= 5.5
    photo = png_bytes(block_image())
    photo_path = tmp_path / "photo.png"
    photo_path.write_bytes(photo)
    as_file = MediaFile(path=photo_path, size=len(photo), sha256="0" * 64)
    roomy = SafeDecoder(ImageLimits(), video_frames=video_adapter.VideoDecoder(VideoSettings()))
    assert (
        roomy.decode_media(as_file, min_side=64).frames[0].size
        == roomy.decode_media(photo, min_side=64).frames[0].size
    )
    with pytest.raises(ImageTooLargeError):  # an image past images.max_bytes is never read
        decoder.decode_media(as_file, min_side=64)
