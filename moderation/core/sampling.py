"""Which frames of a video or an animation to score: the sampling plan. Pure (numpy only).

A video of ``duration`` seconds is cut into equal *cells* of ``interval`` seconds (``1 /
sample_fps`` by default; longer when the video is long, so that at most ``max_samples`` minus the
scene-cut budget cells cover it whole). Each cell gets one sample: the first frame decoded in it.
A decoder that always decodes keyframes (cheap and needed anyway) and decodes other frames only
when a cell would otherwise end without a sample (:meth:`FrameSampler.needs`) thus samples
keyframes where they fall, and decodes little else.

Scene cuts: every decoded frame's *signature* (the mean colour of an 8x8 grid, 0-1) is compared
with the previous decoded frame's; a change of at least ``scene_cut_threshold`` (mean absolute
difference) makes the frame a sample too, up to ``max_scene_cuts`` per video. Encoders put
keyframes at cuts, so most cuts are seen among the keyframes.

The decoder feeds frames in presentation order to :meth:`FrameSampler.offer`, which says whether
(and why) to keep each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "SIGNATURE_GRID",
    "FrameSampler",
    "SampleReason",
    "SamplingPlan",
    "SamplingRules",
    "grid_signature",
    "plan_samples",
    "signature_distance",
]

#: The signature of a frame: mean colour of each cell of this grid (per channel, 0-1).
SIGNATURE_GRID = 8


class SampleReason(str, Enum):
    INTERVAL = "interval"  # the first frame decoded in its cell
    SCENE_CUT = "scene_cut"  # the picture changed at once


@dataclass(frozen=True, slots=True)
class SamplingRules:
    """The sampling part of the video settings, as plain values."""

    sample_fps: float = 1.0
    max_samples: int = 120
    scene_cuts: bool = True
    scene_cut_threshold: float = 0.12
    max_scene_cuts: int = 30


@dataclass(frozen=True, slots=True)
class SamplingPlan:
    """Cells of ``interval_s`` seconds from 0; ``cells`` of them cover the video.

    ``open_ended``: the duration is unknown (a live-recorded WebM has none in its header); the
    sampler then starts at ``interval_s`` and doubles its interval whenever the samples would
    exceed ``cells``, keeping the earliest sample of each merged cell, so that the samples always
    cover the whole video within the budget.
    """

    interval_s: float
    cells: int
    scene_cut_budget: int
    threshold: float
    open_ended: bool = False


def plan_samples(duration_s: float | None, rules: SamplingRules) -> SamplingPlan:
    """The plan for a video of ``duration_s`` seconds (None or 0: unknown, open-ended)."""
    scene_budget = min(rules.max_scene_cuts, rules.max_samples - 1) if rules.scene_cuts else 0
    grid_budget = max(1, rules.max_samples - scene_budget)
    if duration_s is None or duration_s <= 0:
        return SamplingPlan(
            interval_s=1.0 / rules.sample_fps,
            cells=grid_budget,
            scene_cut_budget=scene_budget,
            threshold=rules.scene_cut_threshold,
            open_ended=True,
        )
    interval = max(1.0 / rules.sample_fps, duration_s / grid_budget)
    cells = max(1, math.ceil(duration_s / interval - 1e-9))
    return SamplingPlan(
        interval_s=interval,
        cells=min(cells, grid_budget),
        scene_cut_budget=scene_budget,
        threshold=rules.scene_cut_threshold,
    )


def signature_distance(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    """Mean absolute difference of two signatures (0: same layout, 1: black to white)."""
    return float(np.mean(np.abs(a - b)))


class FrameSampler:
    """Says, frame by frame in presentation order, which frames to keep (one per cell, plus
    scene cuts). Not thread-safe: one per video."""

    def __init__(self, plan: SamplingPlan) -> None:
        self.plan = plan
        self.interval_s = plan.interval_s
        #: cell -> the timestamp of its sample
        self._cells: dict[int, float] = {}
        self._last_signature: NDArray[np.float32] | None = None
        self._cuts = 0
        #: Timestamps of interval samples given up when an open-ended plan coarsened: the
        #: decoder drops them (and clears this list).
        self.evicted: list[float] = []

    def cell(self, t: float) -> int:
        """The cell of presentation time ``t`` (seconds; negative times fall in cell 0)."""
        return max(0, math.floor(t / self.interval_s + 1e-9))

    def _covered(self, t: float, until: float | None) -> range:
        first = self.cell(t)
        last = self.cell(until - 1e-6) if until is not None and until > t else first
        if not self.plan.open_ended:
            last = min(last, self.plan.cells - 1)
        return range(first, max(first, min(last, first + self.plan.cells)) + 1)

    def needs(self, t: float, until: float | None = None) -> bool:
        """Whether a frame shown from ``t`` (until ``until``, when known) must be decoded: a
        cell it is shown in has no sample yet. (A decoder that skips frames while this is
        False still samples every cell: the frames it skips are shown only in cells that
        already have a sample.)"""
        return any(
            (self.plan.open_ended or cell < self.plan.cells) and cell not in self._cells
            for cell in self._covered(t, until)
        )

    def offer(
        self, t: float, signature: NDArray[np.float32] | None, until: float | None = None
    ) -> SampleReason | None:
        """A decoded frame shown from ``t`` seconds (until ``until``, when known) with its
        signature (None: not computed): the reason to keep it, or None to drop it. A frame
        shown over several cells samples each of them that has no sample yet (a long still
        frame after a short harmless one is not skipped)."""
        cut = False
        if signature is not None:
            previous, self._last_signature = self._last_signature, signature
            cut = (
                previous is not None
                and self._cuts < self.plan.scene_cut_budget
                and signature_distance(previous, signature) >= self.plan.threshold
            )
        if self.needs(t, until):
            for cell in self._covered(t, until):
                if (self.plan.open_ended or cell < self.plan.cells) and cell not in self._cells:
                    self._cells[cell] = t
            if len(self._cells) > self.plan.cells:
                self._coarsen()
            if t in self._cells.values():
                return SampleReason.INTERVAL
            self.evicted.remove(t)  # merged away at once: not kept, nothing to drop
        if cut:
            self._cuts += 1
            return SampleReason.SCENE_CUT
        return None

    def _coarsen(self) -> None:
        before = set(self._cells.values())
        while len(self._cells) > self.plan.cells:
            self.interval_s *= 2
            merged: dict[int, float] = {}
            for cell, t in sorted(self._cells.items()):
                merged.setdefault(cell // 2, t)
            self._cells = merged
        self.evicted += sorted(before - set(self._cells.values()))

    @property
    def kept(self) -> int:
        return len(self._cells) + self._cuts


def grid_signature(rgb: NDArray[np.uint8]) -> NDArray[np.float32]:
    """The signature of an (H, W, 3) uint8 frame: mean colour of each cell of an 8x8 grid."""
    height, width = rgb.shape[:2]
    g = SIGNATURE_GRID
    rows = np.linspace(0, height, g + 1).astype(int)
    cols = np.linspace(0, width, g + 1).astype(int)
    if height < g or width < g:
        flat: NDArray[np.float32] = np.broadcast_to(
            rgb.reshape(-1, rgb.shape[2]).mean(axis=0) / 255.0, (g, g, rgb.shape[2])
        ).astype(np.float32)
        return flat
    sums = np.add.reduceat(np.add.reduceat(rgb.astype(np.float32), rows[:-1], axis=0), cols[:-1], 1)
    counts = np.outer(np.diff(rows), np.diff(cols))[..., None]
    means: NDArray[np.float32] = (sums / counts / 255.0).astype(np.float32)
    return means
