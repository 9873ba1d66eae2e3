"""Text read from an image, and the rules that match it. Pure: no I/O, no model.

An OCR engine (:class:`moderation.ports.TextReader`) turns a decoded frame into
:class:`TextLine` s: the recognised text, its box (four corner points, clockwise from top-left,
in the frame's pixels) and the recogniser's confidence. A policy's text rules
(:class:`moderation.core.policy.TextRules`) are matched against them here.

**Normalisation.** Phrases and keywords are compared on a *skeleton* of the text, built the same
way for the rule and for what was read::

    NFKD, combining marks dropped      "kïll" -> "kill", "ｋｉｌｌ" -> "kill", "𝐤𝐢𝐥𝐥" -> "kill"
    casefold                           "KILL" -> "kill"
    look-alike letters to Latin        Cyrillic "кіll", Greek "κιλλ"-style homoglyphs -> "kill"
    leetspeak to letters               "k1ll", "k!ll", "|<ill" -> "kill" (see LEET)
    repeated letters collapsed         "kiiiillll" -> "kil"  (the rule's "kill" -> "kil" too)
    split on anything else             "k i l l" -> tokens k | i | l | l; "kill-you" -> kill | you
    a word spelled with dots           "k.i.l.l", "k-i-l-l" -> one token "kil"

A rule matches where its skeleton, spaces removed, equals a run of whole tokens of the text,
spaces removed: ``k i l l`` and ``killyourself`` (OCR often drops spaces) match "kill
yourself", but ``skill yourself`` does not (the run would start inside the token ``skill``).
Lines are read in order and joined, so a phrase broken over two lines matches too, with the
boxes of both lines.

**Regular expressions** run on the recognised text as read (NFKC, lines joined by ``\\n``),
case-insensitively, each under a time limit (the ``regex`` package's ``timeout``): a pattern
that backtracks catastrophically raises :class:`TextRuleTimeout` instead of holding the worker.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import regex

from moderation.core.data import Data
from moderation.exceptions import PolicyError

__all__ = [
    "LEET",
    "LOOKALIKES",
    "Box",
    "TextLine",
    "TextMatch",
    "TextRuleTimeout",
    "compile_pattern",
    "find_pattern",
    "find_phrase",
    "reading_order",
    "skeleton_tokens",
    "tokenize_lines",
]

#: Four corner points (x, y) of a text line, clockwise from the top-left, in frame pixels.
Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]


@dataclass(frozen=True, slots=True)
class TextLine(Data):
    """One line of text an OCR engine recognised in a frame."""

    text: str
    box: Box
    confidence: float


@dataclass(frozen=True, slots=True)
class TextMatch:
    """Where a rule matched: the text as read, the lines it spans and their mean confidence."""

    text: str
    lines: tuple[int, ...]
    confidence: float


class TextRuleTimeout(PolicyError):
    """A text rule's regular expression ran past its time limit (catastrophic backtracking)."""

    code = "text_regex_timeout"


#: Letters that look like Latin ones (Cyrillic, Greek, and a few symbols), mapped to them. NFKD
#: already folds full-width, mathematical and circled letters; these are other scripts.
LOOKALIKES: dict[str, str] = {
    # Cyrillic
    "а": "a", "в": "b", "с": "c", "д": "d", "е": "e", "ё": "e", "һ": "h", "і": "i", "ї": "i",
    "ј": "j", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "ԛ": "q", "ѕ": "s", "т": "t",
    "у": "y", "х": "x", "ԝ": "w", "ь": "b", "ӏ": "l", "п": "n", "г": "r", "з": "3", "ч": "4",
    # Greek
    "α": "a", "β": "b", "γ": "y", "δ": "d", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v",
    "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ς": "s", "μ": "u",
    # Latin and symbols
    "ı": "i", "ł": "l", "ø": "o", "đ": "d", "ħ": "h", "ß": "ss", "æ": "ae", "œ": "oe",
    "ʀ": "r", "ɢ": "g", "ʜ": "h", "ɪ": "i", "ʟ": "l", "ɴ": "n", "ᴏ": "o", "ꜱ": "s", "ᴛ": "t",
}  # fmt: skip

#: Leetspeak: digits and symbols written for letters. ``1``, ``l``, ``|`` and ``!`` all become
#: ``i`` (they stand for either), on both sides of a comparison. A symbol counts as a letter
#: only when a letter or digit follows it (``$end``, ``k!ll``), so ``GIVEAWAY!`` ends a word.
LEET: dict[str, str] = {
    "0": "o", "1": "i", "!": "i", "|": "i", "l": "i", "3": "e", "€": "e", "4": "a", "@": "a",
    "5": "s", "$": "s", "7": "t", "+": "t", "8": "b", "9": "g", "6": "g", "2": "z",
}  # fmt: skip

_LETTERS = str.maketrans({**LOOKALIKES, **{k: v for k, v in LEET.items() if k.isalnum()}})
_SYMBOLS = regex.compile(
    "[" + regex.escape("".join(k for k in LEET if not k.isalnum())) + r"](?=[\p{L}\p{N}])"
)


def reading_order(lines: Sequence[TextLine]) -> tuple[TextLine, ...]:
    """``lines`` top to bottom, left to right, along the text's own direction: a box whose
    centre lies within about half a line height of another's baseline direction is on its row
    (turned text, split by the detector into several boxes, stays in order)."""

    def geometry(line: TextLine) -> tuple[float, float, float, float, float]:
        (x0, y0), (x1, y1), _, (x3, y3) = line.box
        cx = sum(x for x, _ in line.box) / 4
        cy = sum(y for _, y in line.box) / 4
        length = ((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5
        ux, uy = ((x1 - x0) / length, (y1 - y0) / length) if length else (1.0, 0.0)
        height = max(((x3 - x0) ** 2 + (y3 - y0) ** 2) ** 0.5, 1.0)
        return cx, cy, ux, uy, height

    rows: list[tuple[tuple[float, float, float, float, float], list[TextLine]]] = []
    for line in sorted(lines, key=lambda ln: geometry(ln)[1]):
        cx, cy, _, _, height = geometry(line)
        for (rx, ry, ux, uy, rh), members in rows:
            across = abs(-(cx - rx) * uy + (cy - ry) * ux)  # distance from the row's line
            if across < 0.5 * max(rh, height):
                members.append(line)
                break
        else:
            rows.append((geometry(line), [line]))
    out: list[TextLine] = []
    for (rx, ry, ux, uy, _), members in rows:
        out += sorted(
            members, key=lambda ln: (geometry(ln)[0] - rx) * ux + (geometry(ln)[1] - ry) * uy
        )
    return tuple(out)


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    bare = str(_SYMBOLS.sub(lambda m: LEET[m.group()], bare))
    # Look-alikes first (they are lower case), then again after casefold (upper-case forms).
    return bare.translate(_LETTERS).casefold().translate(_LETTERS)


def _collapse(token: str) -> str:
    out: list[str] = []
    for ch in token:
        if not out or out[-1] != ch:
            out.append(ch)
    return "".join(out)


_TOKEN = regex.compile(r"[\p{L}\p{N}]+")


def skeleton_tokens(text: str) -> list[str]:
    """The normalised tokens of ``text`` (see the module docstring). A word spelled out with
    punctuation between its letters (``s.k.i.l.l``, ``U.S.A.``) is one token."""
    tokens: list[str] = []
    for chunk in _fold(text).split():
        pieces = _TOKEN.findall(chunk)
        if len(pieces) > 1 and all(len(piece) == 1 for piece in pieces):
            tokens.append("".join(pieces))
        else:
            tokens.extend(pieces)
    return [_collapse(token) for token in tokens]


@dataclass(frozen=True, slots=True)
class _Stream:
    """Every line's skeleton tokens joined: the compact text, token starts and ends, and the
    line of each character."""

    compact: str
    starts: frozenset[int]
    ends: frozenset[int]
    line_of: tuple[int, ...]
    #: Starts of tokens whose first letter merged into the previous token's last: their line.
    merged: Mapping[int, int]


def tokenize_lines(lines: Sequence[str]) -> _Stream:
    """The skeleton of ``lines`` read in order, for :func:`find_phrase`. Repeated letters are
    collapsed across tokens too (``k.i.l.l`` and ``kill`` both give ``ki``); a token whose first
    letter merged into the previous one starts at that letter."""
    chars: list[str] = []
    starts: set[int] = set()
    ends: set[int] = set()
    line_of: list[int] = []
    merged: dict[int, int] = {}
    for index, line in enumerate(lines):
        for token in skeleton_tokens(line):
            if chars and chars[-1] == token[0]:
                merged.setdefault(len(chars) - 1, index)
                starts.add(len(chars) - 1)
            else:
                starts.add(len(chars))
            for ch in token:
                if not chars or chars[-1] != ch:
                    chars.append(ch)
                    line_of.append(index)
            ends.add(len(chars))
    return _Stream("".join(chars), frozenset(starts), frozenset(ends), tuple(line_of), merged)


def _needle(phrase: str) -> str:
    return tokenize_lines([phrase]).compact


def find_phrase(stream: _Stream, phrase: str) -> tuple[int, ...] | None:
    """The lines where ``phrase`` matches a run of whole tokens of ``stream``; None if none."""
    needle = _needle(phrase)
    if not needle:
        return None
    at = stream.compact.find(needle)
    while at >= 0:
        end = at + len(needle)
        if at in stream.starts and end in stream.ends:
            first = stream.merged.get(at, stream.line_of[at])
            return tuple(sorted({first, *stream.line_of[at + 1 : end]}))
        at = stream.compact.find(needle, at + 1)
    return None


def compile_pattern(pattern: str) -> regex.Pattern[str]:
    """A text rule's regular expression, case-insensitive.

    Raises:
        regex.error: the pattern does not compile.
    """
    return regex.compile(pattern, regex.IGNORECASE | regex.UNICODE)


def find_pattern(
    pattern: regex.Pattern[str], lines: Sequence[str], *, timeout_s: float
) -> tuple[str, tuple[int, ...]] | None:
    """The first match of ``pattern`` in ``lines`` (NFKC, joined by newlines): the matched text
    and the lines it spans; None if none.

    Raises:
        TextRuleTimeout: the search ran past ``timeout_s``.
    """
    text = "\n".join(unicodedata.normalize("NFKC", line) for line in lines)
    try:
        found = pattern.search(text, timeout=timeout_s)
    except TimeoutError as exc:
        raise TextRuleTimeout(
            f"regular expression {pattern.pattern!r} ran past its {timeout_s * 1000:.0f} ms "
            "limit (catastrophic backtracking?)"
        ) from exc
    if found is None:
        return None
    first = text.count("\n", 0, found.start())
    last = text.count("\n", 0, max(found.start(), found.end() - 1))
    return found.group(), tuple(range(first, last + 1))
