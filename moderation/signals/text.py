"""The text signal (``signal: text``): text read from the image (OCR), matched against rules.

A category of this signal writes its rules under ``text:`` (:class:`~moderation.core.policy.
TextRules`)::

    - id: scam_text
      signal: text
      text:
        phrases: [send bitcoin, double your money]
        keywords: [giveaway]
        patterns: ['\\+?\\d[\\d ()-]{8,}\\d']          # phone numbers
        prompts: [a cryptocurrency scam offer]
        benign_prompts: [a shop sign, a street name]
      thresholds: {review: 0.5, block: 0.9}

The OCR engine (a :class:`~moderation.ports.TextReader`, RapidOCR in
:mod:`moderation.adapters.rapid_ocr`) runs on the decode threads (:meth:`TextSignal.features`),
on each image and each sampled video frame, and only where a policy in service has a text
category: the worker skips it otherwise. Matching is pure (:mod:`moderation.core.text`); prompt
similarity embeds the read text with the model's text tower, once per batch.

Scores: a phrase, keyword or pattern match scores the mean OCR confidence of the lines it spans;
prompt similarity scores the softmax mass on ``prompts`` against ``benign_prompts`` (as the
prompts signal does for images); the category's score is the best of its rules. The evidence
shows each match: the rule, the text as read, and its boxes (fractions of the frame's width and
height, so the review page can draw them over any rendering of the image).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from moderation.core.policy import TEXT_SIGNAL, TextRules
from moderation.core.scoring import CategorySlot, Evidence, FeatureBatch
from moderation.core.text import (
    TextLine,
    TextRuleTimeout,
    compile_pattern,
    find_pattern,
    find_phrase,
    reading_order,
    tokenize_lines,
)
from moderation.exceptions import ModelUnavailableError
from moderation.ports import TextReader

__all__ = ["TextFeature", "TextScorer", "TextScores", "TextSignal", "TextsEncoder"]

log = logging.getLogger(__name__)

#: Characters of the read text shown in the evidence when nothing matched.
SHOWN_TEXT = 200
#: Characters of a frame's text embedded for prompt similarity (CLIP reads 77 tokens).
EMBEDDED_TEXT = 300


class TextsEncoder(Protocol):
    """The model's text tower: texts to L2-normalized embeddings."""

    def encode_texts(self, texts: Sequence[str]) -> NDArray[np.float32]: ...


@dataclass(frozen=True, slots=True)
class TextFeature:
    """What OCR read in one frame, and the frame's size (boxes are in its pixels)."""

    lines: tuple[TextLine, ...]
    width: int
    height: int


class TextSignal:
    """Text in images: OCR on the decode threads, rules matched on the scoring side.

    Args:
        reader: builds the OCR engine on first use in this process (never when pickled into a
            prepare process: it is rebuilt there, on its first frame).
        text_encoder: the model's text tower, for ``prompts`` rules (None: a policy with text
            prompts fails to score with ``ModelUnavailableError``).
        min_side: decoded frames keep at least this short side, so that small text stays legible.
        regex_timeout_s: the time limit of each pattern on one frame's text.
        max_lines: lines kept per frame (the most confident).
        cost: relative cost per image (cheaper signals are scored first).
    """

    name = TEXT_SIGNAL
    needs_image = True
    #: OCR identifies nothing: it never runs for fingerprints alone.
    identifies = False

    def __init__(
        self,
        *,
        reader: Callable[[], TextReader],
        text_encoder: TextsEncoder | None = None,
        min_side: int = 736,
        regex_timeout_s: float = 0.05,
        max_lines: int = 200,
        cost: float = 50.0,
    ) -> None:
        self.min_side = min_side
        self.regex_timeout_s = regex_timeout_s
        self.max_lines = max_lines
        self.cost = cost
        self.text_encoder = text_encoder
        self._reader_factory = reader
        self._reader: TextReader | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_reader"] = None  # engines and the text tower never travel
        state["text_encoder"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @property
    def reader(self) -> TextReader:
        """The OCR engine, built on first use (one per process)."""
        if self._reader is None:
            self._reader = self._reader_factory()
        return self._reader

    def features(self, image: Any) -> TextFeature:
        lines = reading_order(self.reader.read(image))
        if len(lines) > self.max_lines:
            keep = sorted(range(len(lines)), key=lambda i: -lines[i].confidence)[: self.max_lines]
            lines = tuple(lines[i] for i in sorted(keep))
        width, height = image.size
        return TextFeature(lines=lines, width=int(width), height=int(height))

    def fingerprint(self, feature: Any) -> dict[str, Any]:
        return {}

    def scorer(self, slots: Sequence[CategorySlot]) -> TextScorer:
        return TextScorer(self, slots)


@dataclass(frozen=True, slots=True)
class _Hit:
    rule: str  # phrase | keyword | pattern | prompt | error
    wanted: str  # the rule as written
    text: str  # what was read (the matched lines, or the matched span for a pattern)
    lines: tuple[int, ...]
    score: float
    error: str | None = None


class TextScorer:
    """Each category's rules; reads every row's OCR lines once per batch."""

    def __init__(self, signal: TextSignal, slots: Sequence[CategorySlot]) -> None:
        self.signal = signal
        self.slots = tuple(slots)
        self.rules: list[TextRules] = []
        self.patterns: list[list[Any]] = []
        for slot in slots:
            rules = slot.category.category.text
            if rules is None:
                raise ValueError(f"category {slot.key}: a text category needs text rules")
            self.rules.append(rules)
            self.patterns.append([compile_pattern(p) for p in rules.patterns])
        self.logit_scale = float(slots[0].policy.logit_scale) if slots else 100.0

    def score(self, batch: FeatureBatch) -> TextScores:
        n = len(batch)
        raw = batch.features.get(self.signal.name)
        features: list[TextFeature | None] = [
            raw[i] if raw is not None and isinstance(raw[i], TextFeature) else None
            for i in range(n)
        ]
        scores = np.zeros((n, len(self.slots)), np.float32)
        hits: list[list[list[_Hit]]] = [[[] for _ in self.slots] for _ in range(n)]
        for row, feature in enumerate(features):
            if feature is None or not feature.lines:
                continue
            for col, rules in enumerate(self.rules):
                found = self._match(feature.lines, rules, self.patterns[col], col)
                hits[row][col] = found
        self._prompt_hits(features, hits)
        for row in range(n):
            for col in range(len(self.slots)):
                found = hits[row][col]
                found.sort(key=lambda h: -h.score)
                if found:
                    scores[row, col] = found[0].score
        np.clip(scores, 0.0, 1.0, out=scores)
        return TextScores(self, scores, features, hits)

    def _match(
        self, lines: tuple[TextLine, ...], rules: TextRules, patterns: list[Any], col: int
    ) -> list[_Hit]:
        kept = [k for k, line in enumerate(lines) if line.confidence >= rules.min_confidence]
        if not kept:
            return []
        texts = [lines[k].text for k in kept]
        stream = tokenize_lines(texts)
        out: list[_Hit] = []

        def confidence(at: tuple[int, ...]) -> float:
            return float(np.mean([lines[k].confidence for k in at]))

        for kind, wanted in [
            *(("phrase", p) for p in rules.phrases),
            *(("keyword", k) for k in rules.keywords),
        ]:
            where = find_phrase(stream, wanted)
            if where is not None:
                at = tuple(kept[k] for k in where)
                read = " ".join(lines[k].text for k in at)
                out.append(_Hit(kind, wanted, read, at, confidence(at)))
        for pattern in patterns:
            try:
                found = find_pattern(pattern, texts, timeout_s=self.signal.regex_timeout_s)
            except TextRuleTimeout as exc:
                # Fail towards a person: the category goes to review, and the evidence says why.
                log.warning("category %s: %s", self.slots[col].key, exc)
                review = self.slots[col].category.category.thresholds.review
                out.append(_Hit("error", pattern.pattern, "", tuple(kept), review, error=str(exc)))
                continue
            if found is not None:
                span, where = found
                at = tuple(kept[k] for k in where)
                out.append(_Hit("pattern", pattern.pattern, span, at, confidence(at)))
        return out

    def _prompt_hits(
        self, features: Sequence[TextFeature | None], hits: list[list[list[_Hit]]]
    ) -> None:
        """Prompt similarity of each row's read text, one text-tower call per batch."""
        columns = [c for c, rules in enumerate(self.rules) if rules.prompts]
        if not columns:
            return
        rows: list[int] = []
        texts: list[str] = []
        kept_lines: list[tuple[int, ...]] = []
        for row, feature in enumerate(features):
            if feature is None:
                continue
            floor = min(self.rules[c].min_confidence for c in columns)
            kept = tuple(k for k, line in enumerate(feature.lines) if line.confidence >= floor)
            text = " ".join(feature.lines[k].text for k in kept).strip()[:EMBEDDED_TEXT]
            if text:
                rows.append(row)
                texts.append(text)
                kept_lines.append(kept)
        if not rows:
            return
        encoder = self.signal.text_encoder
        if encoder is None:
            raise ModelUnavailableError(
                "text prompts need the model's text tower, which this process does not have"
            )
        embedded = np.asarray(encoder.encode_texts(texts), np.float32)
        embedded /= np.maximum(np.linalg.norm(embedded, axis=1, keepdims=True), 1e-12)
        for c in columns:
            compiled = self.slots[c].category
            positive, benign = compiled.positive, compiled.benign
            if not len(positive) or positive.shape[1] != embedded.shape[1]:
                continue
            table = np.concatenate([positive, benign]).astype(np.float32)
            sims = embedded @ table.T
            logits = self.logit_scale * sims
            logits -= logits.max(axis=1, keepdims=True)
            probs = np.exp(logits)
            probs /= probs.sum(axis=1, keepdims=True)
            mass = probs[:, : len(positive)].sum(axis=1)
            best = probs[:, : len(positive)].argmax(axis=1)
            for k, row in enumerate(rows):
                hits[row][c].append(
                    _Hit(
                        "prompt",
                        compiled.prompts[int(best[k])],
                        texts[k],
                        kept_lines[k],
                        float(mass[k]),
                    )
                )


class TextScores:
    """Scores plus what matched where (the evidence)."""

    def __init__(
        self,
        scorer: TextScorer,
        scores: NDArray[np.float32],
        features: Sequence[TextFeature | None],
        hits: list[list[list[_Hit]]],
    ) -> None:
        self.scorer = scorer
        self._scores = scores
        self.features = features
        self.hits = hits

    @property
    def scores(self) -> NDArray[np.float32]:
        return self._scores

    def evidence(self, rows: NDArray[np.intp], cols: NDArray[np.intp]) -> list[list[Evidence]]:
        out: list[list[Evidence]] = []
        for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
            feature = self.features[row]
            if feature is None:
                out.append([Evidence(TEXT_SIGNAL, "not read (no image)", 0.0, {})])
                continue
            found = self.hits[row][col]
            if not found:
                read = " / ".join(line.text for line in feature.lines)
                out.append(
                    [
                        Evidence(
                            TEXT_SIGNAL,
                            "no text rule matched",
                            0.0,
                            {"lines_read": len(feature.lines), "text": read[:SHOWN_TEXT]},
                        )
                    ]
                )
                continue
            out.append([_evidence(hit, feature) for hit in found])
        return out


def _evidence(hit: _Hit, feature: TextFeature) -> Evidence:
    w, h = max(feature.width, 1), max(feature.height, 1)
    boxes = [
        [[round(x / w, 4), round(y / h, 4)] for x, y in feature.lines[k].box] for k in hit.lines
    ]
    details: dict[str, Any] = {
        "rule": hit.rule,
        "wanted": hit.wanted,
        "text": hit.text,
        "boxes": boxes,
        "confidence": [feature.lines[k].confidence for k in hit.lines],
    }
    if hit.error is not None:
        details["error"] = "text_regex_timeout"
        details["message"] = hit.error
        return Evidence(TEXT_SIGNAL, f"pattern timed out: {hit.wanted}", hit.score, details)
    return Evidence(TEXT_SIGNAL, hit.text, hit.score, details)
