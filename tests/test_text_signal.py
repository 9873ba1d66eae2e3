"""The text signal: text read from images (OCR) matched against a policy's text rules.

Normalisation and matching are pure (``moderation.core.text``) and tested on strings; the
signal is tested through the scoring path with the in-memory OCR twin (what was "read" is
chosen by the image's corner colour) and with the real RapidOCR engine on rendered text.
"""

from __future__ import annotations

import pickle
import textwrap
from typing import Any

import pytest
from PIL import Image

from moderation.adapters.images import SafeDecoder
from moderation.adapters.memory.text_reader import MemoryTextReader
from moderation.adapters.policy_files import load_policy_text
from moderation.compose.registries import build_signals
from moderation.core.compiled import compile_policy
from moderation.core.decision import Decision
from moderation.core.policy import Policy, PolicySet, TextRules
from moderation.core.text import (
    TextLine,
    TextRuleTimeout,
    compile_pattern,
    find_pattern,
    find_phrase,
    reading_order,
    tokenize_lines,
)
from moderation.exceptions import PolicyValidationError
from moderation.pipeline.moderator import Moderator
from moderation.pipeline.policies import ActivePolicies
from moderation.settings import ImageLimits, Settings
from moderation.signals import Signals, TextSignal
from moderation.testmodel.samples import encoded
from moderation.testmodel.text_images import (
    BENIGN_LOOKALIKES,
    OBFUSCATIONS,
    busy_background,
    obfuscate,
    render_text,
)
from moderation.testmodel.world import sample_images

SCAM_POLICY = textwrap.dedent(
    """\
    id: scams
    version: 1
    description: scam text written in images
    categories:
      - id: scam_text
        description: crypto giveaway scams
        severity: high
        signal: text
        text:
          phrases: [send bitcoin, double your money]
          keywords: [giveaway]
          patterns: ['wallet\\s*[:=]\\s*[a-z0-9]{8,}']
        thresholds: {review: 0.5, block: 0.8}
        actions:
          block: {action: remove, reason_code: SCAM_TEXT}
    """
)

PROMPTS_ONLY = textwrap.dedent(
    """\
    id: plain
    version: 1
    description: prompts only
    defaults: {benign_prompts: [a plain background]}
    categories:
      - id: stars
        description: stars
        severity: low
        prompts: [a red star]
        thresholds: {review: 0.5, block: 0.8}
    """
)


# --- normalisation and matching (pure) --------------------------------------------------------


def _matches(phrase: str, *lines: str) -> tuple[int, ...] | None:
    return find_phrase(tokenize_lines(lines), phrase)


@pytest.mark.parametrize("kind", sorted(OBFUSCATIONS))
def test_every_obfuscation_of_a_phrase_matches(kind: str) -> None:
    for phrase in BENIGN_LOOKALIKES:
        assert _matches(phrase, obfuscate(phrase, kind)) == (0,), (kind, phrase)


@pytest.mark.parametrize(
    "written",
    [
        "ＳＥＮＤ ＢＩＴＣＯＩＮ",
        "𝐬𝐞𝐧𝐝 𝐛𝐢𝐭𝐜𝐨𝐢𝐧",
        "seeeend biiitcoin",
        "s-e-n-d b_i_t_c_o_i_n",
        "$end b!tc0in",
    ],
)
def test_wide_bold_stretched_and_symbol_spellings_match(written: str) -> None:
    assert _matches("send bitcoin", written) == (0,)


@pytest.mark.parametrize("phrase", sorted(BENIGN_LOOKALIKES))
def test_benign_lookalikes_do_not_match(phrase: str) -> None:
    for text in BENIGN_LOOKALIKES[phrase]:
        assert _matches(phrase, text) is None, (phrase, text)


def test_a_phrase_broken_over_lines_matches_with_both_lines() -> None:
    assert _matches("double your money", "DOUBLE YOUR", "MONEY NOW", "unrelated") == (0, 1)
    assert _matches("giveaway", "big", "give", "away") == (1, 2)
    assert _matches("giveaway", "forgive", "away") is None  # starts inside a word


def test_a_pattern_reports_its_span_and_lines() -> None:
    pattern = compile_pattern(r"wallet\s*[:=]\s*[a-z0-9]{8,}")
    found = find_pattern(pattern, ["hello", "Wallet: ab12cd34ef"], timeout_s=1.0)
    assert found == ("Wallet: ab12cd34ef", (1,))
    assert find_pattern(pattern, ["wallet: short"], timeout_s=1.0) is None


def test_a_hostile_pattern_times_out_with_a_clear_error() -> None:
    hostile = compile_pattern(r"(a|aa)+$")
    with pytest.raises(TextRuleTimeout, match="ran past its 10 ms limit") as caught:
        find_pattern(hostile, ["a" * 60 + "!"], timeout_s=0.01)
    assert caught.value.code == "text_regex_timeout"


# --- policy validation -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def signals() -> Signals:
    return build_signals(Settings())


def _with(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "patterns: ['wallet\\s*[:=]\\s*[a-z0-9]{8,}']",
            "patterns: ['(a+)+$']",
            r"p.yaml:12: categories\[0\].text.patterns\[0\]: .*backtracks catastrophically",
        ),
        (
            "patterns: ['wallet\\s*[:=]\\s*[a-z0-9]{8,}']",
            "patterns: ['wallet(']",
            r"p.yaml:12: categories\[0\].text.patterns\[0\]: .*does not compile",
        ),
        (
            "patterns: ['wallet\\s*[:=]\\s*[a-z0-9]{8,}']",
            "patterns: ['x*']",
            r"matches empty text",
        ),
        ("keywords: [giveaway]", "keywords: [give away]", r"list it under phrases"),
        ("keywords: [giveaway]", "keywords: ['?#']", r"no letters or digits"),
        ("keywords: [giveaway]", "keywords: [S3ND BITCOIN]", r"several words"),
        (
            "keywords: [giveaway]",
            "prompts: [a crypto scam]",
            r"prompts need benign_prompts",
        ),
        ("signal: text", "signal: prompts", r"only for signal 'text'"),
    ],
)
def test_bad_text_rules_are_refused_with_their_line(
    signals: Signals, old: str, new: str, message: str
) -> None:
    with pytest.raises(PolicyValidationError, match=message):
        load_policy_text(_with(SCAM_POLICY, old, new), source="p.yaml", signals=signals)


def test_a_text_category_needs_rules(signals: Signals) -> None:
    bare = SCAM_POLICY.split("    text:")[0] + "    thresholds: {review: 0.5, block: 0.8}\n"
    with pytest.raises(PolicyValidationError, match="a text category needs text"):
        load_policy_text(bare, source="p.yaml", signals=signals)


def test_text_rules_are_part_of_the_policy_hash(signals: Signals) -> None:
    from moderation.core.policy import policy_hash

    one = load_policy_text(SCAM_POLICY, source="p.yaml", signals=signals)
    two = load_policy_text(
        _with(SCAM_POLICY, "keywords: [giveaway]", "keywords: [airdrop]"),
        source="p.yaml",
        signals=signals,
    )
    assert policy_hash(one) != policy_hash(two)
    plain = load_policy_text(PROMPTS_ONLY, source="p.yaml", signals=signals)
    assert "text" not in plain.canonical_json()  # a policy without text rules hashes as before


# --- the signal on the scoring path (OCR twin) ------------------------------------------------

RED, GREEN, BLUE = (250, 0, 0), (0, 250, 0), (0, 0, 250)
BOX = ((10, 20), (110, 20), (110, 40), (10, 40))


def _twin() -> MemoryTextReader:
    return MemoryTextReader(
        {
            "fa0000": (
                TextLine("FREE GIVEAWAY!", BOX, 0.97),
                TextLine("S3ND B1TCOIN", ((10, 50), (150, 50), (150, 70), (10, 70)), 0.91),
            ),
            "00fa00": (TextLine("skill yourself at the forge", BOX, 0.99),),
            "0000fa": (TextLine("my wallet = abcd1234efgh", BOX, 0.6),),
        }
    )


def _moderator(
    scoring: Any, text: str | Policy, reader: MemoryTextReader, **kwargs: Any
) -> Moderator:
    encoder = scoring.model.encoder
    base = build_signals(Settings())
    signal = TextSignal(reader=lambda: reader, text_encoder=encoder, min_side=64)
    signals = Signals([*(base[name] for name in base if name != "text"), signal])
    policy = (
        text
        if isinstance(text, Policy)
        else load_policy_text(text, source="p.yaml", signals=signals)
    )
    policies = ActivePolicies(
        load=lambda: PolicySet([(policy, "p.yaml")]),
        compile=lambda ps: [compile_policy(ps[pid], encoder) for pid in ps],
        fingerprint=lambda: "fixed",
        signals=signals,
    )
    return Moderator(
        encoder=encoder, decoder=SafeDecoder(ImageLimits()), policies=policies, **kwargs
    )


def _solid(colour: tuple[int, int, int], size: int = 128) -> bytes:
    return encoded(Image.new("RGB", (size, size), colour))


def test_matches_block_with_the_text_and_its_boxes_in_the_verdict(scoring: Any) -> None:
    reader = _twin()
    moderator = _moderator(scoring, SCAM_POLICY, reader)
    red, green, blue = (moderator.prepare(_solid(c)) for c in (RED, GREEN, BLUE))
    verdicts = moderator.moderate([red, green, blue])

    assert verdicts[0].decision is Decision.BLOCK
    assert verdicts[0].reason_code == "SCAM_TEXT"
    top = verdicts[0].categories[0]
    assert top.signal == "text"
    assert top.score == pytest.approx(0.97)
    rules = {e.details["rule"]: e for e in top.evidence}
    assert set(rules) == {"keyword", "phrase"}
    assert rules["keyword"].label == "FREE GIVEAWAY!"
    # Fractions of the frame (128 px square), so the review page can draw them at any size.
    assert rules["keyword"].details["boxes"] == [
        [[round(x / 128, 4), round(y / 128, 4)] for x, y in BOX]
    ]
    assert rules["phrase"].label == "S3ND B1TCOIN"
    assert rules["phrase"].details["wanted"] == "send bitcoin"
    assert "FREE GIVEAWAY!" in verdicts[0].explain()

    assert verdicts[1].decision is Decision.ALLOW  # "skill yourself": no rule of this policy
    assert verdicts[1].categories[0].evidence[0].details["text"] == "skill yourself at the forge"

    # A pattern match on a line read with confidence 0.6: review, not block.
    assert verdicts[2].decision is Decision.REVIEW
    assert verdicts[2].categories[0].evidence[0].details["rule"] == "pattern"
    assert verdicts[2].categories[0].evidence[0].label == "wallet = abcd1234efgh"


def test_lines_below_the_rules_confidence_are_ignored(scoring: Any) -> None:
    strict = _with(
        SCAM_POLICY, "keywords: [giveaway]", "keywords: [giveaway]\n      min_confidence: 0.95"
    )
    moderator = _moderator(scoring, strict, _twin())
    (verdict,) = moderator.moderate([moderator.prepare(_solid(RED))])
    assert [e.details["rule"] for e in verdict.categories[0].evidence] == ["keyword"]


def test_a_policy_without_text_rules_never_calls_ocr(scoring: Any) -> None:
    reader = _twin()
    moderator = _moderator(scoring, PROMPTS_ONLY, reader)  # fingerprint_all: PDQ on every image
    prepared = moderator.prepare(_solid(RED))
    moderator.moderate([prepared])
    assert "text" not in prepared.features
    assert reader.calls == 0
    assert moderator.preparation() is not None and "text" not in {
        s.name
        for s in moderator.preparation().signals  # type: ignore[union-attr]
    }
    used = _moderator(scoring, SCAM_POLICY, reader)
    used.prepare(_solid(RED))
    assert reader.calls == 1


def test_a_pattern_that_times_out_on_an_image_sends_it_to_review(scoring: Any) -> None:
    # Loading refuses such a pattern (its probes blow it up); built past validation here, it
    # stands for one that is slow only on what an image holds.
    reader = MemoryTextReader({"fa0000": (TextLine("a" * 60 + "!", BOX, 0.99),)})
    moderator = _moderator(scoring, SCAM_POLICY, reader)
    loaded = moderator.policies.current.by_id["scams"].policy
    category = loaded.categories[0]
    hostile = TextRules.model_construct(
        phrases=[], keywords=[], patterns=["(a|aa)+$"], prompts=[], benign_prompts=[],
        min_confidence=0.5,
    )  # fmt: skip
    policy = loaded.model_copy(
        update={"categories": [category.model_copy(update={"text": hostile})]}
    )
    moderator = _moderator(scoring, policy, reader)
    (verdict,) = moderator.moderate([moderator.prepare(_solid(RED))])
    assert verdict.decision is Decision.REVIEW
    evidence = verdict.categories[0].evidence[0]
    assert evidence.details["error"] == "text_regex_timeout"
    assert "ran past its 50 ms limit" in evidence.details["message"]


def test_prompt_similarity_scores_the_read_text_with_the_text_tower(scoring: Any) -> None:
    policy = _with(
        SCAM_POLICY,
        "keywords: [giveaway]",
        "keywords: [giveaway]\n      prompts: [a red star]\n"
        "      benign_prompts: [a plain background]",
    )
    reader = MemoryTextReader(
        {
            "fa0000": (TextLine("A RED STAR", BOX, 0.99),),
            "00fa00": (TextLine("a plain background", BOX, 0.99),),
        }
    )
    moderator = _moderator(scoring, policy, reader)
    red, green = moderator.moderate([moderator.prepare(_solid(c)) for c in (RED, GREEN)])
    evidence = red.categories[0].evidence
    assert [e.details["rule"] for e in evidence] == ["prompt"]
    assert evidence[0].details["wanted"] == "a red star"
    assert evidence[0].label == "A RED STAR"
    assert red.categories[0].score == pytest.approx(evidence[0].score)
    assert red.scores["scams/scam_text"] > 0.5 > green.scores["scams/scam_text"]


def test_video_frames_are_each_read(scoring: Any) -> None:
    reader = _twin()
    moderator = _moderator(scoring, SCAM_POLICY, reader)
    frames = [Image.new("RGB", (96, 96), c) for c in (GREEN, RED, BLUE)]
    gif = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=200)
    prepared = moderator.prepare(gif)
    assert prepared.frames >= 2 and reader.calls == prepared.frames
    (verdict,) = moderator.moderate([prepared])
    assert verdict.decision is Decision.BLOCK


class ReaderFactory:
    """A picklable reader factory (a lambda is not), as the composition root's partial is."""

    def __call__(self) -> MemoryTextReader:
        return _twin()


def test_the_signal_travels_to_prepare_processes_without_engine_or_tower(scoring: Any) -> None:
    signal = TextSignal(reader=ReaderFactory(), text_encoder=scoring.model.encoder)
    red = Image.new("RGB", (8, 8), RED)
    assert len(signal.features(red).lines) == 2
    copy = pickle.loads(pickle.dumps(signal))
    assert copy._reader is None and copy.text_encoder is None
    assert copy.features(red) == signal.features(red)


# --- the real engine (RapidOCR, models inside its wheel) ---------------------------------------


@pytest.fixture(scope="module")
def ocr() -> TextSignal:
    signal = build_signals(Settings())["text"]
    assert isinstance(signal, TextSignal)
    return signal


def _read(signal: TextSignal, image: Image.Image) -> list[str]:
    return [line.text for line in signal.features(image).lines]


def test_rapidocr_reads_clear_text_on_world_and_busy_backgrounds(ocr: TextSignal) -> None:
    ((world, _),) = sample_images("allow", 1, seed=3)
    backgrounds = [world.resize((480, 480)), busy_background((520, 360), seed=5)]
    for background, phrase, angle in zip(
        backgrounds, ["send bitcoin", "double your money"], [0.0, 8.0], strict=True
    ):
        image = render_text(background, phrase.upper(), size=44, angle=angle)
        lines = _read(ocr, image)
        assert find_phrase(tokenize_lines(lines), phrase) is not None, lines
        for line in ocr.features(image).lines:  # four corners in the frame, some area
            xs, ys = [x for x, _ in line.box], [y for _, y in line.box]
            assert 0 <= min(xs) < max(xs) <= image.width, line
            assert 0 <= min(ys) < max(ys) <= image.height, line


def test_rapidocr_on_lookalike_text_does_not_match(ocr: TextSignal) -> None:
    image = render_text(busy_background((560, 300), seed=9), "SKILL YOURSELF", size=48)
    lines = _read(ocr, image)
    assert any("skill" in line.casefold() for line in lines), lines
    assert find_phrase(tokenize_lines(lines), "kill yourself") is None


def test_the_policy_schema_describes_text_rules() -> None:
    schema = Policy.model_json_schema()
    rules = schema["$defs"]["TextRules"]
    assert set(rules["properties"]) == {
        "phrases", "keywords", "patterns", "prompts", "benign_prompts", "min_confidence"
    }  # fmt: skip
    assert rules["additionalProperties"] is False


def test_lines_are_read_in_rows_even_when_the_text_is_turned() -> None:
    def line(text: str, x: int, y: int, h: int = 20) -> TextLine:
        return TextLine(text, ((x, y), (x + 80, y), (x + 80, y + h), (x, y + h)), 0.9)

    # "bitcoin" was detected a little higher than "send" (text turned a few degrees).
    found = reading_order([line("bitcoin", 100, 44), line("below", 0, 90), line("send", 0, 50)])
    assert [ln.text for ln in found] == ["send", "bitcoin", "below"]


def test_the_documented_example_loads(signals: Signals) -> None:
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "signals.md").read_text()
    section = doc.split("## The text signal")[1]
    example = section.split("```yaml\n")[1].split("```")[0]
    policy = load_policy_text(example, source="docs/signals.md", signals=signals)
    rules = policy.categories[0].text
    assert rules is not None and rules.phrases == ["send bitcoin", "double your money"]


def test_text_rules_are_not_matched_where_a_cheaper_signal_already_blocked(scoring: Any) -> None:
    """Cost order: the text signal (cost 50) is left unscored on an image a critical prompts
    category already blocks, and the verdict says so."""
    both = textwrap.dedent(
        """\
        id: mixed
        version: 1
        description: prompts first, text second
        categories:
          - id: red_things
            description: anything red
            severity: critical
            prompts: [a red image]
            benign_prompts: [a green image]
            thresholds: {review: 0.01, block: 0.02}
          - id: scam_text
            description: crypto giveaway scams
            severity: high
            signal: text
            text: {keywords: [giveaway]}
            thresholds: {review: 0.5, block: 0.8}
        """
    )
    moderator = _moderator(scoring, both, _twin())
    (verdict,) = moderator.moderate([moderator.prepare(_solid(RED))])
    assert verdict.decision is Decision.BLOCK and verdict.category_id == "red_things"
    assert [(s.signal, s.settled_by) for s in verdict.skipped] == [("text", "mixed/red_things")]
    assert "mixed/scam_text" not in verdict.scores or verdict.scores["mixed/scam_text"] == 0.0


def test_a_word_spelled_out_with_dots_keeps_its_boundaries() -> None:
    assert _matches("kill yourself", "k.i.l.l y.o.u.r.s.e.l.f now") == (0,)
    assert _matches("kill yourself", "s.k.i.l.l y.o.u.r.s.e.l.f") is None
    assert _matches("cash app me", "c.a.s.h.a.p.p m.e.e.t.i.n.g") is None


def test_lines_of_text_turned_15_degrees_are_read_along_it() -> None:
    import math

    def turned(text: str, x: float, y: float, w: float = 80, h: float = 20) -> TextLine:
        a = math.radians(-15)  # rising to the right
        ux, uy, nx, ny = math.cos(a), math.sin(a), -math.sin(a), math.cos(a)
        corners = [(x, y), (x + w * ux, y + w * uy), (x + w * ux + h * nx, y + w * uy + h * ny)]
        corners.append((x + h * nx, y + h * ny))
        box = tuple((round(cx), round(cy)) for cx, cy in corners)
        return TextLine(text, box, 0.9)  # type: ignore[arg-type]

    kill = turned("kill", 0, 100)
    # the next word along the same turned line: 90 px further along its direction
    yourself = turned(
        "yourself", 90 * math.cos(math.radians(-15)), 100 + 90 * math.sin(math.radians(-15))
    )
    below = turned("below", 0, 160)
    found = reading_order([yourself, below, kill])
    assert [ln.text for ln in found] == ["kill", "yourself", "below"]
