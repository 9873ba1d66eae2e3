"""The registries a process is built from: its signals and its image sources (by scheme).

To add an image source: write ``adapters/<name>_source.py`` and register it in
:func:`build_sources`. To add a signal: write ``signals/<name>.py`` and register it in
:func:`build_signals`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from moderation.adapters.file_source import FileSource
from moderation.adapters.http_source import HttpSource
from moderation.adapters.images import SafeDecoder
from moderation.adapters.onnx_classifier import OnnxClassifier
from moderation.adapters.s3_source import S3Source
from moderation.adapters.support.classifier_input import Preprocessing
from moderation.adapters.support.ssrf import ANY_ADDRESS, check_url
from moderation.adapters.video import VideoDecoder
from moderation.exceptions import UrlRefusedError
from moderation.pipeline.sources import EvidenceSource, ImageSources, InlineSource, SpillSource
from moderation.ports import (
    BlobStore,
    ImageDecoder,
    JobStore,
)
from moderation.settings import Settings, SignalSettings
from moderation.signals import AllowListRule, LoadedBanks, Signals, builtin_signals
from moderation.signals.classifier import ClassifierSignal

__all__ = [
    "build_signals",
    "build_sources",
    "check_callback_url",
    "classifier_signals",
    "image_check",
    "media_decoder",
]

log = logging.getLogger(__name__)


def build_signals(settings: Settings, banks: LoadedBanks | None = None) -> Signals:
    """Every signal this process knows (the policy files may name any of them); hash-bank
    categories match against ``banks`` (none: they match nothing). Each classifier of
    ``signals.classifiers`` is a signal of its name; its model loads on first use."""
    allow = {
        name: AllowListRule(
            suppresses=tuple(rule.suppresses),
            max_distance=rule.max_distance,
            min_quality=rule.min_quality,
        )
        for name, rule in settings.banks.allow_lists.items()
    }
    return builtin_signals(
        banks, classifiers=classifier_signals(settings.signals), allow_lists=allow or None
    )


def classifier_signals(settings: SignalSettings) -> list[ClassifierSignal]:
    """The ONNX classifiers of ``signals.classifiers``, as signals (nothing loaded yet)."""
    out = []
    for name, spec in settings.classifiers.items():
        out.append(
            ClassifierSignal(
                name=name,
                labels=spec.labels,
                preprocessing=Preprocessing(
                    input_size=spec.input_size,
                    resize_to=spec.resize_to,
                    pixel_scale=spec.pixel_scale,
                    mean=spec.mean,
                    std=spec.std,
                    channel_order=spec.channel_order,
                    layout=spec.layout,
                ),
                model=partial(
                    OnnxClassifier,
                    spec.model,
                    output=spec.output,
                    device=settings.onnx_device,
                    threads=settings.onnx_threads,
                ),
                cost=spec.cost,
                source=spec.model,
            )
        )
    return out


def build_sources(
    settings: Settings,
    store: JobStore | None,
    *,
    local_files: bool = False,
    blobs: BlobStore | None = None,
) -> ImageSources:
    """Every image source, by scheme (inline bytes need the job store,
    spilled ones the object store). ``local_files`` builds
    the operator's sources of the CLI's policy tools: ``file://`` (never public) and S3 read
    without a tenant, with the service's identity. Without it (the API, the workers) every S3
    read is a tenant's, inside its ``s3_sources``, and ``file://`` does not exist.

    Downloads (URL, S3) and local files stop at the larger of ``images.max_bytes`` and
    ``video.max_bytes``
    (what a download is cannot be known before its bytes are read); the decoder then holds an
    image to ``images.max_bytes`` and a video to ``video.max_bytes``."""
    fetching = settings.model_copy(
        update={
            "images": settings.images.model_copy(
                update={"max_bytes": max(settings.images.max_bytes, settings.video.max_bytes)}
            )
        }
    )
    sources: list[Any] = [HttpSource(fetching), S3Source(fetching, operator=local_files)]
    if store is not None:
        sources.append(InlineSource(store))
    if blobs is not None:  # large inline images the API spilled to the object store
        sources.append(SpillSource(blobs, memory_bytes=settings.video.stream_above_bytes))
        sources.append(EvidenceSource(blobs))  # review items' scored bytes (review exports)
    if local_files:
        sources.append(FileSource(max_bytes=fetching.images.max_bytes))
    return ImageSources(sources)


def media_decoder(settings: Settings) -> SafeDecoder:
    """The decoder of what is moderated: images, animations sampled like video, and videos
    (MP4/MOV, Matroska/WebM) through PyAV, each within its own limits."""
    return SafeDecoder(
        settings.images, video=settings.video, video_frames=VideoDecoder(settings.video)
    )


def image_check(decoder: ImageDecoder) -> Callable[[bytes], None]:
    """Checks that bytes decode (policy files' exemplar images)."""

    def check(data: bytes) -> None:
        decoder.decode(data)

    return check


def check_callback_url(url: str) -> None:
    """Scheme and syntax of a callback URL (addresses are vetted when it is called).

    Raises:
        UrlRefusedError: not an http(s) URL, or it holds a space or control character (CR, LF,
            NUL: the sender could not send it; percent-encode them).
    """
    if any(ch <= " " or ch == "\x7f" for ch in url):
        raise UrlRefusedError(
            "the URL holds a space or control character (CR, LF, ...); percent-encode it"
        )
    check_url(url, ANY_ADDRESS)
