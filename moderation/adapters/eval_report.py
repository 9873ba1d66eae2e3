"""The evaluation report on disk: precision–recall curves and score histograms as PNG
(matplotlib, headless: figures are drawn on the Agg canvas directly, no pyplot and no global
backend), the report as JSON, and one self-contained HTML page with every image inlined as a
``data:`` URI, so the file can be mailed or attached to a ticket and opens in any browser.
"""

from __future__ import annotations

import base64
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, select_autoescape
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from moderation.core.evaluation import CategoryMetrics, Interval, pr_curve
from moderation.pipeline.evaluate import EvaluationReport

__all__ = ["ReportFiles", "histogram_png", "pr_curve_png", "render_html", "write_report"]

_VIOLATING, _BENIGN = "#c0392b", "#2e86c1"


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def pr_curve_png(metrics: CategoryMetrics) -> bytes:
    """The category's precision–recall curve, with its two operating points marked."""
    figure = Figure(figsize=(4.6, 3.6))
    axes = figure.add_subplot()
    scores, labels = np.asarray(metrics.scores), np.asarray(metrics.labels, bool)
    if labels.any():
        precision, recall, _ = pr_curve(scores, labels)
        axes.step(np.r_[0.0, recall], np.r_[precision[:1], precision], where="post", color="#333")
    for band, colour, name in (
        (metrics.block, _VIOLATING, "block"),
        (metrics.flagged, "#e67e22", "review"),
    ):
        if band.precision is not None and band.recall is not None:
            axes.plot(
                band.recall,
                band.precision,
                "o",
                color=colour,
                label=f"{name} ≥ {band.threshold:.3f}",
            )
    axes.set_xlim(-0.02, 1.02)
    axes.set_ylim(-0.02, 1.05)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    ap = "n/a" if metrics.average_precision is None else f"{metrics.average_precision:.3f}"
    axes.set_title(f"{metrics.key} (AP {ap})", fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", fontsize=8)
    return _png(figure)


def histogram_png(metrics: CategoryMetrics) -> bytes:
    """Score histograms of violating and benign images, with both thresholds."""
    figure = Figure(figsize=(4.6, 3.6))
    axes = figure.add_subplot()
    scores, labels = np.asarray(metrics.scores), np.asarray(metrics.labels, bool)
    bins = [i / 40 for i in range(41)]
    axes.hist(scores[~labels], bins=bins, alpha=0.6, color=_BENIGN, label="benign")
    axes.hist(scores[labels], bins=bins, alpha=0.6, color=_VIOLATING, label="violating")
    axes.axvline(metrics.review_threshold, color="#e67e22", linestyle="--", label="review")
    axes.axvline(metrics.block_threshold, color=_VIOLATING, linestyle="--", label="block")
    axes.set_yscale("log")
    axes.set_xlabel("score")
    axes.set_ylabel("images (log)")
    axes.set_title(metrics.key, fontsize=9)
    axes.legend(fontsize=8)
    return _png(figure)


def _slug(key: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", key.lower()).strip("-")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _ci(interval: Interval | None, percent: bool = True) -> str:
    if interval is None:
        return ""
    if percent:
        return f"[{100 * interval.low:.1f}, {100 * interval.high:.1f}]"
    return f"[{interval.low:.3f}, {interval.high:.3f}]"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ title }}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1180px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
.ci { color: #777; font-size: .85em; } .small { color: #b9770e; font-weight: 600; }
.plots img { width: 460px; margin: 0 1em 1em 0; border: 1px solid #eee; }
.note { background: #fff8e1; padding: .5em .8em; border-left: 4px solid #f0b429; }
code { background: #f4f4f4; padding: 0 .2em; }
</style>
</head>
<body>
<h1 id="title">{{ title }}</h1>
<p>Dataset <code>{{ r.dataset }}</code> ({{ r.kind }}): {{ r.n_items }} images, {{ r.n_scored }}
scored{% if r.errors %}, {{ r.n_items - r.n_scored }} could not be scored{% endif %}.
Model <code>{{ r.model }}</code>. Policies:
{% for p in r.policies %}<code>{{ p.id }} v{{ p.version }}</code>
(hash {{ p.compiled_hash[:12] }}){% if not loop.last %}, {% endif %}{% endfor %}.
Intervals: {{ (100 * r.confidence) | round(0) | int }}% (Wilson for proportions, bootstrap for
AUC and AP).</p>
{% for note in r.notes %}<p class="note">{{ note }}</p>{% endfor %}

<h2>Categories at the current thresholds</h2>
<table id="summary">
<tr><th class="l">category</th><th>labelled<br>(viol. / benign)</th><th>review / block</th>
<th>block precision</th><th>block recall</th><th>block F1</th>
<th>flagged precision</th><th>flagged recall</th><th>review load</th>
<th>ROC AUC</th><th>avg. precision</th></tr>
{% for c in cats %}
<tr class="category" data-key="{{ c.m.key }}">
<td class="l">{{ c.m.key }}{% if c.m.small_sample %} <span class="small"
title="fewer than 30 violating or benign images">small sample</span>{% endif %}</td>
<td>{{ c.m.n }} ({{ c.m.positives }} / {{ c.m.negatives }})</td>
<td>{{ "%.3f"|format(c.m.review_threshold) }} / {{ "%.3f"|format(c.m.block_threshold) }}</td>
<td>{{ pct(c.m.block.precision) }} <span class="ci">{{ ci(c.m.block.precision_ci) }}</span></td>
<td>{{ pct(c.m.block.recall) }} <span class="ci">{{ ci(c.m.block.recall_ci) }}</span></td>
<td>{{ num(c.m.block.f1) }}</td>
<td>{{ pct(c.m.flagged.precision) }} <span class="ci">{{ ci(c.m.flagged.precision_ci) }}</span></td>
<td>{{ pct(c.m.flagged.recall) }} <span class="ci">{{ ci(c.m.flagged.recall_ci) }}</span></td>
<td>{{ pct(c.m.review_load) }} <span class="ci">{{ ci(c.m.review_load_ci) }}</span></td>
<td>{{ num(c.m.roc_auc) }} <span class="ci">{{ ci(c.m.roc_auc_ci, False) }}</span></td>
<td>{{ num(c.m.average_precision) }}
<span class="ci">{{ ci(c.m.average_precision_ci, False) }}</span></td>
</tr>
{% endfor %}
</table>
<p>Block: score ≥ block threshold (automatic action). Flagged: score ≥ review threshold (a human
or the automatic action). Review load: the share of images that go to humans.</p>
{% if r.unlabelled %}<p>No labelled images for: {{ r.unlabelled | join(", ") }}.</p>{% endif %}

{% if r.combined %}
<h2>Combined categories: each signal alone and the rule</h2>
<p>On the combined category's labels: each member's signal deciding alone (its score at its own
thresholds) and the combined rule (what is acted on).</p>
<table id="combined">
<tr><th class="l">combined category</th><th class="l">decided by</th>
<th>labelled<br>(viol. / benign)</th><th>review / block</th>
<th>block precision</th><th>block recall</th><th>flagged precision</th><th>flagged recall</th>
<th>review load</th><th>ROC AUC</th></tr>
{% for c in r.combined %}
{% for m in c.members %}
<tr class="member" data-key="{{ c.key }}" data-member="{{ m.key }}">
<td class="l">{{ c.key }}</td><td class="l">{{ m.key }} alone</td>
<td>{{ m.n }} ({{ m.positives }} / {{ m.negatives }})</td>
<td>{{ "%.3f"|format(m.review_threshold) }} / {{ "%.3f"|format(m.block_threshold) }}</td>
<td>{{ pct(m.block.precision) }} <span class="ci">{{ ci(m.block.precision_ci) }}</span></td>
<td>{{ pct(m.block.recall) }} <span class="ci">{{ ci(m.block.recall_ci) }}</span></td>
<td>{{ pct(m.flagged.precision) }} <span class="ci">{{ ci(m.flagged.precision_ci) }}</span></td>
<td>{{ pct(m.flagged.recall) }} <span class="ci">{{ ci(m.flagged.recall_ci) }}</span></td>
<td>{{ pct(m.review_load) }}</td><td>{{ num(m.roc_auc) }}</td>
</tr>
{% endfor %}
<tr class="rule" data-key="{{ c.key }}">
<td class="l">{{ c.key }}{% if c.small_sample %} <span class="small">small sample</span>
{% endif %}</td><td class="l"><b>combined rule</b> <code>{{ c.rule | tojson }}</code></td>
<td>{{ c.n }} ({{ c.positives }} / {{ c.negatives }})</td><td>members'</td>
<td>{{ pct(c.block.precision) }} <span class="ci">{{ ci(c.block.precision_ci) }}</span></td>
<td>{{ pct(c.block.recall) }} <span class="ci">{{ ci(c.block.recall_ci) }}</span></td>
<td>{{ pct(c.flagged.precision) }} <span class="ci">{{ ci(c.flagged.precision_ci) }}</span></td>
<td>{{ pct(c.flagged.recall) }} <span class="ci">{{ ci(c.flagged.recall_ci) }}</span></td>
<td>{{ pct(c.review_load) }} <span class="ci">{{ ci(c.review_load_ci) }}</span></td>
<td>–</td>
</tr>
{% endfor %}
</table>
{% endif %}

{% if r.accuracy %}
<h2>Top-1 accuracy</h2>
<p id="accuracy">{{ pct(r.accuracy.top1) }} <span class="ci">{{ ci(r.accuracy.interval) }}</span>
over {{ r.accuracy.n }} images (the highest-scoring category must be the labelled one).</p>
{% if r.accuracy.confusions %}<table><tr><th class="l">most frequent confusions</th><th>images
</th></tr>{% for k, v in r.accuracy.confusions.items() %}<tr><td class="l">{{ k }}</td>
<td>{{ v }}</td></tr>{% endfor %}</table>{% endif %}
{% endif %}

{% if r.appeals %}
<h2 id="appeals">Appeals: overturn rate in production</h2>
<p>Appeals decided in the last {{ r.appeals.days | round(1) }} days against these policies'
decisions: {{ r.appeals.decided }}, of which {{ r.appeals.overturned }} overturned. A high
overturn rate: the model or the first reviewers restrict what should stand.</p>
{% for title, rows in (("category", r.appeals.by_category),
                       ("policy version", r.appeals.by_policy_version)) %}
<table class="overturns" data-by="{{ title }}"><tr><th class="l">{{ title }}</th>
<th>appeals decided</th><th>overturned</th><th>overturn rate</th></tr>
{% for o in rows %}<tr><td class="l">{{ o.key }}</td><td>{{ o.decided }}</td>
<td>{{ o.overturned }}</td><td>{{ pct(o.rate) }} <span class="ci">{{ ci(o.interval) }}</span>
</td></tr>{% else %}<tr><td class="l" colspan="4">no appeal decided</td></tr>{% endfor %}
</table>
{% endfor %}
{% endif %}

{% for c in cats %}
<h2 id="cat-{{ c.slug }}">{{ c.m.key }}</h2>
<table class="confusion"><tr><th class="l">truth \\ band</th><th>allow</th><th>review</th>
<th>block</th></tr>
{% for truth in ("violating", "benign") %}<tr><td class="l">{{ truth }}</td>
{% for band in ("allow", "review", "block") %}<td>{{ c.m.confusion[truth][band] }}</td>
{% endfor %}</tr>{% endfor %}
</table>
<div class="plots">
<img alt="precision-recall curve of {{ c.m.key }}" src="data:image/png;base64,{{ c.pr }}">
<img alt="score histogram of {{ c.m.key }}" src="data:image/png;base64,{{ c.hist }}">
</div>
{% endfor %}

{% if r.errors %}
<h2>Images that could not be scored</h2>
<table><tr><th class="l">error</th><th>images</th></tr>
{% for code, count in r.errors.items() %}<tr><td class="l">{{ code }}</td><td>{{ count }}</td>
</tr>{% endfor %}</table>
<ul>{% for e in r.error_examples %}<li>{{ e }}</li>{% endfor %}</ul>
{% endif %}
{% if r.skipped %}<p>Rows without a label: {% for k, v in r.skipped.items() %}{{ v }} ({{ k }})
{% endfor %}</p>{% endif %}
</body>
</html>
"""


def render_html(
    report: EvaluationReport, plots: dict[str, tuple[bytes, bytes]], *, title: str
) -> str:
    """The self-contained HTML page; ``plots``: key -> (PR curve PNG, histogram PNG)."""
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    template = env.from_string(_TEMPLATE)
    cats: list[dict[str, Any]] = [
        {
            "m": metrics,
            "slug": _slug(metrics.key),
            "pr": base64.b64encode(plots[metrics.key][0]).decode(),
            "hist": base64.b64encode(plots[metrics.key][1]).decode(),
        }
        for metrics in report.categories
    ]
    return template.render(r=report, cats=cats, title=title, pct=_pct, ci=_ci, num=_num)


@dataclass(frozen=True, slots=True)
class ReportFiles:
    html: Path
    json: Path
    images: list[Path]


def write_report(report: EvaluationReport, out_dir: Path, *, title: str) -> ReportFiles:
    """Write ``report.html`` (self-contained), ``report.json`` and one ``pr-<category>.png`` and
    ``hist-<category>.png`` per category into ``out_dir`` (created)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots: dict[str, tuple[bytes, bytes]] = {}
    images: list[Path] = []
    for metrics in report.categories:
        pr, hist = pr_curve_png(metrics), histogram_png(metrics)
        plots[metrics.key] = (pr, hist)
        for kind, data in (("pr", pr), ("hist", hist)):
            path = out_dir / f"{kind}-{_slug(metrics.key)}.png"
            path.write_bytes(data)
            images.append(path)
    html = out_dir / "report.html"
    html.write_text(render_html(report, plots, title=title), encoding="utf-8")
    as_json = out_dir / "report.json"
    as_json.write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    return ReportFiles(html=html, json=as_json, images=images)
