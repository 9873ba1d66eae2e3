"""From image bytes to verdicts: the one scoring path of every entry point.

Two halves, so that the CPU side and the accelerator side can overlap:

* :meth:`Moderator.prepare` (CPU threads): safe decode (at the largest short side the model or
  an image signal needs), the CPU half of the model's preprocessing of each frame (a uint8 crop),
  each image signal's features (e.g. a perceptual hash) and fingerprints, and the content hash.
  When the encoder decodes JPEGs on its device (a GPU) and no signal needs the decoded image,
  only the header is checked here;
* :meth:`Moderator.decide`: given the frames' image embeddings (one batched forward pass, done by
  the caller or the worker's micro-batcher), every signal's scores and the verdicts; an
  animation's verdict is the most severe of its frames'.

The queue worker (:mod:`moderation.pipeline.process`), local scoring
(:mod:`moderation.pipeline.score`) and the policy tools all go through here.
:meth:`Moderator.shadow` scores the same frames against the shadow policy versions: their verdicts
are recorded and measured, never acted on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from moderation.core.decision import FrameHash, Timeline, Verdict, most_severe
from moderation.core.payload import Payload, payload_sha256
from moderation.core.policy import VideoRule
from moderation.core.scoring import FeatureBatch
from moderation.core.shadow import ShadowVerdict, shadow_verdict
from moderation.core.video import video_verdict
from moderation.metrics import metrics
from moderation.pipeline.policies import ActivePolicies, CompiledSet
from moderation.ports import Encoder, ImageDecoder, Signal

__all__ = ["Moderator", "Preparation", "PreparedImage"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """A decoded image ready to score: the encoder input and image-signal features per frame."""

    content_sha256: str
    inputs: tuple[Any, ...]
    features: Mapping[str, tuple[Any, ...]]
    #: Content identifiers from the image signals (the PDQ hash and its quality), first frame.
    fingerprints: Mapping[str, Any] = field(default_factory=dict)
    #: When each frame was shown (a video or an animation); None for a still image.
    timeline: Timeline | None = None
    #: A video's or an animation's fingerprints per sampled frame (its PDQ hash and quality).
    frame_fingerprints: tuple[Mapping[str, Any], ...] = ()
    #: A video's or an animation's sampled frames as small JPEG stills (the reviewer's
    #: filmstrip: exactly the frames that were scored), one per timestamp; empty otherwise.
    stills: tuple[bytes, ...] = ()

    @property
    def frames(self) -> int:
        return len(self.inputs)


@dataclass(frozen=True, slots=True)
class Preparation:
    """Everything preparing one image takes: safe decode at ``min_side``, the encoder's CPU
    preprocessing of each frame (``crop``), each image signal's features and fingerprints, and
    the content hash. Picklable when its parts are (the worker's prepare processes run it, out
    of the worker's GIL). ``still``: makes a video's or an animation's filmstrip still of each
    sampled frame (None: none made)."""

    decoder: ImageDecoder
    crop: Callable[[Any], Any]
    min_side: int
    signals: tuple[Signal, ...]
    still: Callable[[Any], bytes] | None = None

    def __call__(self, data: Payload) -> PreparedImage:
        """Raises: ImageError: corrupt, too large, or a format outside the allowlist."""
        digest = payload_sha256(data)
        media = self.decoder.decode_media(data, min_side=self.min_side)
        frames = media.frames
        inputs = tuple(self.crop(frame) for frame in frames)
        features = {
            signal.name: tuple(signal.features(frame) for frame in frames)
            for signal in self.signals
        }
        fingerprints = {
            key: value
            for signal in self.signals
            if features[signal.name]
            for key, value in signal.fingerprint(features[signal.name][0]).items()
        }
        per_frame: tuple[Mapping[str, Any], ...] = ()
        if media.timeline is not None:
            per_frame = tuple(
                {
                    key: value
                    for signal in self.signals
                    for key, value in signal.fingerprint(features[signal.name][k]).items()
                }
                for k in range(len(frames))
            )
        stills: tuple[bytes, ...] = ()
        if media.timeline is not None and self.still is not None:
            stills = tuple(self.still(frame) for frame in frames)
        return PreparedImage(
            content_sha256=digest,
            inputs=inputs,
            features=features,
            fingerprints=fingerprints,
            timeline=media.timeline,
            frame_fingerprints=per_frame,
            stills=stills,
        )


class Moderator:
    """Prepares images and decides them against the policies in service. Thread-safe."""

    def __init__(
        self,
        *,
        encoder: Encoder,
        decoder: ImageDecoder,
        policies: ActivePolicies,
        fingerprint_all: bool = True,
        still: Callable[[Any], bytes] | None = None,
    ) -> None:
        self.encoder = encoder
        self.decoder = decoder
        self.policies = policies
        #: Makes the reviewer's still of a video's sampled frame (None: no filmstrips).
        self.still = still
        #: Run every image signal on every image (each image gets its PDQ hash even when no
        #: policy has a bank category). False: only the signals the policies in service use.
        self.fingerprint_all = fingerprint_all

    def prepare(self, data: Payload, *, compiled: CompiledSet | None = None) -> PreparedImage:
        """Decode and preprocess untrusted bytes (CPU only), for ``compiled`` (default: the
        policy set in service now; pass the set the image will be decided with).

        Raises:
            ImageError: corrupt, too large, or a format outside the allowlist.
        """
        signals = self._image_signals(compiled)
        if not signals and isinstance(data, bytes):  # the encoder may decode it (a JPEG, GPU)
            encoded = self.encoder.prepare_encoded(data)
            if encoded is not None:
                digest = hashlib.sha256(data).hexdigest()
                return PreparedImage(content_sha256=digest, inputs=(encoded,), features={})
        return self._preparation(signals, self.encoder.prepare)(data)

    def preparation(self, compiled: CompiledSet | None = None) -> Preparation | None:
        """:meth:`prepare` as a picklable :class:`Preparation`, for prepare processes; None when
        it must run here (the encoder's preprocessing cannot travel, or it decodes JPEGs on its
        device and no image signal needs the pixels)."""
        crop = self.encoder.preprocessor()
        signals = self._image_signals(compiled)
        if crop is None or (not signals and self.encoder.device_decode):
            return None
        return self._preparation(signals, crop)

    def _image_signals(self, compiled: CompiledSet | None) -> tuple[Signal, ...]:
        """The image signals to run: those the policies in service use, plus (``fingerprint_all``)
        the ones that give every image a content identifier (PDQ). A classifier runs only
        where a policy uses it: it costs a model run per frame and identifies nothing."""
        signals = self.policies.signals.image_signals
        used = (compiled or self.policies.current).used_signals
        return tuple(
            s
            for s in signals
            if s.name in used or (self.fingerprint_all and not hasattr(s, "labels"))
        )

    def _preparation(self, signals: tuple[Signal, ...], crop: Callable[[Any], Any]) -> Preparation:
        return Preparation(
            decoder=self.decoder,
            crop=crop,
            min_side=max([self.encoder.image_size, *(s.min_side for s in signals)]),
            signals=signals,
            still=self.still,
        )

    def embed(self, inputs: Sequence[Any]) -> NDArray[np.float32]:
        """One forward pass over prepared frames."""
        return self.encoder.encode_prepared(inputs)

    def decide(
        self,
        images: Sequence[PreparedImage],
        embeddings: NDArray[np.float32],
        policy_ids: Iterable[str] | None = None,
        *,
        compiled: CompiledSet | None = None,
    ) -> list[Verdict]:
        """One verdict per image.

        Args:
            images: prepared images.
            embeddings: (total frames, D) embeddings of every frame of ``images``, in order.
            policy_ids: the policies to apply (default: every active one).
            compiled: the policy set to use (default: the one in service now).

        Raises:
            UnknownPolicyError: a named policy is not loaded.
        """
        return [v for v, _ in self.decide_frames(images, embeddings, policy_ids, compiled=compiled)]

    def decide_frames(
        self,
        images: Sequence[PreparedImage],
        embeddings: NDArray[np.float32],
        policy_ids: Iterable[str] | None = None,
        *,
        compiled: CompiledSet | None = None,
        complete: bool = False,
    ) -> list[tuple[Verdict, list[Verdict]]]:
        """:meth:`decide`, each verdict with its frames' own verdicts (a video's sampled frames,
        in time order; a still image's one frame): what per-video evaluation and calibration
        of the video rule need. ``complete``: every signal scores every frame (no signal is
        skipped where the decision is settled: evaluation measures each signal alone).

        Raises:
            UnknownPolicyError: a named policy is not loaded.
        """
        if not images:
            return []
        compiled = compiled or self.policies.current
        per_frame = compiled.verdicts(_batch(images, embeddings), policy_ids, complete=complete)
        rules = {pid: p.policy.video for pid, p in compiled.by_id.items()}
        verdicts = _per_image(images, per_frame, rules)
        out: list[tuple[Verdict, list[Verdict]]] = []
        start = 0
        for image, verdict in zip(images, verdicts, strict=True):
            out.append((verdict, list(per_frame[start : start + image.frames])))
            start += image.frames
        return out

    def shadow(
        self,
        images: Sequence[PreparedImage],
        embeddings: NDArray[np.float32],
        live: Sequence[Verdict],
        policy_ids: Iterable[str] | None = None,
        *,
        compiled: CompiledSet | None = None,
    ) -> list[list[ShadowVerdict]]:
        """Per image, the verdict of every shadow version that applies (see
        :meth:`CompiledSet.shadow_ids_for`) beside ``live``, its live verdict. Never raises: a
        shadow version that fails to score is logged and counted
        (``moderation_errors_total{code="shadow_error"}``), and left out.
        """
        out: list[list[ShadowVerdict]] = [[] for _ in images]
        compiled = compiled or self.policies.current
        if not images or not compiled.shadows:
            return out
        try:
            shadow_ids = compiled.shadow_ids_for(policy_ids)
        except Exception:
            log.exception("shadow policies: cannot resolve the policies of a request")
            return out
        if not shadow_ids:
            return out
        batch = _batch(images, embeddings)
        for policy_id in shadow_ids:
            try:
                rules = {policy_id: compiled.shadows[policy_id].policy.video}
                found = _per_image(images, compiled.shadow_verdicts(batch, policy_id), rules)
                version = compiled.versions.get(policy_id)
                for k, verdict in enumerate(found):
                    out[k].append(shadow_verdict(verdict, live=live[k], live_version=version))
            except Exception:  # a shadow version must never affect the live verdict
                log.exception("shadow policy %s failed to score", policy_id)
                metrics().errors.labels("shadow_error").inc()
        return out

    def moderate(
        self,
        images: Sequence[PreparedImage],
        policy_ids: Iterable[str] | None = None,
        *,
        compiled: CompiledSet | None = None,
    ) -> list[Verdict]:
        """Embed and decide prepared images in one forward pass (no queue)."""
        inputs = [x for image in images for x in image.inputs]
        return self.decide(images, self.embed(inputs), policy_ids, compiled=compiled)

    def moderate_frames(
        self,
        images: Sequence[PreparedImage],
        policy_ids: Iterable[str] | None = None,
        *,
        compiled: CompiledSet | None = None,
        complete: bool = False,
    ) -> list[tuple[Verdict, list[Verdict]]]:
        """:meth:`moderate` with each image's frame verdicts (:meth:`decide_frames`)."""
        inputs = [x for image in images for x in image.inputs]
        return self.decide_frames(
            images, self.embed(inputs), policy_ids, compiled=compiled, complete=complete
        )


def _batch(images: Sequence[PreparedImage], embeddings: NDArray[np.float32]) -> FeatureBatch:
    """The feature batch of every frame of ``images``."""
    names = {name for image in images for name in image.features}
    return FeatureBatch(
        embeddings=embeddings,
        features={name: [f for image in images for f in image.features[name]] for name in names},
        groups=[k for k, image in enumerate(images) for _ in range(image.frames)],
    )


def _per_image(
    images: Sequence[PreparedImage],
    per_frame: Sequence[Verdict],
    rules: Mapping[str, VideoRule | None],
) -> list[Verdict]:
    """Each image's verdict: the most severe of its frames'; a video's or an animation's with
    its segments, under its policies' minimum before blocking (:mod:`moderation.core.video`)."""
    out: list[Verdict] = []
    start = 0
    for image in images:
        frames = per_frame[start : start + image.frames]
        if image.timeline is not None and len(image.timeline.timestamps) == len(frames):
            out.append(_with_hashes(video_verdict(frames, image.timeline, rules), image))
        else:
            out.append(most_severe(frames))
        start += image.frames
    return out


def _with_hashes(verdict: Verdict, image: PreparedImage) -> Verdict:
    """The verdict with each sampled frame's PDQ hash in its findings (vPDQ-style records)."""
    timeline = image.timeline
    if verdict.video is None or timeline is None or not image.frame_fingerprints:
        return verdict
    numbers = timeline.frame_numbers or tuple(range(len(timeline.timestamps)))
    hashes = [
        FrameHash(
            frame_number=number,
            timestamp_s=round(t, 3),
            quality=int(prints["pdq_quality"]),
            pdq=str(prints["pdq"]),
        )
        for number, t, prints in zip(
            numbers, timeline.timestamps, image.frame_fingerprints, strict=True
        )
        if "pdq" in prints and "pdq_quality" in prints
    ]
    return dataclasses.replace(
        verdict, video=dataclasses.replace(verdict.video, frame_hashes=hashes)
    )
