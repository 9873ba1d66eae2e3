"""What a job's content is, as far as its routing needs: a still or animated ``image``, or a
``video`` (MP4/MOV, Matroska/WebM). Pure: no I/O.

Videos have their own lanes (broker queues, :mod:`moderation.core.fairness`) so that one
video's decode never holds up the photos behind it. The submit use case routes a job by
:func:`media_of` its inline bytes (their container's magic number) or by :func:`media_hint` of
its URL (the path's extension: the only thing known before the download). A hint is only a
hint: a worker that consumes photo lanes hands a download that turns out to be a video over to
the video lanes, and a video worker moderates an image like any worker.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

__all__ = ["IMAGE", "VIDEO", "Media", "is_video_container", "media_hint", "media_of"]

Media = Literal["image", "video"]
IMAGE: Media = "image"
VIDEO: Media = "video"

#: ``ftyp`` brands of still images (HEIF, AVIF) that share the ISO base media file format with
#: MP4/MOV videos.
_STILL_BRANDS = frozenset(
    {b"heic", b"heix", b"hevc", b"heim", b"heis", b"msf1", b"avif", b"avis", b"mif1"}
)
#: Extensions of the video containers the video decoder reads.
_VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".webm", ".mkv"})


def is_video_container(head: bytes) -> bool:
    """Whether ``head`` (a file's first 12 bytes or more) starts an MP4/MOV (an ``ftyp`` box of a
    brand that is not a still image, or a ``moov`` box) or a Matroska/WebM (EBML) file."""
    box = head[4:8]
    if box == b"ftyp":
        return head[8:12] not in _STILL_BRANDS
    return box == b"moov" or head[:4] == b"\x1a\x45\xdf\xa3"


def media_of(data: bytes) -> Media:
    """``video`` for the bytes of a video container, else ``image``."""
    return VIDEO if is_video_container(data[:12]) else IMAGE


def media_hint(uri: str) -> Media:
    """What a URL's path names by its extension (``video`` for .mp4, .m4v, .mov, .webm,
    .mkv; else ``image``); an S3 URI's key counts as its path."""
    path = urlsplit(uri).path.lower()
    dot = path.rfind(".")
    return VIDEO if dot > path.rfind("/") and path[dot:] in _VIDEO_EXTENSIONS else IMAGE
