"""Signals: the ways an image becomes per-category scores, in the spirit of ThreatExchange's
``SignalType``. One file per signal; a policy category names its signal (``signal:``, default
``prompts``).

A signal (:class:`moderation.ports.Signal`) has a ``name``, may extract a feature from each
decoded image on the decode threads (``features``; e.g. a perceptual hash), and builds a scorer
for the categories that use it (``scorer``): scores in ``[0, 1]`` per category plus the evidence
that explains them. Decisions, verdicts, review items and audit records treat every signal alike.

Built in: :class:`~moderation.signals.prompts.PromptSignal` (CLIP zero-shot prompts),
:class:`~moderation.signals.hash_bank.HashBankSignal` (PDQ hashes matched against banks of
known-bad images), :class:`~moderation.signals.classifier.ClassifierSignal` (an ONNX image
classifier per entry of ``signals.classifiers``, e.g. ``nsfw``) and
:class:`~moderation.signals.text.TextSignal` (text read from the image by OCR, ``signal: text``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from moderation.core.scoring import SignalScorerFactory, Suppressor
from moderation.exceptions import PolicyError
from moderation.ports import Signal
from moderation.signals.classifier import ClassifierSignal
from moderation.signals.hash_bank import HashBankSignal, LoadedBanks
from moderation.signals.hash_bank.allow_lists import AllowListRule, AllowLists
from moderation.signals.prompts import PromptSignal
from moderation.signals.text import TextSignal

__all__ = [
    "AllowListRule",
    "AllowLists",
    "ClassifierSignal",
    "DuplicateSignalError",
    "HashBankSignal",
    "LoadedBanks",
    "PromptSignal",
    "Signals",
    "TextSignal",
    "builtin_signals",
]


class DuplicateSignalError(PolicyError):
    code = "signal_duplicate"


class Signals(Mapping[str, Signal]):
    """The signals registered in a process, by name. Validated once: duplicate names are an
    error."""

    def __init__(self, signals: Iterable[Signal], *, suppressor: Suppressor | None = None) -> None:
        #: Allow-lists that suppress categories (None: none configured).
        self.suppressor = suppressor
        self._by_name: dict[str, Signal] = {}
        for signal in signals:
            if signal.name in self._by_name:
                raise DuplicateSignalError(f"two signals are named {signal.name!r}")
            self._by_name[signal.name] = signal

    def __getitem__(self, name: str) -> Signal:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    @property
    def scorer_factories(self) -> dict[str, SignalScorerFactory]:
        return {name: signal.scorer for name, signal in self._by_name.items()}

    @property
    def costs(self) -> dict[str, float]:
        """Each signal's declared cost per image (the scorer runs the cheapest first); one that
        declares none counts as free (it always runs)."""
        return {name: float(getattr(signal, "cost", 0.0)) for name, signal in self._by_name.items()}

    @property
    def image_signals(self) -> list[Signal]:
        """The signals that read the decoded image themselves (not only the embedding)."""
        return [s for s in self._by_name.values() if s.needs_image]


def builtin_signals(
    banks: LoadedBanks | None = None,
    *,
    classifiers: Iterable[Signal] = (),
    text: Signal | None = None,
    allow_lists: Mapping[str, AllowListRule] | None = None,
) -> Signals:
    """The signals every process has: CLIP prompts and hash banks (matched against ``banks``;
    none loaded: bank categories match nothing), plus the configured ``classifiers``, and the
    ``allow_lists`` (banks of known-benign hashes suppressing categories) over the same banks,
    and the ``text`` signal (OCR) when given."""
    loaded = banks or LoadedBanks()
    return Signals(
        [PromptSignal(), HashBankSignal(loaded), *classifiers, *([text] if text else [])],
        suppressor=AllowLists(loaded, allow_lists) if allow_lists else None,
    )
