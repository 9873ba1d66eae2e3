"""Hash banks without servers: PDQ hashing, exact search, bank files, the use cases over the
in-memory store, hot reload, and the hash-bank signal in verdicts next to CLIP prompts."""

from __future__ import annotations

import csv
import io
import json
import textwrap
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from PIL import Image
from threatexchange.signal_type.pdq.pdq_hasher import pdq_from_bytes
from threatexchange.signal_type.pdq.pdq_utils import simple_distance

from moderation import testmodel
from moderation.adapters.images import SafeDecoder
from moderation.adapters.memory import MemoryAuditSink, MemoryBankStore
from moderation.adapters.policy_files import load_policy_text
from moderation.core.audit import record_for_verdict
from moderation.core.banks import EntryData, Segment
from moderation.core.compiled import compile_policy
from moderation.core.decision import Decision
from moderation.core.image_ref import ImageRef
from moderation.core.policy import PolicySet
from moderation.core.review import HumanDecision, ReviewDecision, item_from_verdict
from moderation.core.vpdq import VpdqFrame, format_text
from moderation.exceptions import (
    BankBusy,
    BankError,
    BankExists,
    BankFileError,
    BankNotFound,
    InvalidHashError,
    PolicyValidationError,
)
from moderation.pipeline.bank_files import (
    BankFormat,
    EntryDefaults,
    data_rows,
    parse_bank_text,
    write_bank_file,
)
from moderation.pipeline.bank_sync import BankSync
from moderation.pipeline.banks import BankService, image_feature
from moderation.pipeline.moderator import Moderator
from moderation.pipeline.policies import ActivePolicies
from moderation.pipeline.video_banks import export_video, videos
from moderation.ports import BankRequest
from moderation.settings import ImageLimits
from moderation.signals import LoadedBanks, builtin_signals
from moderation.signals.hash_bank import (
    BankIndex,
    FlatIndex,
    MultiIndex,
    PdqFeature,
    hash_frame,
    parse_pdq,
)
from moderation.testmodel.robustness import world_images
from moderation.testmodel.samples import encoded

DECODER = SafeDecoder(ImageLimits())


def _hex(rng: np.random.Generator, n: int) -> list[str]:
    return [bytes(r).hex() for r in rng.integers(0, 256, (n, 32), dtype=np.uint8)]


def _png(image: Image.Image) -> bytes:
    return encoded(image)


def _jpeg(image: Image.Image, quality: int = 50) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# --- hashes --------------------------------------------------------------------------------------


def test_hashes_of_the_wrong_length_or_not_hex_are_refused() -> None:
    good = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
    assert parse_pdq(f"  {good.upper()} ") == good
    with pytest.raises(InvalidHashError, match="64 hex digits, got 63"):
        parse_pdq(good[:-1])
    with pytest.raises(InvalidHashError, match="64 hex digits, got 65"):
        parse_pdq(good + "0")
    with pytest.raises(InvalidHashError, match=r"not a hexadecimal PDQ hash \('g'\)"):
        parse_pdq("g" + good[1:])
    with pytest.raises(ValueError):
        EntryData(pdq="xyz")  # the model itself refuses anything but 64 lowercase hex digits


def test_our_hash_is_threatexchanges_hash_of_the_same_pixels() -> None:
    """pdqhash through our frame path gives ThreatExchange's hex for the same image (same bit
    order), so banks from the ecosystem match our hashes."""
    image = world_images(1, seed=4, size=300)[0]
    data = _png(image)
    theirs, quality = pdq_from_bytes(data)
    ours = image_feature(DECODER, data)
    assert ours.hex == theirs and ours.quality == quality


def test_a_flat_image_has_a_low_quality_hash() -> None:
    feature = hash_frame(Image.new("RGB", (300, 300), (128, 128, 128)))
    assert feature.quality < 50


def test_a_uniform_border_is_hashed_away() -> None:
    image = world_images(1, seed=2, size=400)[0]
    bordered = Image.new("RGB", (404, 404), (255, 255, 255))
    bordered.paste(image, (2, 2))
    plain, framed = hash_frame(image), hash_frame(bordered)
    assert framed.trimmed is not None
    assert framed.trimmed[0] == plain.hash  # without its border it is the original


# --- exact search --------------------------------------------------------------------------------


def _near(codes: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    picked = codes[rng.integers(0, len(codes), n)].copy()
    bits = np.unpackbits(picked, axis=1)
    for i, row in enumerate(bits):
        row[rng.choice(256, i % 48, replace=False)] ^= 1
    return np.packbits(bits, axis=1)


@pytest.mark.parametrize("radius", [0, 7, 23, 24, 31, 40, 48])
def test_multi_index_returns_exactly_the_brute_force_matches(radius: int) -> None:
    rng = np.random.default_rng(radius)
    codes = rng.integers(0, 256, (20_000, 32), dtype=np.uint8)
    queries = np.concatenate(
        [_near(codes, rng, 150), codes[:5], rng.integers(0, 256, (20, 32), np.uint8)]
    )
    mih = MultiIndex(codes).search(queries, radius)
    flat = FlatIndex(codes).search(queries, radius)
    as_set = lambda r: set(zip(*(a.tolist() for a in r), strict=True))  # noqa: E731
    assert as_set(mih) == as_set(flat)
    assert len(as_set(flat)) >= 5
    # and the distances are ThreatExchange's
    for q, row, d in list(as_set(mih))[:40]:
        assert simple_distance(bytes(queries[q]).hex(), bytes(codes[row]).hex()) == d


def test_a_bank_index_maps_rows_to_entries_skips_removed_and_searches_new_rows() -> None:
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, (300, 32), dtype=np.uint8)
    segments = [
        Segment(number=0, first_id=10, count=200),
        Segment(number=1, first_id=500, count=100),
    ]
    index = BankIndex.build("b", 3, codes, segments, removed=[12], flat_max=50)
    assert isinstance(index.base, MultiIndex)
    found = index.search(codes[[0, 2, 250]], 0)
    assert [[m.entry_id for m in f] for f in found] == [[10], [], [550]]  # 12 is removed
    extra = rng.integers(0, 256, (5, 32), dtype=np.uint8)
    grown = index.updated(
        4, extra, [*segments, Segment(number=2, first_id=600, count=5)], removed=[12, 550]
    )
    assert grown.base is index.base and len(grown.delta_codes) == 5 and grown.rows == 305
    found = grown.search(np.concatenate([extra[3:4], codes[250:251], codes[2:3]]), 0)
    assert [[m.entry_id for m in f] for f in found] == [[603], [], []]
    assert grown.code(303) == bytes(extra[3]).hex()


# --- bank files ----------------------------------------------------------------------------------


def test_every_ecosystem_format_is_read_and_written_back() -> None:
    rng = np.random.default_rng(2)
    a, b, c = _hex(rng, 3)
    te = textwrap.dedent(
        f"""\
        id,indicator,type,status,tags,owner_id,added_on
        1001,{a},HASH_PDQ,MALICIOUS,terror propaganda,42,2024-05-01T10:00:00+0000
        1002,{b.upper()},HASH_PDQ,MALICIOUS,,42,
        1003,{a},HASH_PDQ,MALICIOUS,again,42,
        """
    )
    parsed = parse_bank_text(te, source="te.csv")
    assert parsed.format is BankFormat.TE and parsed.duplicates == 1
    first, second = parsed.entries
    assert (first.pdq, first.reference_id, first.label, first.source) == (
        a,
        "1001",
        "terror propaganda",
        "threatexchange:42",
    )
    assert first.added_at.year == 2024 and second.pdq == b
    tx = f"signal_type,signal_str,collab,category,tags\npdq,{c},GIFCT,POSITIVE_CLASS,tvec\n"
    (entry,) = parse_bank_text(tx).entries
    assert (entry.pdq, entry.source, entry.label) == (c, "GIFCT", "tvec")
    hma = f"{a}\t55\t0\t2023-01-02\tx y\n"
    (entry,) = parse_bank_text(hma).entries
    assert (entry.reference_id, entry.label, entry.added_at.year) == ("55", "x y", 2023)
    lines = f"# seed list\npdq {a}\n{b}  # inline comment\n"
    parsed = parse_bank_text(lines, defaults=EntryDefaults(source="seed", label="L"))
    assert [e.pdq for e in parsed.entries] == [a, b] and parsed.entries[0].source == "seed"
    originals = [
        EntryData(pdq=a, source="s1", label="l1", reference_id="r1", quality=90),
        EntryData(pdq=b, source="s2", label="l2"),
    ]
    for fmt in BankFormat:
        for delimiter in (",", "\t"):
            text = "".join(write_bank_file(originals, fmt, delimiter=delimiter))
            back = parse_bank_text(text, fmt=fmt).entries
            assert [e.pdq for e in back] == [a, b], (fmt, delimiter)
            if fmt is BankFormat.TE:
                assert back == originals  # every field survives the round trip


def test_a_malformed_bank_file_is_refused_with_every_problem_at_its_line() -> None:
    rng = np.random.default_rng(3)
    good, other = _hex(rng, 2)
    text = textwrap.dedent(
        f"""\
        id,indicator,type,status,tags,added_on,quality
        1,{good},HASH_PDQ,MALICIOUS,ok,,
        2,{good[:-2]},HASH_PDQ,MALICIOUS,short,,
        3,{good[:-1]}z,HASH_PDQ,MALICIOUS,not hex,,
        4,{other},HASH_MD5,MALICIOUS,md5,,
        5,{other},HASH_PDQ,NON_MALICIOUS,benign,,
        6,{other},HASH_PDQ,MALICIOUS,when,last tuesday,
        7,{other},HASH_PDQ,MALICIOUS,q,,101
        8,{other},HASH_PDQ
        """
    )
    with pytest.raises(BankFileError) as info:
        parse_bank_text(text, source="bad.csv")
    assert [str(i) for i in info.value.issues] == [
        f"bad.csv:3: indicator: a PDQ hash is 64 hex digits, got 62: '{good[:-2]}'",
        f"bad.csv:4: indicator: not a hexadecimal PDQ hash ('z'): '{good[:-1]}z'",
        "bad.csv:5: type: 'HASH_MD5' is not HASH_PDQ",
        "bad.csv:6: status: NON_MALICIOUS: not a known-bad hash (filter it out)",
        "bad.csv:7: added_on: not a date or time: 'last tuesday'",
        "bad.csv:8: quality: must be an integer 0-100, got '101'",
        "bad.csv:9: 3 columns, the header has 7",
    ]
    with pytest.raises(BankFileError, match="unrecognised bank file"):
        parse_bank_text("name,value\nx,y\n", source="other.csv")
    with pytest.raises(BankFileError, match=r"lines.txt:2: signal_type: 'md5' is not a PDQ"):
        parse_bank_text(f"{good}\nmd5 abc\n", source="lines.txt")


def test_a_huge_cell_is_a_bank_file_error_naming_its_row() -> None:
    rng = np.random.default_rng(4)
    good, other = _hex(rng, 2)
    huge = "x" * (200 * 1024)  # over the csv module's field limit (128 Ki characters)
    limit = csv.field_size_limit()
    for fmt_text, line in (
        (f"id,indicator,type\n1,{good},HASH_PDQ\n2,{other},{huge}\n", 3),  # te, with a header
        (f"{good},1,,,ok\n{other},2,,,{huge}\n", 2),  # hma, no header
        (f"{huge},indicator\n{good},1\n", 1),  # the first line
    ):
        with pytest.raises(BankFileError) as info:
            parse_bank_text(fmt_text, source="big.csv")
        assert [str(i) for i in info.value.issues] == [
            f"big.csv:{line}: row {line}: a cell is longer than {limit} characters"
        ]
        assert data_rows(fmt_text) >= 1  # the progress count does not fail either


# --- the use cases over the in-memory store ------------------------------------------------------


@pytest.fixture
def service() -> BankService:
    return BankService(MemoryBankStore(segment_rows=64), flat_max=100, review_banks=["removals"])


def test_imports_are_all_or_nothing_and_skip_what_the_bank_has(service: BankService) -> None:
    store = service.store
    rng = np.random.default_rng(4)
    hashes = _hex(rng, 300)
    service.create("known", description="test")
    with pytest.raises(BankExists):
        service.create("known")
    with pytest.raises(BankNotFound):
        service.import_text("nope", "\n".join(hashes), source="x")
    text = "\n".join(hashes[:200])
    report = service.import_text("known", text, source="a.txt")
    assert (report.added, report.already_in_bank, report.rows) == (200, 0, 200)
    manifest = store.manifest("known")
    assert len(manifest.segments) == 4 and manifest.rows == 200  # 64-row segments
    version = store.info("known").version
    bad = "\n".join([*hashes[200:250], "not-a-hash", *hashes[250:]])
    with pytest.raises(BankFileError, match=r"b.txt:51: hash: a PDQ hash is 64"):
        service.import_text("known", bad, source="b.txt")
    assert store.info("known").version == version and store.manifest("known").rows == 200
    report = service.import_text("known", "\n".join(hashes[150:]), source="c.txt")
    assert (report.added, report.already_in_bank) == (100, 50)
    assert store.info("known").entries == 300
    with store.writing("known"), pytest.raises(BankBusy):
        service.add("known", [EntryData(pdq=hashes[0])])


def test_add_remove_export_and_match(service: BankService) -> None:
    service.create("known")
    images = world_images(3, seed=8, size=320)
    features = [image_feature(DECODER, _png(im)) for im in images[:2]]
    report = service.add(
        "known",
        [
            EntryData(pdq=f.hex, label=f"img{i}", source="unit", reference_id=f"r{i}")
            for i, f in enumerate(features)
        ],
    )
    assert report.ids == [0, 1] and report.new == [True, True]
    again = service.add(
        "known",
        [EntryData(pdq=features[1].hex), EntryData(pdq="0" * 64), EntryData(pdq="0" * 64)],
    )
    assert again.ids == [1, 2, 2] and again.new == [False, True, False]
    copy = image_feature(DECODER, _jpeg(images[0]))
    (hit,) = service.match(copy, ["known"])
    assert (hit.entry.id, hit.entry.label, hit.entry.reference_id) == (0, "img0", "r0")
    assert hit.distance <= 31
    other = image_feature(DECODER, _png(images[2]))
    assert service.match(other) == []
    assert service.remove("known", hashes=[features[0].hex]) == 1
    assert service.remove("known", ids=[0]) == 0  # already gone
    assert service.match(copy) == []
    exported = "".join(service.export("known", BankFormat.TX))
    assert features[0].hex not in exported and features[1].hex in exported


def test_a_reviewers_request_banks_the_image_once_the_removal_is_final(
    service: BankService, scoring: Any
) -> None:
    image = world_images(1, seed=9, size=256)[0]
    prepared = scoring.moderator.prepare(_png(image))
    verdict = scoring.moderator.moderate([prepared])[0]
    policy = scoring.policies.current.policies["testworld"]
    item = item_from_verdict(
        job_id="j1",
        image=ImageRef(uri="mem://j1"),
        verdict=verdict,
        policy=policy,
        content_pdq=prepared.fingerprints["pdq"],
        content_pdq_quality=prepared.fingerprints["pdq_quality"],
    )
    assert service.bank_targets(item) == ["removals"]
    with pytest.raises(BankError, match="reviewers may add to these banks only: removals"):
        service.request_addition(item, bank="other", reviewer="rv_a")
    flat = item.model_copy(update={"content_pdq_quality": 10})
    assert service.bank_targets(flat) == []
    with pytest.raises(BankError, match="no PDQ hash of usable quality"):
        service.check_request(flat, bank="removals")
    service.request_addition(item, bank="removals", reviewer="rv_a")
    assert service.store.info("removals").entries == 0  # nothing until the removal is final
    audit = MemoryAuditSink()
    decision = HumanDecision(
        job_id="j1",
        review_id=item.review_id,
        decision=ReviewDecision.REMOVE,
        reason_code="TW_CONTRABAND",
        reviewers=["rv_a"],
        category_id=item.category_id,
        policy_id="testworld",
        policy_version=1,
        decided_at=datetime.now(UTC),
    )
    kwargs: dict[str, Any] = {
        "pdq": item.content_pdq,
        "quality": item.content_pdq_quality,
        "content_sha256": "ab" * 32,
        "content_ref": "mem://j1",
        "audit": audit,
    }
    escalated = decision.model_copy(update={"decision": ReviewDecision.ESCALATE})
    assert service.add_reviewed(escalated, **kwargs) is None
    entry = service.add_reviewed(decision, **kwargs)
    assert entry is not None and entry.bank == "removals" and entry.pdq == item.content_pdq
    assert (entry.label, entry.reference_id, entry.source) == (
        "TW_CONTRABAND",
        "j1",
        f"review:testworld/{item.category_id}",
    )
    assert service.add_reviewed(decision, **kwargs) is not None  # a redelivery: idempotent
    assert service.store.info("removals").entries == 1
    records = {r.record_id: r for r in audit.records}
    (record,) = records.values()
    assert (record.kind, record.decision, record.actor) == ("human", "add_to_bank", "rv_a")
    assert record.details["bank"] == "removals" and record.details["entry_id"] == 0


def test_a_reviewers_request_on_a_video_banks_all_its_sampled_frames(
    service: BankService,
) -> None:
    rng = np.random.default_rng(19)
    hashes = _hex(rng, 3)
    frames = [
        VpdqFrame(0, 90, hashes[0], 0.0),
        VpdqFrame(25, 20, hashes[1], 1.0),  # below quality 50: banked, not matched
        VpdqFrame(50, 85, hashes[2], 2.0),
        VpdqFrame(75, 85, hashes[2], 3.0),  # the same hash again: matched once
    ]
    service.create("removals")
    service.store.request_addition(
        BankRequest(review_id="rvw_v", bank="removals", reviewer="rv_a", at=datetime.now(UTC)),
        60,
    )
    decision = HumanDecision(
        job_id="jv",
        review_id="rvw_v",
        decision=ReviewDecision.REMOVE,
        reason_code="TW_CONTRABAND",
        reviewers=["rv_a", "rv_b"],
        category_id="contraband_symbol",
        policy_id="testworld",
        policy_version=1,
        decided_at=datetime.now(UTC),
    )
    audit = MemoryAuditSink()
    kwargs: dict[str, Any] = {
        "pdq": hashes[0],
        "quality": 90,
        "content_sha256": "cd" * 32,
        "content_ref": "mem://jv",
        "audit": audit,
        "frames": frames,
    }
    entry = service.add_reviewed(decision, **kwargs)
    assert entry is not None and (entry.video, entry.frame_number) == ("job:jv", 0)
    assert (entry.label, entry.reference_id, entry.video_frames) == ("TW_CONTRABAND", "jv", 2)
    assert videos(service.store, "removals") == {"job:jv": 4}
    assert export_video(service.store, "removals", "job:jv") == format_text(frames)
    (record,) = audit.records
    assert record.decision == "add_to_bank" and record.details["new_entry"] is True
    assert record.details["video"] == {
        "video": "job:jv",
        "frames": 4,
        "matching_frames": 2,
        "entry_ids": [entry.id + i for i in range(4)],
    }

    again = service.add_reviewed(decision, **kwargs)  # a redelivery: nothing banked twice
    assert again is not None and again.id == entry.id
    assert service.store.info("removals").entries == 4
    assert {r.record_id for r in audit.records} == {record.record_id}
    assert audit.records[-1].details["new_entry"] is False

    # A video without a frame of usable quality is banked as its image was (one hash).
    service.store.request_addition(
        BankRequest(review_id="rvw_w", bank="removals", reviewer="rv_a", at=datetime.now(UTC)),
        60,
    )
    flat = [VpdqFrame(0, 10, hashes[1], 0.0)]
    other = decision.model_copy(update={"job_id": "jw", "review_id": "rvw_w"})
    photo = service.add_reviewed(other, **{**kwargs, "pdq": hashes[1], "frames": flat})
    assert photo is not None and photo.video is None and photo.pdq == hashes[1]


# --- hot reload ----------------------------------------------------------------------------------


@pytest.mark.parametrize("background", [False, True])
def test_the_loaded_banks_follow_the_store(background: bool) -> None:
    store = MemoryBankStore(segment_rows=50)
    service = BankService(store, flat_max=120)
    service.create("b")
    rng = np.random.default_rng(5)
    hashes = _hex(rng, 400)
    service.add("b", [EntryData(pdq=h) for h in hashes[:100]])
    loaded = LoadedBanks()
    sync = BankSync(store, loaded, flat_max=120, rebuild_after=60, background=background)
    sync.load()
    first = loaded.get("b")
    assert first is not None and first.rows == 100 and isinstance(first.base, FlatIndex)
    assert sync.refresh() is False  # nothing changed: one version read

    def ids(h: str) -> list[int]:
        q = np.frombuffer(bytes.fromhex(h), np.uint8).reshape(1, 32)
        index = loaded.get("b")
        assert index is not None
        return [m.entry_id for m in index.search(q, 0)[0]]

    service.add("b", [EntryData(pdq=h) for h in hashes[100:130]])  # appended: cheap
    assert sync.refresh() is True
    grown = loaded.get("b")
    assert grown is not None and grown.base is first.base and len(grown.delta_codes) == 30
    assert ids(hashes[120]) == [120]
    service.remove("b", ids=[120, 5])  # removals apply at once
    sync.refresh()
    assert ids(hashes[120]) == [] and ids(hashes[5]) == [] and ids(hashes[6]) == [6]
    service.add("b", [EntryData(pdq=h) for h in hashes[130:400]])  # past rebuild_after
    sync.refresh()
    assert sync.idle(30)
    rebuilt = loaded.get("b")
    assert rebuilt is not None and isinstance(rebuilt.base, MultiIndex)
    assert rebuilt.rows == 400 and len(rebuilt.delta_codes) == 0
    assert ids(hashes[399]) == [399] and ids(hashes[5]) == []
    assert loaded.describe()["b"]["entries"] == 398
    service.delete("b")
    sync.refresh()
    assert loaded.get("b") is None
    # Deleted and created again between two checks, with as many rows: another bank.
    service.create("b")
    service.add("b", [EntryData(pdq=h) for h in hashes[:100]])
    sync.refresh()
    assert sync.idle(30)
    service.delete("b")
    service.create("b")
    service.add("b", [EntryData(pdq=h) for h in hashes[200:320]])
    sync.refresh()
    assert sync.idle(30)
    assert ids(hashes[0]) == [] and ids(hashes[200]) == [0]
    sync.close()


# --- the signal in policies and verdicts ---------------------------------------------------------

BANK_POLICY = textwrap.dedent(
    """\
    id: known
    version: 1
    description: known-bad images by hash, beside the test world's prompts
    categories:
      - id: banked
        description: images in the known-bad bank
        severity: critical
        signal: hash_bank
        bank: {name: known-bad, max_distance: 31}
        thresholds: {review: 0.5, block: 0.85}
        actions:
          review: {action: human_review, reason_code: KNOWN_SUSPECTED}
          block: {action: remove, reason_code: KNOWN_BAD}
    """
)


def test_bank_fields_are_validated_with_their_line() -> None:
    names = set(builtin_signals())
    policy = load_policy_text(BANK_POLICY, signals=names)
    assert policy.categories[0].bank is not None
    assert policy.categories[0].bank.max_distance == 31
    assert policy.categories[0].bank.min_quality == 50
    bad = BANK_POLICY.replace("max_distance: 31", "max_distance: 99")
    with pytest.raises(
        PolicyValidationError,
        match=r"known.yaml:9: categories\[0\]\.bank\.max_distance: Input should be less than",
    ):
        load_policy_text(bad, source="known.yaml", signals=names)
    missing = BANK_POLICY.replace("    bank: {name: known-bad, max_distance: 31}\n", "")
    with pytest.raises(PolicyValidationError, match="a hash_bank category needs a bank"):
        load_policy_text(missing, signals=names)
    stray = BANK_POLICY.replace("signal: hash_bank", "prompts: [a red star]")
    with pytest.raises(PolicyValidationError, match=r"bank: only for signal 'hash_bank'"):
        load_policy_text(stray, signals=names)


@pytest.fixture
def banked(scoring: Any) -> dict[str, Any]:
    """The test world's policy and the bank policy, scored by a moderator whose hash-bank
    signal matches against a bank holding one test-world image."""
    encoder = scoring.model.encoder
    store = MemoryBankStore()
    service = BankService(store)
    service.create("known-bad")
    loaded = LoadedBanks()
    signals = builtin_signals(loaded)
    known = load_policy_text(BANK_POLICY, signals=set(signals))
    world = scoring.policies.current.policies["testworld"]
    policies = ActivePolicies(
        load=lambda: PolicySet([(world, "testworld.yaml"), (known, "known.yaml")]),
        compile=lambda ps: [compile_policy(ps[pid], encoder) for pid in ps],
        fingerprint=lambda: "fixed",
        signals=signals,
    )
    moderator = Moderator(encoder=encoder, decoder=DECODER, policies=policies)
    # An image the prompts allow (a yellow heart) with a hash of usable quality.
    for seed in range(50):
        allowed = testmodel.render("yellow", "heart", seed=seed).resize((384, 384))
        feature = image_feature(DECODER, _png(allowed))
        prepared = scoring.moderator.prepare(_png(allowed))
        if feature.quality >= 60 and scoring.moderator.moderate([prepared])[0].decision is (
            Decision.ALLOW
        ):
            break
    else:
        raise AssertionError("no allowed test-world image with a usable hash")
    service.add(
        "known-bad",
        [
            EntryData(
                pdq=feature.hex,
                label="known bad meme",
                source="unit-test",
                reference_id="TE-1",
                quality=feature.quality,
            )
        ],
    )
    sync = BankSync(store, loaded, background=False)
    sync.load()
    return {"moderator": moderator, "image": allowed, "service": service, "sync": sync}


def test_a_banked_image_is_blocked_with_its_match_explained(banked: dict[str, Any]) -> None:
    moderator: Moderator = banked["moderator"]
    copy = moderator.prepare(_jpeg(banked["image"], 50))  # a re-encoded copy
    assert set(copy.fingerprints) == {"pdq", "pdq_quality"}
    verdict = moderator.moderate([copy])[0]
    assert verdict.decision is Decision.BLOCK and verdict.category_id == "banked"
    assert verdict.reason_code == "KNOWN_BAD"
    top = verdict.deciding
    assert top is not None and top.signal == "hash_bank"
    details = top.evidence[0].details
    assert details["bank"] == "known-bad" and details["entry_id"] == 0
    assert details["label"] == "known bad meme" and details["reference_id"] == "TE-1"
    assert details["source"] == "unit-test" and details["added_at"]
    assert 0 <= details["distance"] <= 31 and details["quality"] >= 50
    assert top.score == pytest.approx(1 - details["distance"] / 256)
    assert "blocked: known/banked (critical)" in verdict.explain()
    # every category was scored: the prompts of the test world too (the most severe wins)
    assert set(verdict.scores) >= {"known/banked", "testworld/contraband_symbol"}
    record = record_for_verdict(
        job_id="j", verdict=verdict, content_sha256=copy.content_sha256, content_ref="mem://j"
    )
    assert record.details["signal"] == "hash_bank"
    assert record.details["evidence"][0]["details"]["entry_id"] == 0
    json.dumps(record.details)  # the record is plain JSON


def test_a_bank_match_and_a_prompt_score_meet_in_the_most_severe_rule(
    banked: dict[str, Any],
) -> None:
    """A borderline image the prompts send to review (critical category) is blocked once it is
    banked; the verdict lists both categories, the block first, each with its own evidence."""
    moderator: Moderator = banked["moderator"]
    image = testmodel.sample_images("review", 3, seed=1)[2][0]  # crimson-magenta star
    prepared = moderator.prepare(_png(image))
    before = moderator.moderate([prepared])[0]
    assert before.decision is Decision.REVIEW and before.category_id == "contraband_symbol"
    banked["service"].add("known-bad", [EntryData(pdq=prepared.fingerprints["pdq"])])
    banked["sync"].refresh()
    after = moderator.moderate([moderator.prepare(_png(image))])[0]
    assert after.decision is Decision.BLOCK and after.category_id == "banked"
    shown = [(c.category_id, c.decision, c.signal) for c in after.categories]
    assert shown[:2] == [
        ("banked", Decision.BLOCK, "hash_bank"),
        ("contraband_symbol", Decision.REVIEW, "prompts"),
    ]
    assert after.categories[1].evidence[0].signal == "prompts"


def test_unrelated_flat_and_removed_images_do_not_match(banked: dict[str, Any]) -> None:
    moderator: Moderator = banked["moderator"]
    different = moderator.prepare(_png(world_images(1, seed=77, size=384)[0]))
    verdict = moderator.moderate([different])[0]
    assert verdict.scores["known/banked"] == 0.0
    flat_image = Image.new("RGB", (384, 384), (90, 90, 90))
    flat = moderator.prepare(_png(flat_image))
    assert flat.fingerprints["pdq_quality"] < 50
    # a flat image must not match even an entry with its very hash
    banked["service"].add("known-bad", [EntryData(pdq=flat.fingerprints["pdq"])])
    banked["sync"].refresh()
    scored = moderator.moderate([flat])[0]
    assert scored.scores["known/banked"] == 0.0
    scores = moderator.policies.current.scorer(None).score(_batch(moderator, flat))
    (evidence,) = scores.evidence(np.array([0]), np.array([_column(moderator, "known/banked")]))
    assert evidence[0].label.startswith("hash quality") and "not matched" in evidence[0].label
    banked["service"].remove("known-bad", ids=[0])
    banked["sync"].refresh()
    copy = moderator.prepare(_jpeg(banked["image"], 50))
    assert moderator.moderate([copy])[0].scores["known/banked"] == 0.0


def _batch(moderator: Moderator, image: Any) -> Any:
    from moderation.core.scoring import FeatureBatch

    embeddings = moderator.embed(list(image.inputs))
    return FeatureBatch(embeddings=embeddings, features=image.features)


def _column(moderator: Moderator, key: str) -> int:
    slots = moderator.policies.current.scorer(None).slots
    return next(s.column for s in slots if s.key == key)


def test_the_feature_queries_both_variants() -> None:
    feature = PdqFeature(b"\x00" * 32, 80, (b"\xff" * 32, 60))
    assert [v for _, _, v in feature.queries()] == ["frame", "without border"]


def test_robustness_helpers_draw_distinct_images() -> None:
    images = world_images(4, seed=1, size=128)
    assert len({im.tobytes() for im in images}) == 4 and images[0].size == (128, 128)


def test_a_banked_image_inside_a_video_is_found_with_each_frames_hash(
    banked: dict[str, Any],
) -> None:
    """The sampled frames of a video are matched against the photo banks: a banked image shown
    from 3 s to 5 s of a clip blocks it, with the segment; every sample carries its PDQ hash
    (vPDQ-style: frame number, timestamp, quality, hash)."""
    from moderation.compose.registries import media_decoder
    from moderation.settings import Settings
    from moderation.testmodel.clips import Shot, background_image, clip

    video_moderator = Moderator(
        encoder=banked["moderator"].encoder,
        decoder=media_decoder(Settings()),
        policies=banked["moderator"].policies,
    )
    data = clip(
        [Shot(3, background_image()), Shot(2, banked["image"]), Shot(3, background_image())],
        size=(384, 384),
        noise=0.0,
    )
    prepared = video_moderator.prepare(data)
    verdict = video_moderator.moderate([prepared])[0]
    assert verdict.decision is Decision.BLOCK and verdict.category_id == "banked"
    assert verdict.video is not None
    (segment,) = [s for s in verdict.video.segments if s.category == "known/banked"]
    assert 2.9 <= segment.start_s <= 3.2 and 5.0 <= segment.end_s <= 5.3
    hashes = verdict.video.frame_hashes
    assert len(hashes) == verdict.video.frames_scored >= 8
    assert [h.timestamp_s for h in hashes] == verdict.video.timestamps
    assert all(len(h.pdq) == 64 and 0 <= h.quality <= 100 for h in hashes)
    assert hashes[0].frame_number == 0 and hashes[-1].frame_number == round(
        hashes[-1].timestamp_s * 10
    )
