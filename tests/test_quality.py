"""The policy-quality tools on the test model (real forward passes), with labelled sets drawn by
the test world's generator: eval, calibrate, exemplars, the bulk decision rule, backtests over
stored embeddings, shadow versions over the in-memory twins, and promotion."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from typer.testing import CliRunner

from moderation import testmodel
from moderation.adapters.compile_cache import CompileCache
from moderation.adapters.memory import (
    MemoryAuditSink,
    MemoryBlobStore,
    MemoryCallbacks,
    MemoryDeliveryLog,
    MemoryHistoryFormat,
    MemoryJobStore,
    MemoryPolicyFiles,
    MemoryPublisher,
    MemoryRateLimiter,
    MemoryReviewQueue,
    MemorySource,
    MemoryWorkerRegistry,
)
from moderation.adapters.policy_files import (
    PolicyFolder,
    edit_policy_text,
    load_policies,
    load_policy_file,
    load_policy_text,
)
from moderation.cli import app
from moderation.compose.scoring import Scoring, build_scoring
from moderation.core.admission import Tenant
from moderation.core.decision import Decision, decisions, verdicts
from moderation.core.embeddings import HistoryBatch, StoredEmbedding
from moderation.core.policy import PolicyMode, policy_hash
from moderation.core.scoring import FeatureBatch
from moderation.exceptions import EmbeddingModelMismatch, PolicyValidationError, QualityError
from moderation.metrics import metrics
from moderation.pipeline.backtest import backtest
from moderation.pipeline.batching import MicroBatcher
from moderation.pipeline.history import EmbeddingHistory
from moderation.pipeline.history_shards import HistoryShards
from moderation.pipeline.outcomes import Outcomes
from moderation.pipeline.process import Processor
from moderation.pipeline.promote import promote
from moderation.pipeline.score import score_local
from moderation.pipeline.sources import ImageSources, InlineSource
from moderation.pipeline.submit import PolicyCatalog, SubmitRequest, Submitter
from moderation.settings import EmbeddingSettings, QueueSettings, Settings
from moderation.testmodel import world
from moderation.testmodel.evaluate import write_dataset
from moderation.testmodel.samples import encoded

TESTWORLD = testmodel.POLICY_PATH.read_text()
KEYS = [f"testworld/{c}" for c in world.CATEGORY_OBJECTS]


def _env(cache: Path, **extra: str) -> dict[str, str]:
    return {
        "MODERATION_MODEL__ARCHITECTURE": testmodel.MODEL_NAME,
        "MODERATION_MODEL__CHECKPOINT": str(testmodel.CHECKPOINT_PATH),
        "MODERATION_POLICY_PATHS": json.dumps([str(testmodel.POLICY_PATH)]),
        "MODERATION_CACHE_DIR": str(cache),
        "MODERATION_LOG_LEVEL": "WARNING",
        "COLUMNS": "200",
        **extra,
    }


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two disjoint labelled test-world sets on disk (images + labels.csv) and a policy copy."""
    root = tmp_path_factory.mktemp("quality")
    write_dataset(root / "calibration", 900, seed=101)
    write_dataset(root / "heldout", 900, seed=202)
    write_dataset(root / "small", 300, seed=303)
    (root / "policies").mkdir()
    shutil.copy(testmodel.POLICY_PATH, root / "policies" / "testworld.yaml")
    return {
        "calibration": root / "calibration",
        "heldout": root / "heldout",
        "small": root / "small",
        "policy": root / "policies" / "testworld.yaml",
        "root": root,
    }


def _invoke(args: list[str], env: dict[str, str]) -> Any:
    return CliRunner().invoke(app, args, env=env, catch_exceptions=False)


# --- eval --------------------------------------------------------------------------------------


def test_eval_reports_every_metric_and_a_self_contained_report(
    sets: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "report"
    result = _invoke(
        ["eval", str(sets["small"]), "--policy", str(sets["policy"]), "--out", str(out), "--json"],
        _env(tmp_path / "cache"),
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["n_items"] == report["n_scored"] == 300 and report["errors"] == {}
    assert [c["key"] for c in report["categories"]] == KEYS
    for c in report["categories"]:
        assert c["positives"] >= 12 and c["negatives"] >= 240
        assert c["n"] == sum(sum(row.values()) for row in c["confusion"].values())
        for band in ("block", "flagged"):
            assert 0.0 <= c[band]["precision"] <= 1.0 and c[band]["precision_ci"]["low"] <= 1
        assert c["roc_auc"] > 0.95 and c["roc_auc_ci"]["low"] <= c["roc_auc"]
        assert c["average_precision"] > 0.9 and 0.0 <= c["review_load"] < 0.2
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(
        ["report.html", "report.json"]
        + [
            f"{kind}-testworld-{c.replace('_', '_')}.png"
            for kind in ("hist", "pr")
            for c in world.CATEGORY_OBJECTS
        ]
    )
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 6
    assert 'src="http' not in html and "<link" not in html and "<script" not in html


# --- calibrate ---------------------------------------------------------------------------------


def test_calibrate_meets_its_target_precision_on_a_held_out_split(
    sets: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    live = folder / "testworld.yaml"
    shutil.copy(sets["policy"], live)
    before = live.read_bytes()
    env = _env(tmp_path / "cache")
    result = _invoke(
        [
            "calibrate",
            str(sets["calibration"]),
            "--policy",
            str(live),
            "--target-precision",
            "0.9",
            "--target-recall",
            "0.9",
        ],
        env,
    )
    assert result.exit_code == 0, result.output
    assert live.read_bytes() == before  # the live policy is never changed in place
    new = folder / "testworld.v2.yaml"
    candidate = load_policy_file(new)
    assert candidate.version == 2 and candidate.mode is PolicyMode.SHADOW
    assert "+++ " + str(new) in result.output and "-version: 1" in result.output
    assert "+mode: shadow" in result.output
    # the folder stays loadable: live v1 plus the v2 shadow
    folder_set = load_policies([folder])
    assert folder_set["testworld"].version == 1 and folder_set.shadow("testworld") == candidate

    evaluated = _invoke(
        [
            "eval",
            str(sets["heldout"]),
            "--policy",
            str(new),
            "--out",
            str(tmp_path / "r"),
            "--json",
        ],
        env,
    )
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout.splitlines()[-1])
    hand = load_policy_file(live)
    for c in report["categories"]:
        category = candidate.category(c["category_id"])
        assert c["block_threshold"] == category.thresholds.block
        assert c["block"]["precision"] >= 0.9, c  # the target holds on data it never saw
        assert c["flagged"]["recall"] >= 0.9, c
        old = hand.category(c["category_id"]).thresholds
        assert (category.thresholds.review, category.thresholds.block) != (old.review, old.block)


def test_calibrate_says_when_the_data_cannot_support_the_target(
    sets: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    live = folder / "testworld.yaml"
    shutil.copy(sets["policy"], live)
    result = _invoke(
        [
            "calibrate",
            str(sets["small"]),
            "--policy",
            str(live),
            "--target-precision",
            "0.999",
            "--category",
            "restricted_logo",
        ],
        _env(tmp_path / "cache"),
    )
    assert result.exit_code == 1
    assert "cannot support 99.9% precision" in result.output
    assert "takes at least 3838 blocked violating images" in result.output
    assert "nothing written" in result.output
    assert sorted(p.name for p in folder.iterdir()) == ["testworld.yaml"]


# --- exemplars ---------------------------------------------------------------------------------


def _fixed_set() -> list[tuple[str, bytes, tuple[str, ...] | None]]:
    """(name, bytes, labels; None for the clear band examples) of a fixed set."""
    out: list[tuple[str, bytes, tuple[str, ...] | None]] = [
        (f"{band}:{label}:{i}", encoded(image), None)
        for band in ("block", "allow", "review")
        for i, (image, label) in enumerate(world.sample_images(band, 10, 77))
    ]
    for i, item in enumerate(world.labelled_images(120, 5)):
        out.append((f"{i}:{item.description}", encoded(item.image), item.labels))
    return out


def _decide(scoring: Scoring, images: list[tuple[str, bytes, Any]]) -> list[Any]:
    items = [(name, lambda data=data: data) for name, data, _ in images]
    return [r.verdict for r in score_local(items, scoring.moderator)]


def test_an_exemplar_flips_a_known_false_positive_and_nothing_else(
    tmp_path: Path, test_model_settings: Settings, scoring: Scoring
) -> None:
    fixed = _fixed_set()
    base = _decide(scoring, fixed)
    false_positive = next(
        i
        for i, ((_, _, labels), verdict) in enumerate(zip(fixed, base, strict=True))
        if labels == () and verdict.decision is not Decision.ALLOW
    )
    name, data, _ = fixed[false_positive]
    category = base[false_positive].category_id
    (tmp_path / "exemplars").mkdir()
    (tmp_path / "exemplars" / "fp.png").write_bytes(data)
    policy_file = tmp_path / "testworld.yaml"
    policy_file.write_text(
        TESTWORLD.replace(
            f"  - id: {category}\n",
            f"  - id: {category}\n    exemplars:\n      radius: 0.01\n"
            "      benign: [exemplars/fp.png]\n",
        )
    )
    settings = test_model_settings.model_copy(update={"cache_dir": tmp_path / "cache"})
    with_exemplar = build_scoring(settings, policy_paths=[policy_file])
    after = _decide(with_exemplar, fixed)
    changed = [
        fixed[i][0]
        for i, (a, b) in enumerate(zip(base, after, strict=True))
        if a.decision is not b.decision
    ]
    assert changed == [name]
    assert after[false_positive].decision is Decision.ALLOW
    evidence = after[false_positive].categories[0].evidence
    assert any(e.details["kind"] == "benign_exemplar" for e in evidence) or (
        after[false_positive].scores[f"testworld/{category}"] < 0.05
    )
    # the exemplar is part of the compiled policy's hash and of the compile cache key
    compiled = with_exemplar.policies.current.by_id["testworld"]
    plain = scoring.policies.current.by_id["testworld"]
    assert compiled.policy_hash != plain.policy_hash
    assert compiled.compiled_hash != plain.compiled_hash
    exemplar = compiled.policy.category(category).exemplars
    assert exemplar is not None and exemplar.benign[0].sha256 is not None
    cache = CompileCache(settings.cache_dir)
    assert cache.path_for(compiled.policy, compiled.model) != cache.path_for(
        plain.policy, plain.model
    )
    reloaded = cache.load(compiled.policy, compiled.model)  # the cache keeps the exemplar too
    assert reloaded is not None
    np.testing.assert_array_equal(
        next(c for c in reloaded.categories if c.id == category).exemplar_benign,
        next(c for c in compiled.categories if c.id == category).exemplar_benign,
    )
    # replacing the image (same path) changes the hash
    (tmp_path / "exemplars" / "fp.png").write_bytes(fixed[0][1])
    assert policy_hash(load_policy_file(policy_file)) != compiled.policy_hash


def test_exemplar_problems_name_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "not-an-image.png").write_bytes(b"hello")
    text = TESTWORLD.replace(
        "  - id: restricted_logo\n",
        "  - id: restricted_logo\n    exemplars:\n      positive: [missing.png, /abs/x.png]\n"
        "      benign: [not-an-image.png]\n",
    )
    path = tmp_path / "p.yaml"
    path.write_text(text)
    line = text[: text.index("positive: [missing")].count("\n") + 1

    def check(data: bytes) -> None:
        from moderation.adapters.images import SafeDecoder
        from moderation.settings import ImageLimits

        SafeDecoder(ImageLimits()).decode(data)

    with pytest.raises(PolicyValidationError) as info:
        load_policy_file(path, check_image=check)
    messages = [str(i) for i in info.value.issues]
    assert messages[0].startswith(
        f"{path}:{line}: categories[2].exemplars.positive[0]: missing.png"
    )
    assert "must be relative to the policy file" in messages[1]
    assert "not-an-image.png: not a usable image (image_corrupt" in messages[2]
    with pytest.raises(PolicyValidationError, match="need a policy file"):
        load_policy_text(text)
    both = TESTWORLD.replace(
        "  - id: restricted_logo\n",
        "  - id: restricted_logo\n    exemplars: {positive: [a.png], benign: [a.png]}\n",
    )
    with pytest.raises(PolicyValidationError, match="both positive and benign"):
        load_policy_text(both)


# --- the bulk decision rule --------------------------------------------------------------------


def test_bulk_decisions_are_the_verdicts_decisions(scoring: Scoring) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 128)).astype(np.float32)
    images = [i.image for i in world.labelled_images(60, 9)]
    real = scoring.model.encoder.encode_images(images)
    batch = scoring.policies.current.scorer(None).score(
        FeatureBatch(embeddings=np.concatenate([real, x / np.linalg.norm(x, axis=1)[:, None]]))
    )
    rank, col, score = decisions(batch)
    for i, verdict in enumerate(verdicts(batch)):
        assert verdict.decision.rank == rank[i]
        assert verdict.deciding is not None
        assert (verdict.deciding.key, verdict.deciding.score) == (
            batch.slots[col[i]].key,
            pytest.approx(score[i]),
        )


# --- backtests ---------------------------------------------------------------------------------


def _shards() -> HistoryShards:
    return HistoryShards(MemoryBlobStore(), MemoryHistoryFormat())


def _history(scoring: Scoring, n: int, seed: int) -> tuple[HistoryShards, list[Any]]:
    """Decided items of ``n`` labelled images, kept as the workers keep them (one shard per
    50 items)."""
    from moderation.core.image_ref import ImageRef
    from moderation.core.jobs import Job

    shards = _shards()
    history = EmbeddingHistory(
        shards, writer="w1", settings=EmbeddingSettings(store=True, flush_rows=50)
    )
    images = [i.image for i in world.labelled_images(n, seed)]
    embeddings = scoring.model.encoder.encode_images(images)
    live = scoring.policies.current.verdicts(FeatureBatch(embeddings=embeddings))
    jobs = [Job(id=f"job-{i}", image=ImageRef(uri=f"mem://{i}")) for i in range(n)]
    for job, verdict, row in zip(jobs, live, embeddings, strict=True):
        assert history.record(job, verdict, row[None, :], content_sha256=None)
    history.close()
    return shards, live


def _stored(shards: HistoryShards) -> list[StoredEmbedding]:
    return [
        item
        for _, batch in shards.read_many([k.key for k in shards.keys(0)])
        for item in batch.items()
    ]


def _candidate(scoring: Scoring, tmp_path: Path, thresholds: dict[str, tuple[float, float]]) -> Any:
    path = tmp_path / "testworld.v2.yaml"
    path.write_text(
        edit_policy_text(TESTWORLD, version=2, mode=PolicyMode.SHADOW, thresholds=thresholds)
    )
    return scoring.compile([path]).current.by_id["testworld"]


def test_a_backtest_reports_exactly_the_items_whose_decision_changes(
    scoring: Scoring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shards, _ = _history(scoring, 300, 7)
    assert len(shards.keys(0)) == 6
    candidate = _candidate(
        scoring, tmp_path, {"contraband_symbol": (0.35, 0.58), "restricted_logo": (0.1, 0.5)}
    )
    # expected: every stored item decided by the live set and by the candidate set, as verdicts
    stored = _stored(shards)
    x = np.concatenate([item.embeddings for item in stored]).astype(np.float32)
    live = scoring.policies.current
    before = live.verdicts(FeatureBatch(embeddings=x))
    after = live.replacing(candidate).verdicts(FeatureBatch(embeddings=x))
    expected = {
        item.job_id: (b.decision.value, a.decision.value)
        for item, b, a in zip(stored, before, after, strict=True)
        if a.decision is not b.decision
    }
    assert 10 <= len(expected) < 300

    def no_images(*_: Any) -> Any:
        raise AssertionError("a backtest must not encode any image")

    monkeypatch.setattr(scoring.model.encoder, "encode_prepared", no_images)
    reports = [
        backtest(
            shards,
            live=live,
            candidate=candidate,
            since=0,
            examples=1000,
            shards_per_group=per_group,
        )
        for per_group in (1, 4, 100)
    ]
    report = reports[0]
    found = {c.job_id: (c.before.decision, c.after.decision) for c in report.examples}
    assert found == expected
    assert report.changed == len(expected) and report.scored == 300 and report.drift == 0
    assert sum(report.transitions.values()) == len(expected)
    assert sum(report.by_category.values()) == len(expected)
    assert report.live_version == 1 and report.candidate_version == 2
    assert (report.shards, report.groups, report.where) == (6, 6, "local")
    # however the shards are grouped, the same report (but for the timing, the grouping and
    # the retention limit, which moves with the clock)
    same = [{**r.to_dict(), "seconds": 0, "groups": 0, "since": ""} for r in reports]
    assert same[0] == same[1] == same[2]
    assert [c.order for c in report.examples] == sorted(c.order for c in report.examples)
    # the examples kept are the earliest changes
    few = backtest(shards, live=live, candidate=candidate, since=0, examples=3, shards_per_group=2)
    assert few.examples == report.examples[:3] and few.changed == report.changed


def test_a_backtest_refuses_embeddings_of_another_model(scoring: Scoring, tmp_path: Path) -> None:
    shards, _ = _history(scoring, 20, 8)
    candidate = _candidate(scoring, tmp_path, {"restricted_logo": (0.1, 0.5)})
    first = _stored(shards)[0]
    other = StoredEmbedding(
        job_id="other-1",
        model_id="ViT-B-32/laion2b_s34b_b79k",
        embeddings=np.zeros((1, 512), np.float16),
        at=first.at,
    )
    key = shards.keys(0)[0]
    shards.write(  # a redelivery stored twice, and an item of another model, in one shard
        key.key.replace("-w1-", "-w2-"),
        HistoryBatch.from_items([first]),
    )
    other_key = key.key.replace("-w1-", "-w3-")
    shards.write(other_key, HistoryBatch.from_items([other]))
    report = backtest(
        shards, live=scoring.policies.current, candidate=candidate, since=0, shards_per_group=10
    )
    assert report.refused == {"ViT-B-32/laion2b_s34b_b79k": 1}
    assert report.scored == 20 and report.duplicates == 1
    only_other = _shards()
    only_other.write(other_key, HistoryBatch.from_items([other]))
    with pytest.raises(EmbeddingModelMismatch, match="comes from another model"):
        backtest(only_other, live=scoring.policies.current, candidate=candidate, since=0)


def test_a_worker_scores_a_group_only_against_what_the_backtest_was_planned_with(
    scoring: Scoring, tmp_path: Path
) -> None:
    import dataclasses

    from moderation.core.backtest import BacktestTask
    from moderation.exceptions import BacktestMismatch
    from moderation.pipeline.backtest import ShardScoring, live_hashes
    from moderation.pipeline.backtest_tasks import WorkerBacktests

    shards, _ = _history(scoring, 60, 9)
    candidate = _candidate(scoring, tmp_path, {"restricted_logo": (0.1, 0.5)})
    text = (tmp_path / "testworld.v2.yaml").read_text()
    live = scoring.policies.current
    task = BacktestTask(
        policy_id="testworld",
        candidate_text=text,
        candidate_hash=candidate.policy_hash,
        live=live_hashes(live),
        model=live.model.id,
        since=0,
        examples=5,
    )
    compiled: list[str] = []

    def compile_candidate(received: str) -> Any:
        compiled.append(received)
        return candidate if received == text else live.by_id["testworld"]

    worker = WorkerBacktests(shards, live=lambda: live, compile_candidate=compile_candidate)
    keys = [k.key for k in shards.keys(0)]
    here = ShardScoring(shards, live=live, candidate=candidate, task=task).score(keys)
    assert worker.score(task, keys) == here and here.scored == 60
    worker.score(task, keys[:1])
    assert compiled == [text]  # compiled once per candidate, not per group
    for wrong, message in [
        (dataclasses.replace(task, live={"testworld": "0" * 64}), "other live policies"),
        (dataclasses.replace(task, model="ViT-L-14/openai"), "model"),
        (dataclasses.replace(task, candidate_hash="f" * 64, candidate_text="x"), "compiles to"),
    ]:
        with pytest.raises(BacktestMismatch, match=message) as caught:
            worker.score(wrong, keys)
        assert caught.value.code == "backtest_mismatch"


# --- shadow versions over the twins ------------------------------------------------------------


DEFAULT_TENANT = Tenant("default")


@pytest.fixture
def shadow_world(
    tmp_path: Path, test_model_settings: Settings
) -> Iterator[tuple[Processor, Submitter, MemoryAuditSink, MemoryJobStore, Scoring]]:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "testworld.yaml").write_text(TESTWORLD)
    (folder / "testworld.v2.yaml").write_text(
        edit_policy_text(
            TESTWORLD,
            version=2,
            mode=PolicyMode.SHADOW,
            thresholds={"contraband_symbol": (0.05, 0.1), "restricted_logo": (0.9, 0.99)},
        )
    )
    settings = test_model_settings.model_copy(
        update={"cache_dir": tmp_path / "cache", "policy_paths": [folder]}
    )
    scoring = build_scoring(settings)
    store, audit = MemoryJobStore(), MemoryAuditSink()
    deliveries = MemoryDeliveryLog(store)
    sources = ImageSources([MemorySource(), InlineSource(store)])
    queue = QueueSettings()
    submitter = Submitter(
        store=store,
        publisher=MemoryPublisher(),
        sources=sources,
        catalog=PolicyCatalog(MemoryWorkerRegistry(), lambda: set(scoring.policies.current.by_id)),
        settings=queue,
        check_callback_url=lambda url: None,
        limiter=MemoryRateLimiter(),
    )
    outcomes = Outcomes(
        store,
        deliveries=deliveries,
        audit=audit,
        callbacks=MemoryCallbacks(),
        review=MemoryReviewQueue(),
        policies=lambda: scoring.policies.current.policies,
    )
    encoder = scoring.model.encoder
    batcher: MicroBatcher[Any, NDArray[np.float32]] = MicroBatcher(
        lambda xs: list(encoder.encode_prepared(xs)), max_batch=8, max_wait_s=0.0
    )
    processor = Processor(
        store=store,
        deliveries=deliveries,
        sources=sources,
        moderator=scoring.moderator,
        batcher=batcher,
        outcomes=outcomes,
        settings=queue,
        history=EmbeddingHistory(_shards(), writer="w1", settings=EmbeddingSettings(store=True)),
    )
    yield processor, submitter, audit, store, scoring
    batcher.close()


def _counter(name: str, **labels: str) -> float:
    value = metrics().registry.get_sample_value(name, labels)
    return float(value or 0.0)


def test_a_shadow_version_never_changes_a_verdict_but_is_recorded_and_measured(
    shadow_world: tuple[Processor, Submitter, MemoryAuditSink, MemoryJobStore, Scoring],
    scoring: Scoring,
) -> None:
    processor, submitter, audit, store, shadowed = shadow_world
    current = shadowed.policies.current
    assert current.versions == {"testworld": 1} and current.shadow_versions == {"testworld": 2}
    images = [
        encoded(im)
        for band in ("block", "review", "allow")
        for im, _ in world.sample_images(band, 4, 55)
    ]
    live_only = [
        r.verdict
        for r in score_local(
            [(str(i), lambda d=d: d) for i, d in enumerate(images)], scoring.moderator
        )
    ]
    labels = {"policy": "testworld", "version": "2", "live": "review", "shadow": "block"}
    before = _counter("moderation_shadow_decisions_total", **labels)
    changed = 0
    for data, expected in zip(images, live_only, strict=True):
        job = submitter.submit([SubmitRequest(image_bytes=data)], tenant=DEFAULT_TENANT)[0]
        assert processor.process(job.id).outcome == "verdict"
        result = store.get_result(job.id)
        assert result is not None and result.verdict is not None and expected is not None
        got = result.verdict  # acted on: the live version only, exactly as without the shadow
        assert (got.decision, got.action, got.reason_code, got.category_id, got.policies) == (
            expected.decision,
            expected.action,
            expected.reason_code,
            expected.category_id,
            expected.policies,
        )
        assert got.scores == pytest.approx(expected.scores, abs=1e-4)
        assert [p.version for p in got.policies] == [1]
        record = next(r for r in audit.records if r.job_id == job.id)
        (shadow,) = record.details["shadow"]
        assert (shadow["policy_id"], shadow["version"], shadow["live_version"]) == (
            "testworld",
            2,
            1,
        )
        assert shadow["live_decision"] == expected.decision.value
        changed += shadow["decision"] != shadow["live_decision"]
    assert changed >= 2  # the shadow thresholds decide otherwise, and nothing acted on that
    assert _counter("moderation_shadow_decisions_total", **labels) > before


# --- promotion ---------------------------------------------------------------------------------


def test_promotion_is_audited_first_then_the_shadow_is_live(tmp_path: Path) -> None:
    live = load_policy_text(TESTWORLD)
    shadow = load_policy_text(
        edit_policy_text(
            TESTWORLD, version=2, mode=PolicyMode.SHADOW, thresholds={"restricted_logo": (0.3, 0.9)}
        )
    )
    files = MemoryPolicyFiles([(live, "testworld.yaml"), (shadow, "testworld.v2.yaml")])
    audit = MemoryAuditSink()
    done = promote("testworld", files=files, audit=audit, actor="alice", note="calibrated")
    (record,) = audit.records
    assert (record.kind, record.decision, record.actor, record.job_id) == (
        "policy",
        "promote",
        "alice",
        "policy/testworld",
    )
    assert record.policy_version == 2 and record.details["previous_version"] == 1
    assert record.details["policy_hash"] == policy_hash(shadow) and record.details["note"]
    now = files.load()
    assert now["testworld"].version == 2 and now.shadows() == []
    assert policy_hash(now["testworld"]) == policy_hash(shadow)  # measured == acted on
    assert done.previous_version == 1 and files.retired
    with pytest.raises(QualityError, match="no shadow version"):
        promote("testworld", files=files, audit=audit, actor="alice")
    # nothing changes unaudited
    files = MemoryPolicyFiles([(live, "testworld.yaml"), (shadow, "testworld.v2.yaml")])
    broken = MemoryAuditSink()
    broken.fail = QualityError("audit down")
    with pytest.raises(QualityError, match="audit down"):
        promote("testworld", files=files, audit=broken, actor="alice")
    assert files.load()["testworld"].version == 1


def test_promoting_files_keeps_the_folder_valid_at_every_step(tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    live = folder / "testworld.yaml"
    live.write_text(TESTWORLD)
    v2 = folder / "testworld.v2.yaml"
    v2.write_text(
        edit_policy_text(
            TESTWORLD, version=2, mode=PolicyMode.SHADOW, thresholds={"restricted_logo": (0.3, 0.9)}
        )
    )
    files = PolicyFolder([folder])
    seen: list[int] = []
    original = PolicyFolder.promote

    def watched(self: PolicyFolder, plan: dict[str, str]) -> None:
        import moderation.adapters.policy_files as pf

        write = pf.write_text_atomic

        def spy(path: Path, text: str) -> None:
            write(path, text)
            seen.append(load_policies([folder])["testworld"].version)  # valid after each step

        pf.write_text_atomic = spy  # type: ignore[assignment]
        try:
            original(self, plan)
        finally:
            pf.write_text_atomic = write  # type: ignore[assignment]

    PolicyFolder.promote = watched  # type: ignore[method-assign]
    try:
        promote("testworld", files=files, audit=MemoryAuditSink(), actor="bob")
    finally:
        PolicyFolder.promote = original  # type: ignore[method-assign]
    assert seen == [1, 2]
    assert sorted(p.name for p in folder.iterdir()) == ["retired", "testworld.yaml"]
    assert load_policy_file(live).version == 2 and load_policy_file(live).mode is PolicyMode.LIVE
    assert "mode: live" in live.read_text() and "# every other object" in live.read_text()
    assert load_policy_file(folder / "retired" / "testworld.v1.yaml").version == 1


def test_a_history_store_that_is_down_never_fails_a_job(
    shadow_world: tuple[Processor, Submitter, MemoryAuditSink, MemoryJobStore, Scoring],
) -> None:
    from moderation.exceptions import BlobStoreUnavailable

    processor, submitter, _, store, _ = shadow_world

    class Down(MemoryBlobStore):
        def put(self, key: str, data: bytes) -> None:
            raise BlobStoreUnavailable("object store down")

    processor.history = EmbeddingHistory(
        HistoryShards(Down(), MemoryHistoryFormat()), writer="w1", settings=EmbeddingSettings()
    )
    before = _counter("moderation_embeddings_stored_total", result="failed")
    data = encoded(world.sample_images("block", 1, 3)[0][0])
    job = submitter.submit([SubmitRequest(image_bytes=data)], tenant=DEFAULT_TENANT)[0]
    assert processor.process(job.id).outcome == "verdict"
    result = store.get_result(job.id)
    assert result is not None and result.verdict is not None
    processor.history.close()  # the orderly stop tries once more, then counts it
    assert _counter("moderation_embeddings_stored_total", result="failed") == before + 1
    kept = _shards()
    processor.history = EmbeddingHistory(kept, writer="w1", settings=EmbeddingSettings())
    again = submitter.submit([SubmitRequest(image_bytes=data)], tenant=DEFAULT_TENANT)[0]
    assert processor.process(again.id).outcome == "verdict"
    processor.history.close()
    (item,) = _stored(kept)
    assert (item.job_id, item.decision, item.model_id, item.tenant) == (
        again.id,
        "block",
        result.verdict.model,
        DEFAULT_TENANT.name,
    )
    assert item.embeddings.dtype == np.float16 and item.versions == {"testworld": 1}
    assert item.deciding == f"testworld/{result.verdict.category_id}"
