"""In-memory twin of :class:`~moderation.ports.ImageClassifierModel`: a numpy rule instead of
an ONNX graph, counting the batches it is asked to classify."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

__all__ = ["MemoryClassifier"]


class MemoryClassifier:
    """Probabilities from ``rule`` (inputs -> (N, L) probabilities); ``batches`` lists the size
    of every batch classified, in order."""

    def __init__(self, rule: Callable[[NDArray[np.float32]], NDArray[np.float32]]) -> None:
        self.rule = rule
        self.batches: list[int] = []
        self._lock = threading.Lock()

    def predict(self, inputs: NDArray[np.float32]) -> NDArray[np.float32]:
        with self._lock:
            self.batches.append(len(inputs))
        return np.asarray(self.rule(inputs), np.float32)
