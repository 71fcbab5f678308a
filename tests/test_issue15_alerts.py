"""deploy/alerts.yml: promtool accepts it when installed; always, it parses, every rule is complete,
and every metric it uses is one the gateway's metrics registry exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from claudemesh_gateway.web.metrics import Metrics

ALERTS = Path(__file__).resolve().parent.parent / "deploy" / "alerts.yml"
PROMETHEUS_OWN = {"up"}  # series Prometheus itself makes for every target
# PromQL words that look like identifiers: functions, operators, keywords, duration units are not metrics
PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                "offset", "rate", "irate", "increase", "deriv", "sum", "max", "min", "avg", "count", "abs",
                "histogram_quantile", "absent", "changes", "resets", "delta", "time", "vector", "scalar", "topk",
                "bottomk", "clamp_min", "clamp_max", "max_over_time", "min_over_time", "avg_over_time", "le"}


def exported_series() -> set[str]:
    """Names of the series /-/metrics can expose, from the registry (counters gain _total / _created...)."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        base = family.name
        if family.type == "counter":
            names |= {base + "_total", base + "_created"}
        elif family.type == "histogram":
            names |= {base + "_bucket", base + "_sum", base + "_count", base + "_created"}
        elif family.type == "summary":
            names |= {base, base + "_sum", base + "_count", base + "_created"}
        else:
            names.add(base)
    return names


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {w for w in words if w not in PROMQL_WORDS}


def rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    (group,) = doc["groups"]
    return group["rules"]


def test_alerts_cover_what_the_issue_asks_for():
    text = ALERTS.read_text()
    for metric in ("claudemesh_gateway_mesh_poll_age_seconds", "claudemesh_gateway_queue_depth",
                   "claudemesh_gateway_dead_letters", "claudemesh_gateway_vendor_429",
                   'claudemesh_gateway_state_changes_total{state="bad_credentials"}'):
        assert metric in text, metric


def test_every_rule_is_complete_and_uses_only_exported_metrics():
    exported = exported_series()
    assert "claudemesh_gateway_queue_depth" in exported and "claudemesh_gateway_delivery_failures_total" in exported
    seen = set()
    for rule in rules():
        name = rule["alert"]
        assert name not in seen, f"duplicate alert {name}"
        seen.add(name)
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        used = metric_names(rule["expr"])
        assert used, f"{name}: no metric in {rule['expr']!r}"
        unknown = used - exported - PROMETHEUS_OWN
        assert not unknown, f"{name} uses metrics the gateway does not export: {sorted(unknown)}"
        assert rule["expr"].count("(") == rule["expr"].count(")"), name


def test_the_checker_catches_an_unknown_metric():
    exported = exported_series()
    assert metric_names('rate(claudemesh_gateway_nope_total{x="a b"}[5m]) > 0 and up') == {
        "claudemesh_gateway_nope_total", "up"}
    assert "claudemesh_gateway_nope_total" not in exported


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_rules():
    out = subprocess.run(["promtool", "check", "rules", str(ALERTS)], check=False, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
