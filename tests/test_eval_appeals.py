"""``moderation eval`` beside production: the overturn rate of appeals decided against the
evaluated policies, per category and per policy version, read from PostgreSQL (the appeals'
home), in the JSON, the terminal table and the HTML report."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb
from typer.testing import CliRunner

from moderation import testmodel
from moderation.adapters.eval_report import render_html
from moderation.cli import app
from moderation.core.appeals import Appeal, AppealStatus
from moderation.pipeline.evaluate import appeal_quality
from moderation.testmodel.evaluate import write_dataset

pytestmark = pytest.mark.xdist_group("postgres")

POLICY = "testworld"


def _appeal(n: int, status: AppealStatus, *, policy: str = POLICY, version: int = 1) -> Appeal:
    at = datetime.now(UTC)
    return Appeal(
        appeal_id=f"ap-{policy}-{n}",
        tenant="acme",
        job_id=f"acme:job-{policy}-{n}",
        number=1,
        statement="it is a museum photo",
        filed_at=at,
        status=status,
        appealed_kind="automated",
        appealed_decision="block",
        appealed_record_id=f"rec-{n}",
        policy_id=policy,
        policy_version=version,
        category_id="contraband_symbol" if n % 2 else "restricted_logo",
        reason_code="APPEAL_MODEL_ERROR" if status is AppealStatus.OVERTURNED else None,
        decided_at=None if status is AppealStatus.OPEN else at,
    )


APPEALS = [
    _appeal(1, AppealStatus.OVERTURNED),
    _appeal(3, AppealStatus.OVERTURNED),
    _appeal(5, AppealStatus.UPHELD),
    _appeal(2, AppealStatus.UPHELD),
    _appeal(4, AppealStatus.OPEN),  # not decided: not counted
    _appeal(6, AppealStatus.OVERTURNED, policy="other"),  # another policy: not this report's
]


def test_appeal_quality_counts_decided_appeals_of_the_evaluated_policies_only() -> None:
    q = appeal_quality(APPEALS, policy_ids=[POLICY], days=30, confidence=0.95)
    assert (q.decided, q.overturned) == (4, 2)
    assert [(r.key, r.decided, r.overturned) for r in q.by_category] == [
        (f"{POLICY}/contraband_symbol", 3, 2),
        (f"{POLICY}/restricted_logo", 1, 0),
    ]
    weapon = q.by_category[0]
    assert weapon.rate == pytest.approx(2 / 3)
    assert weapon.interval is not None and weapon.interval.low < 2 / 3 < weapon.interval.high
    assert [(r.key, r.decided) for r in q.by_policy_version] == [(f"{POLICY}@v1", 4)]


def test_eval_reports_the_overturn_rate_from_the_database(pg_url: str, tmp_path: Path) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for a in APPEALS:
            conn.execute(
                "INSERT INTO appeals (appeal_id, tenant, job_id, number, appeal, status,"
                " filed_at, decided_at) VALUES (%s, %s, %s, 1, %s, %s, %s, %s)",
                (
                    a.appeal_id,
                    a.tenant,
                    a.job_id,
                    Jsonb(a.model_dump(mode="json")),
                    a.status.value,
                    a.filed_at.timestamp(),
                    a.decided_at.timestamp() if a.decided_at else None,
                ),
            )
    write_dataset(tmp_path / "set", 20, seed=404)
    env = {
        "MODERATION_MODEL__ARCHITECTURE": testmodel.MODEL_NAME,
        "MODERATION_MODEL__CHECKPOINT": str(testmodel.CHECKPOINT_PATH),
        "MODERATION_POLICY_PATHS": json.dumps([str(testmodel.POLICY_PATH)]),
        "MODERATION_CACHE_DIR": str(tmp_path / "cache"),
        "MODERATION_DATABASE__URL": pg_url,
        "MODERATION_LOG_LEVEL": "WARNING",
        "COLUMNS": "200",
    }
    out = tmp_path / "report"
    args = ["eval", str(tmp_path / "set"), "--out", str(out), "--confidence", "0"]
    result = CliRunner().invoke(app, [*args, "--json"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    appeals = json.loads(result.stdout.splitlines()[-1])["appeals"]
    assert (appeals["decided"], appeals["overturned"], appeals["days"]) == (4, 2, 90.0)
    assert appeals["by_category"][0]["key"] == f"{POLICY}/contraband_symbol"
    assert appeals["by_category"][0]["overturned"] == 2
    html = (out / "report.html").read_text()
    assert 'id="appeals"' in html and f"{POLICY}/contraband_symbol" in html
    assert f"{POLICY}@v1" in html


def test_the_terminal_table_lists_each_rate() -> None:
    from rich.console import Console

    from moderation.cli.quality import _overturn_table

    console = Console(width=200, record=True)
    console.print(_overturn_table(appeal_quality(APPEALS, policy_ids=[POLICY], days=30)))
    shown = console.export_text()
    assert f"{POLICY}/contraband_symbol" in shown and "66.7%" in shown
    assert f"{POLICY}@v1" in shown and "50.0%" in shown


def test_the_html_report_says_when_no_appeal_was_decided() -> None:
    from moderation.pipeline.evaluate import EvaluationReport

    report = EvaluationReport(
        dataset="d",
        kind="folder",
        n_items=0,
        n_scored=0,
        errors={},
        error_examples=[],
        skipped={},
        policies=[],
        model="m",
        confidence=0.95,
        categories=[],
        unlabelled=[],
        appeals=appeal_quality([], policy_ids=[POLICY], days=7, confidence=0.95),
    )
    html = render_html(report, {}, title="t")
    assert html.count("no appeal decided") == 2
