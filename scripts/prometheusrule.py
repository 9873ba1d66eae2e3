"""Write deploy/k8s/base/prometheusrule.yaml from deploy/prometheus/alerts.yaml (one source of
alerting rules for plain Prometheus, compose and the Prometheus operator): ``make manifests``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
TARGET = ROOT / "deploy" / "k8s" / "base" / "prometheusrule.yaml"
HEAD = """\
# The alerting rules of deploy/prometheus/alerts.yaml as a PrometheusRule (Prometheus operator).
# Generated from that file: edit it, then run `make manifests`; tests/test_deploy.py checks
# that both hold the same groups.
"""


class _Dumper(yaml.SafeDumper):
    pass


def _text(dumper: yaml.SafeDumper, value: str) -> Any:
    style = ">" if len(value) > 90 and "\n" not in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def render() -> str:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "moderation",
            # kube-prometheus-stack's default rule selector picks rules with its release label.
            "labels": {"app.kubernetes.io/name": "moderation", "release": "prometheus"},
        },
        "spec": {"groups": groups},
    }
    return HEAD + yaml.dump(rule, Dumper=_Dumper, sort_keys=False, width=100)


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET.relative_to(ROOT)}")
