"""vPDQ: the formats of ThreatExchange and Meta's reference ``vpdq``, ThreatExchange's matching
rule, and video banks on the in-memory twin and on a real PostgreSQL: a banked clip inside an
upload blocks it with the segment where it appears; a re-encoded, resized copy still matches;
an unrelated video does not."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from psycopg_pool import ConnectionPool

from moderation.adapters.memory import MemoryBankStore
from moderation.adapters.policy_files import load_policy_text
from moderation.adapters.postgres.banks import PostgresBankStore
from moderation.core.decision import Decision
from moderation.core.policy import PolicySet
from moderation.core.vpdq import (
    VpdqFormatError,
    VpdqFrame,
    VpdqRule,
    format_signal,
    format_text,
    match_brute,
    match_shares,
    parse_signal,
    parse_text,
    prepared,
)
from moderation.exceptions import BankError, BankExists, BankFileError
from moderation.pipeline.bank_sync import BankSync
from moderation.pipeline.moderator import Moderator
from moderation.pipeline.policies import ActivePolicies
from moderation.pipeline.video_banks import (
    VpdqFormat,
    export_video,
    frames_of_verdict,
    hash_video,
    import_video,
    parse_vpdq,
    remove_video,
    videos,
)
from moderation.ports import BankStore
from moderation.signals import LoadedBanks, builtin_signals
from moderation.testmodel.clips import Shot, clip
from moderation.testmodel.robustness import world_images

H0 = "f" * 64
H1 = "0" * 64


def _hex(rng: np.random.Generator) -> str:
    return bytes(rng.integers(0, 256, 32, np.uint8)).hex()


def _flip(pdq: str, bits: int) -> str:
    value = int(pdq, 16) ^ ((1 << bits) - 1)
    return f"{value:064x}"


# --- formats -------------------------------------------------------------------------------


def test_the_reference_text_format_round_trips() -> None:
    text = f"0,100,{H0},0.000\n1,49,{H1},1.000\n25,87,{H0},1.042\n"
    frames = parse_text(text)
    assert frames[2] == VpdqFrame(25, 87, H0, 1.042)
    assert format_text(frames) == text
    assert parse_text("# a comment\n\n" + text.upper().replace("F", "f")) == frames


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no frames"),
        (f"0,100,{H0}\n", "line 1: expected frame_number,quality,hash,timestamp"),
        (f"0,100,{H0},0.0\nx,1,{H0},1.0\n", "line 2: not a number"),
        (f"0,101,{H0},0.0\n", "line 1: quality 101 outside 0-100"),
        ("0,100,abc,0.0\n", "line 1: not a 64-digit hexadecimal PDQ hash"),
        (f"0,100,{H0},-1\n", "line 1: invalid timestamp"),
        (f"0,100,{H0},nan\n", "line 1: invalid timestamp"),
    ],
)
def test_a_malformed_text_file_names_its_line(text: str, message: str) -> None:
    with pytest.raises(VpdqFormatError, match=message):
        parse_text(text)


def test_threatexchanges_signal_string_round_trips() -> None:
    # As VPDQSignal.get_examples() builds it: "hash,quality,timestamp" with Python's :.3 format.
    signal = json.dumps([f"{H0},100,0.0", f"{H1},100,1.0", f"{H0},87,12.5"])
    frames = parse_signal(signal)
    assert [(f.frame_number, f.quality, f.timestamp_s) for f in frames] == [
        (0, 100, 0.0),
        (1, 100, 1.0),
        (2, 87, 12.5),
    ]
    assert format_signal(frames) == signal
    with pytest.raises(VpdqFormatError, match="JSON"):
        parse_signal("[not json")
    with pytest.raises(VpdqFormatError, match="frame 0: expected 'hash,quality,timestamp'"):
        parse_signal(json.dumps([1]))
    with pytest.raises(BankFileError, match=r"clip\.json: .*no frames"):
        parse_vpdq("[]", source="clip.json")
    assert parse_vpdq(signal) == frames and parse_vpdq(format_text(frames)) == frames


# --- ThreatExchange's matching rule ----------------------------------------------------------


def test_low_quality_frames_are_dropped_and_repeats_kept_once() -> None:
    frames = [VpdqFrame(0, 100, H0, 0), VpdqFrame(1, 49, H1, 1), VpdqFrame(2, 90, H0, 2)]
    assert prepared(frames) == [frames[0]]


def test_shares_follow_threatexchanges_brute_matcher() -> None:
    rng = np.random.default_rng(5)
    banked = [VpdqFrame(i, 90, _hex(rng), float(i)) for i in range(10)]
    # The upload: 8 of the banked frames, each 31 bits off (a match), 2 frames 32 bits off
    # (no match), and 2 flat frames of quality 20 (dropped).
    query = [VpdqFrame(i, 80, _flip(banked[i].pdq, 31), float(i)) for i in range(8)]
    query += [VpdqFrame(8 + i, 80, _flip(banked[8 + i].pdq, 32), 8.0 + i) for i in range(2)]
    query += [VpdqFrame(10 + i, 20, banked[i].pdq, 10.0 + i) for i in range(2)]
    shares = match_brute(query, banked)
    assert (shares.query_percent, shares.indexed_percent) == (80.0, 80.0)
    assert VpdqRule().matched(shares)  # ThreatExchange: query >= 80 %, indexed >= 0 %
    assert not VpdqRule(query_percent=80.1).matched(shares)
    assert not VpdqRule(indexed_percent=90).matched(shares)
    assert match_brute(query, banked, VpdqRule(max_distance=30)).query_percent == 0.0
    # A banked frame matched by two query frames counts once in the indexed share.
    twice = [VpdqFrame(0, 80, banked[0].pdq, 0), VpdqFrame(1, 80, _flip(banked[0].pdq, 1), 1)]
    assert match_brute(twice, banked) == match_shares(2, 10, [(0, 0), (1, 0)])
    with pytest.raises(ValueError, match="at least one frame"):
        match_brute([VpdqFrame(0, 10, H0, 0)], banked)


# --- video banks over a store ------------------------------------------------------------------


VIDEO_POLICY = textwrap.dedent(
    """\
    id: videos
    version: 1
    description: Known-bad videos, by vPDQ.
    categories:
      - id: known_video
        description: An upload that is mostly a banked video (ThreatExchange's vPDQ rule).
        severity: critical
        signal: hash_bank
        bank: {name: known-videos, vpdq: {}}
        thresholds: {review: 0.5, block: 0.85}
        actions:
          block: {action: remove, reason_code: KNOWN_VIDEO}
      - id: known_clip
        description: A banked video found inside a longer upload.
        severity: high
        signal: hash_bank
        bank: {name: known-videos, vpdq: {query_share: 20, indexed_share: 60}}
        thresholds: {review: 0.5, block: 0.85}
        actions:
          block: {action: remove, reason_code: KNOWN_CLIP}
    """
)


def _shots(images: list[Any], seconds: float) -> list[Shot]:
    return [Shot(seconds, image) for image in images]


@pytest.fixture(scope="module")
def clips() -> dict[str, bytes]:
    """The banked clip (four scenes, 1.5 s each), an upload holding it between unrelated scenes,
    a re-encoded and resized copy of it, and an unrelated video. Generated, never committed."""
    scenes = world_images(4, seed=11, size=256)
    other = world_images(6, seed=29, size=256)
    return {
        "banked": clip(_shots(scenes, 1.5), size=(256, 256), seed=1),
        "inside": clip(
            _shots(other[:2], 2.0) + _shots(scenes, 1.5) + _shots(other[2:4], 2.0),
            size=(256, 256),
            seed=2,
        ),
        "copy": clip(_shots(scenes, 1.5), size=(320, 320), fps=15, noise=4.0, seed=3),
        "unrelated": clip(_shots(other, 1.5), size=(256, 256), seed=4),
    }


class VideoWorld:
    def __init__(self, scoring: Any, store: BankStore) -> None:
        from moderation.compose.registries import media_decoder
        from moderation.settings import Settings

        self.store = store
        self.decoder = media_decoder(Settings())
        store.create("known-videos")
        self.loaded = LoadedBanks()
        signals = builtin_signals(self.loaded)
        policy = load_policy_text(VIDEO_POLICY, signals=set(signals))
        encoder = scoring.model.encoder
        from moderation.core.compiled import compile_policy

        policies = ActivePolicies(
            load=lambda: PolicySet([(policy, "videos.yaml")]),
            compile=lambda ps: [compile_policy(ps[pid], encoder) for pid in ps],
            fingerprint=lambda: "fixed",
            signals=signals,
        )
        self.moderator = Moderator(encoder=encoder, decoder=self.decoder, policies=policies)
        self.sync = BankSync(store, self.loaded, background=False)
        self.sync.load()

    def verdict(self, data: bytes) -> Any:
        self.sync.refresh()
        return self.moderator.moderate([self.moderator.prepare(data)])[0]


def _flow(world: VideoWorld, clips: dict[str, bytes]) -> None:
    # The banked clip's vPDQ file, as a partner would send it, imported by its text.
    text = format_text(hash_video(world.decoder, clips["banked"]))
    frames = parse_vpdq(text, source="clip.vpdq")
    assert len(frames) >= 4 and all(f.quality >= 50 for f in frames)
    report = import_video(
        world.store, "known-videos", frames, video="TE-clip-1", label="known clip", source="te"
    )
    assert report.frames == len(frames) and report.matching_frames >= 4
    assert videos(world.store, "known-videos") == {"TE-clip-1": len(frames)}
    assert export_video(world.store, "known-videos", "TE-clip-1") == text
    assert parse_signal(
        export_video(world.store, "known-videos", "TE-clip-1", VpdqFormat.SIGNAL)
    ) == [VpdqFrame(k, f.quality, f.pdq, f.timestamp_s) for k, f in enumerate(frames)]
    with pytest.raises(BankExists):
        import_video(world.store, "known-videos", frames, video="TE-clip-1")

    # The upload holding the clip from 4 s to 10 s: the clip rule blocks it, with the segment;
    # ThreatExchange's default (80 % of the upload) does not, the clip being 6 s of 14.
    inside = world.verdict(clips["inside"])
    assert inside.decision is Decision.BLOCK and inside.reason_code == "KNOWN_CLIP"
    # The verdict keeps each sampled frame's vPDQ record, hashed as a banked video is hashed.
    assert inside.video is not None
    kept = frames_of_verdict(inside.video.frame_hashes)
    assert parse_text(format_text(kept)) == kept == hash_video(world.decoder, clips["inside"])
    assert inside.scores["videos/known_video"] == 0.0
    assert inside.video is not None
    (segment,) = [s for s in inside.video.segments if s.category == "videos/known_clip"]
    assert 3.5 <= segment.start_s <= 4.6 and 9.4 <= segment.end_s <= 10.6
    evidence = inside.deciding.evidence if inside.deciding else []
    details = next(e.details for e in evidence if e.details.get("video") == "TE-clip-1")
    assert details["indexed_share"] >= 60 and details["label"] == "known clip"
    assert details["frame_number"] is not None and details["match"] == "vpdq"

    # A re-encoded copy at another size, frame rate and noise: ThreatExchange's rule matches.
    copy = world.verdict(clips["copy"])
    assert copy.decision is Decision.BLOCK and copy.reason_code == "KNOWN_VIDEO"
    assert copy.scores["videos/known_video"] >= 0.85

    # An unrelated video matches neither rule.
    unrelated = world.verdict(clips["unrelated"])
    assert unrelated.decision is Decision.ALLOW
    assert unrelated.scores["videos/known_video"] == unrelated.scores["videos/known_clip"] == 0.0

    # Removing the banked video (tombstones, as for photos) stops the match.
    assert remove_video(world.store, "known-videos", "TE-clip-1") == len(frames)
    assert world.verdict(clips["copy"]).decision is Decision.ALLOW
    assert videos(world.store, "known-videos") == {}


def test_a_video_bank_on_the_memory_twin(scoring: Any, clips: dict[str, bytes]) -> None:
    _flow(VideoWorld(scoring, MemoryBankStore()), clips)


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[PostgresBankStore]:
    pool = ConnectionPool(pg_url, min_size=1, max_size=4, open=True)
    try:
        yield PostgresBankStore(pool)
    finally:
        pool.close()


def test_a_video_bank_on_postgresql(
    scoring: Any, clips: dict[str, bytes], pg_store: PostgresBankStore
) -> None:
    _flow(VideoWorld(scoring, pg_store), clips)


def test_a_video_without_usable_frames_is_refused() -> None:
    store = MemoryBankStore()
    store.create("v")
    with pytest.raises(BankError, match="no frame of quality 50"):
        import_video(store, "v", [VpdqFrame(0, 10, H0, 0.0)], video="flat")


def test_the_bank_cli_hashes_imports_exports_and_removes_a_video(
    test_model_settings: Any, pg_url: str, clips: dict[str, bytes], tmp_path: Any
) -> None:
    from pydantic import SecretStr
    from typer.testing import CliRunner

    from moderation.cli import app as cli_app

    settings = test_model_settings.model_copy(
        update={
            "redis_url": None,
            "database": test_model_settings.database.model_copy(
                update={"url": SecretStr(pg_url), "pool_max_size": 2}
            ),
        }
    )
    env = settings.to_env(base={})

    def cli(*args: str) -> Any:
        return CliRunner().invoke(cli_app, ["bank", *args], env=env)

    video = tmp_path / "clip.mp4"
    video.write_bytes(clips["banked"])
    assert cli("create", "cli-videos").exit_code == 0
    hashed = cli("hash-video", str(video))
    assert hashed.exit_code == 0, hashed.output
    frames = parse_text(hashed.stdout)
    assert len(frames) >= 4
    signal = cli("hash-video", str(video), "--format", "signal")
    assert parse_signal(signal.stdout) == [
        VpdqFrame(k, f.quality, f.pdq, f.timestamp_s) for k, f in enumerate(frames)
    ]
    text_file = tmp_path / "clip.vpdq"
    text_file.write_text(hashed.stdout)
    imported = cli("import-video", "cli-videos", str(text_file), "--video", "k1", "--label", "x")
    assert imported.exit_code == 0, imported.output
    assert f"{len(frames)} frames" in imported.stdout
    exported = cli("export-video", "cli-videos", "k1")
    assert exported.exit_code == 0 and exported.stdout == hashed.stdout
    bad = tmp_path / "bad.vpdq"
    bad.write_text(hashed.stdout + "7,100,nothex,1.0\n")
    refused = cli("import-video", "cli-videos", str(bad), "--video", "k2")
    assert refused.exit_code == 1
    assert f"line {len(frames) + 1}: not a 64-digit" in refused.output
    assert cli("remove-video", "cli-videos", "k1").exit_code == 0
    assert cli("remove-video", "cli-videos", "k1").exit_code == 1


def test_a_video_frame_entry_keeps_its_video_in_compact_metadata() -> None:
    """What the Redis store keeps beside the hash round-trips a video frame's fields."""
    from moderation.core.banks import EntryData

    entry = EntryData(
        pdq=H0, quality=90, video="v1", frame_number=25, timestamp_s=1.042, video_frames=7
    )
    assert EntryData.from_meta(H0, entry.meta()) == entry
    photo = EntryData(pdq=H1, quality=80)
    assert "v" not in photo.meta() and EntryData.from_meta(H1, photo.meta()) == photo


# --- agreement with Meta's reference vpdq (committed reference hashes of generated clips) ------


@pytest.mark.parametrize("name", ["scenes-256", "scenes-256-15fps"])
def test_our_hashes_agree_with_the_reference_vpdq_on_generated_clips(name: str) -> None:
    """tests/data/vpdq/ holds what Meta's reference ``vpdq`` (0.2.5, built from PyPI's source)
    computed for every frame of two generated clips (``bench/vpdq_agreement.py
    --write-fixtures``). Every frame hashed at its decoded size (PyAV + Meta's PDQ) is within a
    few bits of it; the sampled frames moderation stores (hashed at the scoring size) match the
    reference hash under ThreatExchange's rule, every frame within 31 bits."""
    import hashlib
    import io
    from pathlib import Path

    import av
    import pdqhash

    from moderation.compose.registries import media_decoder
    from moderation.core.vpdq import hamming
    from moderation.settings import Settings
    from moderation.testmodel.clips import vpdq_fixture_clip

    text = (Path(__file__).parent / "data" / "vpdq" / f"{name}.txt").read_text()
    data = vpdq_fixture_clip(name)
    recorded = text.splitlines()[1].split()[-1]
    assert hashlib.sha256(data).hexdigest() == recorded, (
        "the generated clip changed (PyAV or the clip generator): regenerate the reference"
        " hashes with bench/vpdq_agreement.py --write-fixtures tests/data/vpdq"
    )
    reference = parse_text(text)
    by_number = {f.frame_number: f for f in reference}

    full = []
    with av.open(io.BytesIO(data)) as container:
        for number, frame in enumerate(container.decode(video=0)):
            bits, quality = pdqhash.compute(frame.to_ndarray(format="rgb24"))
            digest = np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex()
            full.append((hamming(digest, by_number[number].pdq), quality))
    assert len(full) == len(reference)
    assert max(d for d, _ in full) <= 8 and sum(d == 0 for d, _ in full) >= 0.75 * len(full)
    assert [q for _, q in full] == [f.quality for f in reference]

    ours = hash_video(media_decoder(Settings()), data)
    assert len(ours) >= 7
    assert all(hamming(f.pdq, by_number[f.frame_number].pdq) <= 31 for f in ours)
    shares = match_brute(ours, reference)
    assert VpdqRule().matched(shares) and shares.query_percent == 100.0
