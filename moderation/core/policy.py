"""Policy schema: what trust-and-safety authors write in YAML.

Pure: pydantic models and validation only. Reading files (with line numbers for errors) lives in
:mod:`moderation.adapters.policy_files`.

Each category names the *signal* that scores it (``signal:``, default ``prompts``: CLIP zero-shot
prompts, see :mod:`moderation.signals.prompts`). The prompt fields (``prompts``,
``benign_prompts``, ``templates``, ``exemplars``) configure the prompts signal and are refused on
categories of another signal; every other signal brings its own field: a hash-bank category
(``signal: hash_bank``) names its bank, ``bank: {name, max_distance, min_quality}``; a category of
a classifier signal (``signals.classifiers`` in the settings, e.g. ``nsfw``) lists the labels that
count against it, ``labels: [nsfw]``.

**Combined categories** (``signal: combine``) decide from other categories of the same policy,
each scored by its own signal against its own thresholds: ``combine: {of: [by_prompt,
by_classifier], block: all, review: any, disagree_review: 0.3}`` blocks when *all* members reach
their block threshold, sends to review when *any* reaches its review threshold or when the
members' scores differ by more than ``disagree_review``. Members are inputs only: they never
decide on their own. See :class:`Combine`.

A policy file is either **live** (``mode: live``, the default: its verdicts are acted on) or a
**shadow** version (``mode: shadow``: evaluated on live traffic, recorded and measured, never
acted on; ``moderation policy promote`` makes it live). The mode is deployment state, not policy
content: it is left out of the policy hash, so a promoted version keeps the hash it was measured
under.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Iterator, Mapping
from enum import Enum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from moderation.core.strikes import StrikeRules
from moderation.core.text import TextRuleTimeout, compile_pattern, find_pattern, skeleton_tokens
from moderation.exceptions import (
    DuplicatePolicyError,
    PolicyVersionConflict,
    UnknownPolicyError,
)

__all__ = [
    "COMBINE_SIGNAL",
    "DEFAULT_EXEMPLAR_RADIUS",
    "DEFAULT_SIGNAL",
    "DEFAULT_TEMPLATES",
    "HASH_BANK_SIGNAL",
    "TEXT_SIGNAL",
    "Action",
    "Actions",
    "BandAction",
    "BankRef",
    "Category",
    "Combine",
    "ExemplarImage",
    "Exemplars",
    "Policy",
    "PolicyDefaults",
    "PolicyMode",
    "PolicySet",
    "Quorum",
    "Severity",
    "TextRules",
    "Thresholds",
    "VpdqShares",
    "policy_hash",
]

#: Default prompt-template ensemble (CLIP paper, section 3.1.4: ensembling over templates).
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of {}",
    "an image containing {}",
    "a picture of {}",
    "a close-up photo of {}",
    "{}",
)

#: The signal of a category that names none: CLIP zero-shot prompts.
DEFAULT_SIGNAL = "prompts"
#: The signal of categories backed by a bank of known-bad PDQ hashes.
HASH_BANK_SIGNAL = "hash_bank"

#: The signal of categories matched against text read from the image (OCR, :class:`TextRules`).
TEXT_SIGNAL = "text"

#: The pseudo-signal of a category decided by other categories' signals (:class:`Combine`).
COMBINE_SIGNAL = "combine"
#: The thresholds a combined category carries: never compared with a score (its band comes from
#: its members' bands), kept so every category has the same shape.
COMBINE_THRESHOLDS = {"review": 0.5, "block": 1.0}

#: Cosine distance within which an exemplar image decides (see :mod:`moderation.signals.prompts`).
DEFAULT_EXEMPLAR_RADIUS = 0.05

Identifier = Annotated[
    str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,63}$", strip_whitespace=True)
]
Prompt = Annotated[str, StringConstraints(min_length=1, max_length=300, strip_whitespace=True)]
ReasonCode = Annotated[
    str, StringConstraints(pattern=r"^[A-Z][A-Z0-9_.-]{1,63}$", strip_whitespace=True)
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Severity(str, Enum):
    """How harmful a category is. Orders verdicts and review priority."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.LOW: 1, Severity.MEDIUM: 2, Severity.HIGH: 3, Severity.CRITICAL: 4}


class Action(str, Enum):
    """What the platform does with the content in a band."""

    NONE = "none"
    HUMAN_REVIEW = "human_review"
    REMOVE = "remove"
    BLUR = "blur"
    AGE_RESTRICT = "age_restrict"
    ESCALATE = "escalate"


class BandAction(_Strict):
    action: Action
    reason_code: ReasonCode | None = None


class Actions(_Strict):
    """Action and reason code for each band of a category."""

    allow: BandAction = BandAction(action=Action.NONE)
    review: BandAction = BandAction(action=Action.HUMAN_REVIEW)
    block: BandAction = BandAction(action=Action.REMOVE)


class Thresholds(_Strict):
    """Two cut points on the score: ``[0, review)`` allow, ``[review, block)`` review, ``>= block``
    block."""

    review: float = Field(ge=0.0, le=1.0, description="Scores at or above this go to human review.")
    block: float = Field(ge=0.0, le=1.0, description="Scores at or above this are blocked.")

    @field_validator("block")
    @classmethod
    def _block_above_review(cls, value: float, info: Any) -> float:
        review = info.data.get("review")
        if review is not None and value <= review:
            raise ValueError(f"must be greater than review ({review})")
        return value


class VpdqShares(_Strict):
    """How much of a video must match a banked video (percent; ThreatExchange's ``VPDQSignal``
    defaults: 80 % of the upload's frames, any share of the banked video's)."""

    query_share: float = Field(
        default=80.0,
        ge=0,
        le=100,
        description="Percent of the upload's frames that must match frames of the banked video.",
    )
    indexed_share: float = Field(
        default=0.0,
        ge=0,
        le=100,
        description=(
            "Percent of the banked video's frames that the upload must contain (raise it and"
            " lower query_share to find a banked clip inside a longer upload)."
        ),
    )


class BankRef(_Strict):
    """The bank behind a ``hash_bank`` category and how close a match must be."""

    name: Annotated[
        str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", strip_whitespace=True)
    ] = Field(description="The bank's name (`moderation bank list`).")
    max_distance: int = Field(
        default=31,
        ge=0,
        le=64,
        description="Largest Hamming distance (bits of 256) that matches; PDQ's usual is 31.",
    )
    min_quality: int = Field(
        default=50,
        ge=0,
        le=100,
        description="Image hashes of lower PDQ quality (flat, featureless images) never match.",
    )
    vpdq: VpdqShares | None = Field(
        default=None,
        description=(
            "Match whole videos against a video bank with ThreatExchange's vPDQ rule: the"
            " share of the upload's frames and of a banked video's frames that must match"
            " (frames within max_distance bits, quality at least min_quality). Absent: each"
            " frame is matched on its own, as a photo."
        ),
    )


class Quorum(str, Enum):
    """How many members of a combined category must reach a band."""

    ALL = "all"
    ANY = "any"


class Combine(_Strict):
    """How a combined category (``signal: combine``) decides from its member categories.

    Each member is a category of the same policy with its own signal and thresholds; its band
    (allow / review / block) is computed as usual, then::

        block   when `block` (all | any) of the members are in their block band
        review  when `review` (all | any) of the members are at least in their review band,
                or when max(member score) - min(member score) > disagree_review
        allow   otherwise

    Members are inputs only: their own bands are not acted on (the combined category decides).
    """

    of: list[Identifier] = Field(
        min_length=2, description="The member categories (ids in this policy), two or more."
    )
    block: Quorum = Field(
        default=Quorum.ALL, description="all: every member must reach block; any: one suffices."
    )
    review: Quorum = Field(
        default=Quorum.ANY,
        description="all: every member must reach review; any: one suffices.",
    )
    disagree_review: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="Review when the members' scores differ by more than this (absent: never).",
    )

    @field_validator("of")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a member is listed twice")
        return value


def _check_templates(templates: list[str]) -> list[str]:
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"template {template!r} must contain exactly one '{{}}'")
    if len(set(templates)) != len(templates):
        raise ValueError("templates must be unique")
    return templates


def _check_unique(prompts: list[str]) -> list[str]:
    seen: set[str] = set()
    for prompt in prompts:
        key = prompt.casefold()
        if key in seen:
            raise ValueError(f"prompt {prompt!r} is listed twice")
        seen.add(key)
    return prompts


#: How long a text rule's regular expression may run on one probe string when the policy is
#: loaded (:meth:`TextRules._patterns_compile_and_terminate`).
PATTERN_PROBE_TIMEOUT_S = 0.1

Phrase = Annotated[str, StringConstraints(min_length=1, max_length=300, strip_whitespace=True)]


def _pattern_probes(pattern: str) -> list[str]:
    """Strings that make a backtracking pattern blow up: long runs of what it may match (its
    own letters and digits, and the usual classes), then a character that fails the match."""
    seeds = ["a", "1", " ", "a ", "ab", "a1", ".", "-", "_", "x@"]
    seeds += sorted({ch for ch in pattern if ch.isalnum()})[:8]
    return [seed * (2000 // len(seed)) + "!\n" for seed in seeds]


def _check_pattern(pattern: str) -> str:
    """A text rule's regular expression compiles, does not match empty text, and finishes on
    the probes within :data:`PATTERN_PROBE_TIMEOUT_S`."""
    try:
        compiled = compile_pattern(pattern)
    except Exception as exc:  # regex.error: the message says where
        raise ValueError(f"pattern {pattern!r} does not compile: {exc}") from exc
    if compiled.search(""):
        raise ValueError(f"pattern {pattern!r} matches empty text (it would match all)")
    for probe in _pattern_probes(pattern):
        try:
            find_pattern(compiled, [probe], timeout_s=PATTERN_PROBE_TIMEOUT_S)
        except TextRuleTimeout as exc:
            raise ValueError(
                f"pattern {pattern!r} ran past {PATTERN_PROBE_TIMEOUT_S * 1000:.0f} ms on a "
                f"probe of {len(probe)} characters: it backtracks catastrophically (nested "
                "quantifiers such as (a+)+); rewrite it"
            ) from exc
    return pattern


TextPattern = Annotated[str, Field(min_length=1, max_length=500), AfterValidator(_check_pattern)]


class TextRules(_Strict):
    """What a text category (``signal: text``) looks for in the text read from an image (OCR).

    ``phrases`` and ``keywords`` are compared after normalisation (case, diacritics, look-alike
    letters, leetspeak, repeated letters, spacing and punctuation: see
    :mod:`moderation.core.text`) against whole words; ``patterns`` are regular expressions on the
    text as read (case-insensitive, each under a time limit); ``prompts`` score the read text's
    similarity to these descriptions through the model's text tower, against ``benign_prompts``.
    The category's score is the best of them: a phrase, keyword or pattern match scores the OCR
    confidence of the lines it spans; prompt similarity scores like the prompts signal (the
    softmax mass on ``prompts`` against ``benign_prompts``).
    """

    phrases: list[Phrase] = Field(
        default_factory=list,
        description="Phrases to find (normalised; spacing and OCR-dropped spaces tolerated).",
    )
    keywords: list[Phrase] = Field(
        default_factory=list,
        description="Single words to find as whole words (normalised like phrases).",
    )
    patterns: list[TextPattern] = Field(
        default_factory=list,
        description="Regular expressions on the text as read (case-insensitive, time-limited).",
    )
    prompts: list[Prompt] = Field(
        default_factory=list,
        description="Descriptions the read text is compared with (the model's text tower).",
    )
    benign_prompts: list[Prompt] = Field(
        default_factory=list,
        description="Contrast descriptions of allowed text (needed with prompts).",
    )
    min_confidence: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="OCR lines recognised with less confidence than this are ignored.",
    )

    _unique_prompts = field_validator("prompts", "benign_prompts")(_check_unique)

    @field_validator("phrases", "keywords")
    @classmethod
    def _phrases_have_letters(cls, value: list[str], info: Any) -> list[str]:
        seen: set[str] = set()
        for item in value:
            tokens = skeleton_tokens(item)
            if not tokens:
                raise ValueError(f"{item!r} has no letters or digits to match")
            if info.field_name == "keywords" and len(tokens) > 1:
                raise ValueError(f"keyword {item!r} is several words: list it under phrases")
            key = "".join(tokens)
            if key in seen:
                raise ValueError(f"{item!r} is listed twice (after normalisation)")
            seen.add(key)
        return value

    @model_validator(mode="after")
    def _something_to_find(self) -> TextRules:
        if not (self.phrases or self.keywords or self.patterns or self.prompts):
            raise ValueError("give phrases, keywords, patterns or prompts")
        if self.prompts and not self.benign_prompts:
            raise ValueError("prompts need benign_prompts to be scored against")
        if self.benign_prompts and not self.prompts:
            raise ValueError("benign_prompts without prompts score nothing")
        positive = {p.casefold() for p in self.prompts}
        for prompt in self.benign_prompts:
            if prompt.casefold() in positive:
                raise ValueError(f"prompt {prompt!r} is both positive and benign")
        return self


class ExemplarImage(_Strict):
    """One example image: its path, relative to the policy file, and the sha256 of its bytes.

    Authors write just the path; the policy loader reads the file and fills in ``sha256`` (an
    author may pin it: the loader then checks it). The hash makes the image's content part of the
    policy hash, so replacing the file recompiles the policy.
    """

    path: str = Field(min_length=1, max_length=500)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="before")
    @classmethod
    def _from_path(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value


#: In a policy file an exemplar is written as its path (the pinned ``{path, sha256}`` form is
#: accepted too); the JSON Schema for editors shows the plain form.
ExemplarEntry = Annotated[
    ExemplarImage,
    WithJsonSchema({"type": "string", "description": "Image path, relative to the policy file."}),
]


class Exemplars(_Strict):
    """Example images of a prompts category: known violating ones and known benign look-alikes.

    Their image embeddings join the category's prompt embeddings in the softmax (see
    :mod:`moderation.signals.prompts`): an image within ``radius`` (cosine distance) of an
    exemplar is decided by it, so a false positive is fixed by adding it under ``benign``.
    """

    positive: list[ExemplarEntry] = Field(
        default_factory=list, description="Images that violate this category."
    )
    benign: list[ExemplarEntry] = Field(
        default_factory=list, description="Allowed look-alikes (e.g. known false positives)."
    )
    radius: float = Field(
        default=DEFAULT_EXEMPLAR_RADIUS,
        gt=0.0,
        le=1.0,
        description="Cosine distance within which an exemplar decides (model dependent).",
    )

    @field_validator("benign")
    @classmethod
    def _not_both(cls, value: list[ExemplarImage], info: Any) -> list[ExemplarImage]:
        positive = {e.path for e in info.data.get("positive") or []}
        for item in value:
            if item.path in positive:
                raise ValueError(f"exemplar {item.path!r} is both positive and benign")
        return value

    @property
    def all(self) -> list[ExemplarImage]:
        return [*self.positive, *self.benign]


def _category_schema(schema: dict[str, Any]) -> None:
    """The JSON Schema of a category: ``thresholds`` is required except on a combine category,
    which must not have any (its members' thresholds decide)."""
    required = [name for name in schema.get("required", []) if name != "thresholds"]
    schema["required"] = required
    schema["if"] = {
        "properties": {"signal": {"const": COMBINE_SIGNAL}},
        "required": ["signal"],
    }
    schema["then"] = {"required": ["combine"], "not": {"required": ["thresholds"]}}
    schema["else"] = {"required": ["thresholds"]}


class Category(_Strict):
    """One kind of harm a policy detects."""

    model_config = ConfigDict(json_schema_extra=_category_schema)

    id: Identifier
    description: str = Field(min_length=1)
    severity: Severity
    signal: Identifier = Field(
        default=DEFAULT_SIGNAL,
        description="What scores this category: 'prompts' (CLIP zero-shot, the default) or "
        "another registered signal.",
    )
    prompts: list[Prompt] = Field(
        default_factory=list,
        validate_default=True,
        description="Positive prompts: what to detect (signal: prompts).",
    )
    benign_prompts: list[Prompt] = Field(
        default_factory=list,
        description="Contrast prompts: look-alikes that are allowed. Scores are relative to these.",
    )
    templates: list[str] | None = Field(
        default=None, min_length=1, description="Overrides defaults.templates for this category."
    )
    exemplars: Exemplars | None = Field(
        default=None,
        description="Example images (paths relative to the policy file) that join the prompts "
        "in scoring (signal: prompts).",
    )
    bank: BankRef | None = Field(
        default=None,
        validate_default=True,
        description="The bank of known-bad hashes behind this category (signal: hash_bank).",
    )
    labels: list[Annotated[str, Field(min_length=1, max_length=100)]] | None = Field(
        default=None,
        min_length=1,
        description="For a classifier signal (signals.classifiers): the classifier's labels "
        "whose probabilities, summed, are this category's score, e.g. [nsfw].",
    )
    text: TextRules | None = Field(
        default=None,
        validate_default=True,
        description="For signal: text: phrases, keywords, patterns and prompts to find in the "
        "text read from the image (OCR).",
    )
    combine: Combine | None = Field(
        default=None,
        validate_default=True,
        description="For signal: combine: decide from other categories' signals "
        "({of: [a, b], block: all, review: any, disagree_review: 0.3}).",
    )
    thresholds: Thresholds
    actions: Actions = Actions()
    dsa_category: str | None = Field(
        default=None,
        description="EU DSA statement-of-reasons category, e.g. STATEMENT_CATEGORY_VIOLENCE.",
    )

    _unique_prompts = field_validator("prompts", "benign_prompts")(_check_unique)

    @field_validator("prompts", "benign_prompts", "templates", "exemplars")
    @classmethod
    def _prompt_fields_for_prompt_signal(cls, value: Any, info: Any) -> Any:
        signal = info.data.get("signal", DEFAULT_SIGNAL)
        if signal == DEFAULT_SIGNAL:
            if info.field_name == "prompts" and not value:
                raise ValueError("a prompts category needs at least one positive prompt")
        elif value:
            raise ValueError(
                f"only for signal {DEFAULT_SIGNAL!r} (this category's signal is {signal!r})"
            )
        return value

    @field_validator("bank")
    @classmethod
    def _bank_for_hash_bank_signal(cls, value: BankRef | None, info: Any) -> BankRef | None:
        signal = info.data.get("signal", DEFAULT_SIGNAL)
        if signal == HASH_BANK_SIGNAL and value is None:
            raise ValueError("a hash_bank category needs a bank: {name: ..., max_distance: 31}")
        if signal != HASH_BANK_SIGNAL and value is not None:
            raise ValueError(
                f"only for signal {HASH_BANK_SIGNAL!r} (this category's signal is {signal!r})"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _combined_thresholds(cls, value: Any) -> Any:
        # A combine category writes no thresholds: it carries the placeholder.
        if (
            isinstance(value, dict)
            and value.get("signal") == COMBINE_SIGNAL
            and "thresholds" not in value
        ):
            value = {**value, "thresholds": COMBINE_THRESHOLDS}
        return value

    @field_validator("thresholds", mode="before")
    @classmethod
    def _no_thresholds_on_combine(cls, value: Any, info: Any) -> Any:
        # A dumped policy carries the placeholder back: accept it, refuse any other (at the
        # thresholds' own line).
        if info.data.get("signal") == COMBINE_SIGNAL and value != COMBINE_THRESHOLDS:
            raise ValueError(
                "a combine category takes no thresholds: its members' thresholds decide "
                "(`moderation calibrate` tunes them together)"
            )
        return value

    @field_validator("combine")
    @classmethod
    def _combine_for_combine_signal(cls, value: Combine | None, info: Any) -> Combine | None:
        signal = info.data.get("signal", DEFAULT_SIGNAL)
        if signal == COMBINE_SIGNAL and value is None:
            raise ValueError("a combine category needs combine: {of: [category, category], ...}")
        if signal != COMBINE_SIGNAL and value is not None:
            raise ValueError(
                f"only for signal {COMBINE_SIGNAL!r} (this category's signal is {signal!r})"
            )
        return value

    @field_validator("text")
    @classmethod
    def _text_for_text_signal(cls, value: TextRules | None, info: Any) -> TextRules | None:
        signal = info.data.get("signal", DEFAULT_SIGNAL)
        if signal == TEXT_SIGNAL and value is None:
            raise ValueError("a text category needs text: {phrases: [...], patterns: [...]}")
        if signal != TEXT_SIGNAL and value is not None:
            raise ValueError(
                f"only for signal {TEXT_SIGNAL!r} (this category's signal is {signal!r})"
            )
        return value

    @field_validator("labels")
    @classmethod
    def _labels_for_classifier_signal(cls, value: list[str] | None, info: Any) -> Any:
        signal = info.data.get("signal", DEFAULT_SIGNAL)
        if value is not None and signal in (
            DEFAULT_SIGNAL,
            HASH_BANK_SIGNAL,
            COMBINE_SIGNAL,
            TEXT_SIGNAL,
        ):
            raise ValueError(f"only for a classifier signal (this category's signal is {signal!r})")
        if value is not None and len(set(value)) != len(value):
            raise ValueError("duplicate labels")
        return value

    @field_validator("templates")
    @classmethod
    def _templates(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _check_templates(value)

    @field_validator("benign_prompts")
    @classmethod
    def _benign_not_positive(cls, value: list[str], info: Any) -> list[str]:
        positives = {p.casefold() for p in info.data.get("prompts") or []}
        for prompt in value:
            if prompt.casefold() in positives:
                raise ValueError(f"prompt {prompt!r} is both positive and benign")
        return value


class VideoRule(_Strict):
    """What a video needs before this policy blocks it (see docs/video.md): below it, a
    category that reached ``block`` goes to human review instead, so that one odd frame does
    not decide. Each sampled frame counts for the time until the next sample."""

    min_block_frames: int = Field(
        default=1,
        ge=1,
        le=10_000,
        description="Sampled frames in the block band a video needs before it is blocked.",
    )
    min_block_seconds: float = Field(
        default=0.0,
        ge=0.0,
        le=86_400.0,
        description="Seconds of the video in the block band it needs before it is blocked.",
    )


class PolicyMode(str, Enum):
    """Whether a policy file's verdicts are acted on."""

    LIVE = "live"
    SHADOW = "shadow"


class PolicyDefaults(_Strict):
    templates: list[str] = Field(default_factory=lambda: list(DEFAULT_TEMPLATES), min_length=1)
    benign_prompts: list[Prompt] = Field(
        default_factory=list,
        description="Contrast prompts shared by every category (everyday, harmless content).",
    )

    _templates = field_validator("templates")(_check_templates)
    _unique = field_validator("benign_prompts")(_check_unique)


class Policy(_Strict):
    """A versioned moderation policy: a set of categories with prompts, thresholds and actions."""

    id: Identifier
    version: int = Field(ge=1)
    description: str = Field(min_length=1)
    active: bool = True
    mode: PolicyMode = Field(
        default=PolicyMode.LIVE,
        description="live: acted on. shadow: evaluated on live traffic, recorded and measured, "
        "never acted on (`moderation policy promote` makes it live). Not part of the hash.",
    )
    owner: str | None = None
    defaults: PolicyDefaults = PolicyDefaults()
    categories: list[Category] = Field(min_length=1)
    video: VideoRule | None = Field(
        default=None,
        description="Videos and animations: the minimum in the block band before a video is "
        "blocked (min_block_frames, min_block_seconds).",
    )
    strikes: StrikeRules | None = Field(
        default=None,
        description="Uploader strikes: points per severity, decay_days, and thresholds mapping "
        "strike points in force to warn / restrict / suspend (moderation.core.strikes).",
    )

    def category(self, category_id: str) -> Category:
        for category in self.categories:
            if category.id == category_id:
                return category
        raise KeyError(category_id)

    def templates_for(self, category: Category) -> list[str]:
        return category.templates if category.templates is not None else self.defaults.templates

    def benign_for(self, category: Category) -> list[str]:
        """Contrast prompts of a prompts category: its own, then the policy defaults
        (deduplicated). Empty for a category of another signal."""
        if category.signal != DEFAULT_SIGNAL:
            return []
        out: list[str] = []
        seen: set[str] = set()
        positives = {p.casefold() for p in category.prompts}
        for prompt in [*category.benign_prompts, *self.defaults.benign_prompts]:
            key = prompt.casefold()
            if key not in seen and key not in positives:
                seen.add(key)
                out.append(prompt)
        return out

    def semantic_problems(
        self, signals: Collection[str] | None = None
    ) -> list[tuple[tuple[str | int, ...], str]]:
        """Cross-field problems pydantic cannot see, as (path, message).

        Args:
            signals: the names of the registered signals; None skips that check.
        """
        problems: list[tuple[tuple[str | int, ...], str]] = []
        seen: dict[str, int] = {}
        problems += self._combine_problems()
        for index, category in enumerate(self.categories):
            if (
                signals is not None
                and category.signal not in signals
                and category.signal != COMBINE_SIGNAL
            ):
                known = ", ".join(sorted(signals))
                problems.append(
                    (
                        ("categories", index, "signal"),
                        f"unknown signal {category.signal!r}; known: {known}",
                    )
                )
            labels = _classifier_labels(signals, category.signal)
            if labels is not None:
                problems += _label_problems(index, category, labels)
            if category.id in seen:
                problems.append(
                    (
                        ("categories", index, "id"),
                        f"duplicate category id {category.id!r} (first at categories"
                        f"[{seen[category.id]}])",
                    )
                )
            else:
                seen[category.id] = index
            if category.signal == DEFAULT_SIGNAL and not self.benign_for(category):
                problems.append(
                    (
                        ("categories", index, "benign_prompts"),
                        "no contrast prompts: give benign_prompts here or defaults.benign_prompts"
                        " (a score is relative to what looks similar but is allowed)",
                    )
                )
        return problems

    def _combine_problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        by_id = {c.id: c for c in self.categories}
        for index, category in enumerate(self.categories):
            if category.combine is None:
                continue
            for position, member in enumerate(category.combine.of):
                path: tuple[str | int, ...] = ("categories", index, "combine", "of", position)
                found = by_id.get(member)
                if member == category.id:
                    problems.append((path, "a combined category cannot be its own member"))
                elif found is None:
                    problems.append(
                        (path, f"unknown category {member!r}; known: {', '.join(by_id)}")
                    )
                elif found.signal == COMBINE_SIGNAL:
                    problems.append(
                        (path, f"member {member!r} is itself combined; name its members instead")
                    )
        return problems

    @property
    def shadow(self) -> bool:
        return self.mode is PolicyMode.SHADOW

    def canonical_json(self) -> str:
        """The policy's content as canonical JSON: what its hash covers. ``mode`` is deployment
        state and left out; an absent optional block (``exemplars``, ``bank``) is left out too, so
        adding one to the schema does not change the hash of a policy that does not use it."""
        data = self.model_dump(mode="json", exclude={"mode"})
        for optional_block in ("video", "strikes"):
            if data.get(optional_block) is None:
                data.pop(optional_block, None)
        for category in data["categories"]:
            for optional in ("exemplars", "bank", "labels", "combine", "text"):
                if category.get(optional) is None:
                    category.pop(optional, None)
            bank = category.get("bank")
            if bank is not None and bank.get("vpdq") is None:
                bank.pop("vpdq", None)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _classifier_labels(signals: Collection[str] | None, name: str) -> tuple[str, ...] | None:
    """The labels of signal ``name`` when ``signals`` maps names to signals and that one is a
    classifier (it has ``labels``); None otherwise."""
    if not isinstance(signals, Mapping) or name not in signals:
        return None
    labels = getattr(signals[name], "labels", None)
    return tuple(labels) if labels is not None else None


def _label_problems(
    index: int, category: Category, labels: tuple[str, ...]
) -> list[tuple[tuple[str | int, ...], str]]:
    if not category.labels:
        return [
            (
                ("categories", index, "signal"),
                f"a {category.signal} category needs labels: [...] (one or more of "
                f"{', '.join(labels)})",
            )
        ]
    return [
        (
            ("categories", index, "labels", position),
            f"unknown label {label!r} of classifier {category.signal!r}; known: "
            f"{', '.join(labels)}",
        )
        for position, label in enumerate(category.labels)
        if label not in labels
    ]


def policy_hash(policy: Policy) -> str:
    """sha256 of the policy's canonical JSON: comments and formatting do not change it."""
    return hashlib.sha256(policy.canonical_json().encode()).hexdigest()


class PolicySet(Mapping[str, Policy]):
    """Live policies by id, validated once: duplicate ids are an error.

    Shadow versions (``mode: shadow``) are kept apart (:meth:`shadows`): at most one per policy
    id, with a version other than the live one's. A shadow identical to the live version (same
    version and content: a promotion half done) is ignored. Iterating and indexing see live
    policies only.

    Raises:
        DuplicatePolicyError: two live policies, or two shadows, share an id.
        PolicyVersionConflict: a shadow has its live policy's version but other content.
    """

    def __init__(self, policies: Iterable[tuple[Policy, str]] = ()) -> None:
        self._policies: dict[str, Policy] = {}
        self._sources: dict[str, str] = {}
        shadows: list[tuple[Policy, str]] = []
        for policy, source in policies:
            if policy.shadow:
                shadows.append((policy, source))
                continue
            if policy.id in self._policies:
                raise DuplicatePolicyError(policy.id, [self._sources[policy.id], source])
            self._policies[policy.id] = policy
            self._sources[policy.id] = source
        self._shadows: dict[str, Policy] = {}
        self._shadow_sources: dict[str, str] = {}
        for policy, source in shadows:
            live = self._policies.get(policy.id)
            if live is not None and live.version == policy.version:
                if policy_hash(live) == policy_hash(policy):
                    continue  # the promoted copy of this shadow is live already
                raise PolicyVersionConflict(
                    f"policy {policy.id!r} version {policy.version} is live in "
                    f"{self._sources[policy.id]} and a different shadow in {source}: give the "
                    "shadow a new version"
                )
            if policy.id in self._shadows:
                raise DuplicatePolicyError(
                    policy.id, [self._shadow_sources[policy.id], source], shadow=True
                )
            self._shadows[policy.id] = policy
            self._shadow_sources[policy.id] = source

    def __getitem__(self, policy_id: str) -> Policy:
        return self._policies[policy_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._policies)

    def __len__(self) -> int:
        return len(self._policies)

    def source(self, policy_id: str) -> str:
        return self._sources[policy_id]

    def shadows(self) -> list[Policy]:
        """The shadow versions, at most one per policy id."""
        return list(self._shadows.values())

    def shadow(self, policy_id: str) -> Policy | None:
        return self._shadows.get(policy_id)

    def shadow_source(self, policy_id: str) -> str:
        return self._shadow_sources[policy_id]

    def every(self) -> list[tuple[Policy, str]]:
        """Every policy, live then shadow, with its source."""
        return [
            *((p, self._sources[p.id]) for p in self._policies.values()),
            *((p, self._shadow_sources[p.id]) for p in self._shadows.values()),
        ]

    def active(self) -> list[Policy]:
        return [p for p in self._policies.values() if p.active]

    def select(self, policy_ids: Iterable[str] | None) -> list[Policy]:
        """The named policies, or every active one when ``policy_ids`` is None or empty.

        Raises:
            UnknownPolicyError: a named policy does not exist.
        """
        ids = list(policy_ids or [])
        if not ids:
            return self.active()
        out = []
        for policy_id in ids:
            if policy_id not in self._policies:
                raise UnknownPolicyError(policy_id, list(self._policies))
            out.append(self._policies[policy_id])
        return out
