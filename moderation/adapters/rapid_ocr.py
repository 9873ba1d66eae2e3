"""OCR with RapidOCR on onnxruntime (:class:`~moderation.ports.TextReader`).

``rapidocr-onnxruntime`` (Apache-2.0) ships PaddleOCR's PP-OCRv4 detection and recognition
models and the v2 angle classifier inside its wheel: nothing is downloaded at run time (its
only URLs are in error messages). The engine is built on first use in each process (a few
hundred milliseconds), with ``threads`` intra-op threads per ONNX session, on the CPU.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from moderation.core.text import Box, TextLine
from moderation.exceptions import ModelUnavailableError

__all__ = ["RapidOcrReader"]


def _box(points: Any) -> Box:
    corners = [(round(float(x)), round(float(y))) for x, y in points]
    if len(corners) != 4:
        raise ValueError(f"a text box has {len(corners)} corners")
    return (corners[0], corners[1], corners[2], corners[3])


class RapidOcrReader:
    """RapidOCR's detector, angle classifier and recogniser, loaded lazily, shared by the
    threads of a process (a lock serialises calls: the engine keeps per-call state).

    Args:
        threads: intra-op threads per ONNX session (workers run one process per core: 1).
        max_side: frames are shrunk so that their long side is at most this first.
        min_score: lines recognised with less confidence are dropped by the engine.
        use_cls: run the 180-degree angle classifier (upside-down text).
    """

    def __init__(
        self,
        *,
        threads: int = 1,
        max_side: int = 1280,
        min_score: float = 0.3,
        use_cls: bool = True,
    ) -> None:
        self.threads = threads
        self.max_side = max_side
        self.min_score = min_score
        self.use_cls = use_cls
        self._lock = threading.Lock()
        self._engine: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_engine"] = None  # sessions never travel to a prepare process
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._engine is not None:
            return self._engine
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:  # also when OpenCV's shared libraries are missing
            raise ModelUnavailableError(f"OCR engine unavailable: {exc}") from exc
        threads = self.threads if self.threads > 0 else -1
        try:
            self._engine = RapidOCR(
                max_side_len=self.max_side,
                text_score=self.min_score,
                use_cls=self.use_cls,
                intra_op_num_threads=threads,
                inter_op_num_threads=1,
            )
        except Exception as exc:  # RapidOCR raises its own untyped errors
            raise ModelUnavailableError(f"OCR engine failed to load: {exc}") from exc
        return self._engine

    def read(self, image: Any) -> tuple[TextLine, ...]:
        """The text lines of a PIL image, in the engine's reading order."""
        rgb = np.asarray(image.convert("RGB"))
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        with self._lock:
            engine = self._load()
            try:
                found, _ = engine(bgr, use_cls=self.use_cls)
            except Exception as exc:  # an engine failure on one frame
                raise ModelUnavailableError(f"OCR engine failed: {exc}") from exc
        return tuple(
            TextLine(text=str(text), box=_box(points), confidence=round(float(score), 4))
            for points, text, score in (found or [])
            if str(text).strip()
        )
