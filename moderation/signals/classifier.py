"""The classifier signal: an ONNX image classifier as a signal (``signal: <its name>``).

Each classifier in ``signals.classifiers`` (settings) becomes one signal named after it, e.g.
``nsfw`` for Yahoo's open_nsfw. A policy category of that signal lists the classifier's
``labels`` that count against it; its score is the sum of their probabilities::

    - id: explicit_by_classifier
      signal: nsfw
      labels: [nsfw]
      thresholds: {review: 0.6, block: 0.9}

The preprocessing (resize, center crop, pixel scale, mean/std, channel order, layout) is
declared with the model and runs on the decode threads (:meth:`ClassifierSignal.features`);
the model runs once per batch on the scoring side (:class:`ClassifierScorer`) through an
:class:`~moderation.ports.ImageClassifierModel` (onnxruntime in
:mod:`moderation.adapters.onnx_classifier`). Another classifier is configuration, not code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from moderation.core.scoring import CategorySlot, Evidence, FeatureBatch
from moderation.ports import ImageClassifierModel

__all__ = ["ClassifierScorer", "ClassifierScores", "ClassifierSignal", "Preprocess"]


#: A decoded image to the model's input (one image, no batch axis): the declared resize, crop,
#: scale, mean/std, channel order and layout, on the decode threads (an adapter:
#: :class:`moderation.adapters.support.classifier_input.Preprocessing`).
Preprocess = Callable[[Any], NDArray[np.float32]]


class ClassifierSignal:
    """One ONNX image classifier, registered under ``name``.

    Args:
        name: the signal's name (what categories write in ``signal:``).
        labels: the model's output classes, in output order.
        preprocessing: image to model input.
        model: builds the model on first use in this process (never when pickled into a prepare
            process: preprocessing travels, the model stays).
        cost: relative cost per image (cheaper signals are scored first).
        source: where the model comes from, shown in evidence.
    """

    needs_image = True
    min_side = 0

    def __init__(
        self,
        *,
        name: str,
        labels: Sequence[str],
        preprocessing: Preprocess,
        model: Callable[[], ImageClassifierModel],
        cost: float = 10.0,
        source: str = "",
    ) -> None:
        if len(set(labels)) != len(labels):
            raise ValueError(f"classifier {name!r}: duplicate labels {list(labels)}")
        self.name = name
        self.labels = tuple(labels)
        self.preprocessing = preprocessing
        self.cost = cost
        self.source = source
        self._model_factory = model
        self._model: ImageClassifierModel | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_model"] = None  # a session never travels; prepare processes only preprocess
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @property
    def model(self) -> ImageClassifierModel:
        """The model, loaded on first use (one per process)."""
        if self._model is None:
            self._model = self._model_factory()
        return self._model

    def features(self, image: Any) -> NDArray[np.float32]:
        return self.preprocessing(image)

    def fingerprint(self, feature: Any) -> dict[str, Any]:
        return {}

    def scorer(self, slots: Sequence[CategorySlot]) -> ClassifierScorer:
        return ClassifierScorer(self, slots)


class ClassifierScorer:
    """The label columns of each category; runs the model once per batch.

    Raises:
        ValueError: a category names a label the classifier does not have (policy loading
            refuses it first, with its line).
    """

    def __init__(self, signal: ClassifierSignal, slots: Sequence[CategorySlot]) -> None:
        self.signal = signal
        self.columns: list[tuple[int, ...]] = []
        for slot in slots:
            wanted = slot.category.category.labels or []
            unknown = [label for label in wanted if label not in signal.labels]
            if not wanted or unknown:
                raise ValueError(
                    f"category {slot.key}: labels {wanted} not among {list(signal.labels)}"
                )
            self.columns.append(tuple(signal.labels.index(label) for label in wanted))

    def score(self, batch: FeatureBatch) -> ClassifierScores:
        n = len(batch)
        probabilities = np.zeros((n, len(self.signal.labels)), np.float32)
        raw = batch.features.get(self.signal.name)
        rows = [i for i in range(n) if raw is not None and raw[i] is not None]
        if rows and raw is not None:
            inputs = np.stack([raw[i] for i in rows]).astype(np.float32, copy=False)
            probabilities[rows] = self.signal.model.predict(inputs)
        scores = np.zeros((n, len(self.columns)), np.float32)
        for c, columns in enumerate(self.columns):
            scores[:, c] = probabilities[:, list(columns)].sum(axis=1)
        np.clip(scores, 0.0, 1.0, out=scores)
        return ClassifierScores(self, scores, probabilities, frozenset(rows))


class ClassifierScores:
    """Scores plus every label's probability (the evidence)."""

    def __init__(
        self,
        scorer: ClassifierScorer,
        scores: NDArray[np.float32],
        probabilities: NDArray[np.float32],
        scored: frozenset[int],
    ) -> None:
        self.scorer = scorer
        self._scores = scores
        self.probabilities = probabilities
        self.scored = scored

    @property
    def scores(self) -> NDArray[np.float32]:
        return self._scores

    def evidence(self, rows: NDArray[np.intp], cols: NDArray[np.intp]) -> list[list[Evidence]]:
        signal = self.scorer.signal
        out: list[list[Evidence]] = []
        for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
            if row not in self.scored:
                out.append([Evidence(signal.name, "not classified (no image)", 0.0, {})])
                continue
            probs = {
                label: round(float(p), 6)
                for label, p in zip(signal.labels, self.probabilities[row], strict=True)
            }
            counted = [signal.labels[i] for i in self.scorer.columns[col]]
            out.append(
                [
                    Evidence(
                        signal.name,
                        " + ".join(counted),
                        float(self._scores[row, col]),
                        {"model": signal.source, "labels": counted, "probabilities": probs},
                    )
                ]
            )
        return out
