"""Deployment artefacts: the Prometheus alerting rules are valid, fire when they should
(``promtool test rules``), and name only metrics the services export."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(
    PROMTOOL is None, reason="needs promtool (scripts/ensure-test-deps.sh installs prometheus)"
)
def test_alert_rules_are_valid_and_fire_when_they_should() -> None:
    check = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        [str(PROMTOOL), "test", "rules", "alerts_test.yaml"],
        cwd=ROOT / "tests" / "data",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert test.returncode == 0, test.stdout + test.stderr


def test_alert_rules_name_only_exported_metrics() -> None:
    from moderation.metrics import metrics, render

    metrics()  # every metric of this process registered
    exported, _ = render(queue_depth=0, workers_alive=0, queued_bytes=0)
    helped = set(re.findall(r"^# HELP (\S+)", exported.decode(), re.M))
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    named = {name for rule in rules for name in re.findall(r"moderation_[a-z_]+", rule["expr"])}
    assert "moderation_workers_alive" in named
    assert named <= helped, named - helped
