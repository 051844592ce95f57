"""The alert rules and the Grafana dashboard name only metrics that jobqueue exports.

The list of exported metrics comes from the Prometheus registry after importing the modules
that define them, so a renamed metric breaks this test rather than a dashboard in
production. A family's name becomes the series names Prometheus stores: ``_total`` on
counters, ``_bucket``/``_sum``/``_count`` on histograms.
"""

from __future__ import annotations

import json
import re
from typing import Any

import grpc
import prometheus_client
import pytest

import jobqueue.events.metrics
import jobqueue.metrics
from jobqueue.store import JobState
from tests.deploy_helpers import CHART, FULL_VALUES, label_matchers, metric_names, only, render

# Imported for what they register in the default registry.
METRIC_MODULES = (jobqueue.metrics, jobqueue.events.metrics)

# Series Prometheus writes itself for every target.
PROMETHEUS_SERIES = frozenset({"up"})
# Labels Prometheus adds from the target (ServiceMonitor), not from jobqueue.
TARGET_LABELS = frozenset({"job", "namespace", "pod", "instance", "service", "container"})

DASHBOARD = CHART / "files" / "dashboard.json"

EXPECTED_ALERTS = {
    "JobQueueBacklogGrowing",
    "JobQueueOldestJobTooOld",
    "JobQueueDeadLettersRising",
    "JobQueueNoConnectedWorkers",
    "JobQueueOutboxBacklog",
    "JobQueueEventsRefusedByKafka",
    "JobQueueOperatorDown",
    "JobQueueAccessChecksFailing",
}


def _exported() -> dict[str, tuple[str, frozenset[str], str]]:
    """Series name -> (family name, label names, documentation) of every jobqueue metric."""
    suffixes = {
        "counter": ("_total",),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("", "_sum", "_count"),
    }
    series = {}
    registry = prometheus_client.REGISTRY
    # The registry has no public listing of its collectors, and families carry no label
    # names, so both come from prometheus_client's private attributes.
    for collector in list(registry._collector_to_names):
        describe = getattr(collector, "describe", None)
        if describe is None:
            continue
        for family in describe():
            if not family.name.startswith("jobqueue_"):
                continue
            labels = frozenset(getattr(collector, "_labelnames", ()))
            if family.type == "histogram":
                labels |= {"le"}
            for suffix in suffixes[family.type]:
                series[family.name + suffix] = (family.name, labels, family.documentation)
    return series


EXPORTED = _exported()


def _check_expression(expression: str) -> set[str]:
    """Assert the expression names exported metrics with known labels; return its metrics."""
    names = metric_names(expression)
    assert names, f"no metric found in {expression!r}"
    unknown = names - set(EXPORTED) - PROMETHEUS_SERIES
    assert not unknown, f"{sorted(unknown)} are not exported by jobqueue: {expression}"

    known_labels = set(TARGET_LABELS)
    for name in names & set(EXPORTED):
        known_labels |= EXPORTED[name][1]
    grouped = re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^()]*)\)", expression)
    used = {label.strip() for group in grouped for label in group.split(",") if label.strip()}
    used |= {label for label, _, _ in label_matchers(expression)}
    assert used <= known_labels, f"unknown labels {sorted(used - known_labels)}: {expression}"

    # Values of the bounded labels must be ones jobqueue writes.
    for label, operator, value in label_matchers(expression):
        if label == "state" and operator == "=":
            assert value in {state.value for state in JobState}, expression
        if label == "code" and operator in ("=", "!="):
            assert value in {code.name for code in grpc.StatusCode}, expression
        if label == "outcome" and operator == "=":
            documented = " ".join(EXPORTED[name][2] for name in names & set(EXPORTED))
            assert value in documented, f"outcome {value!r} is not documented: {expression}"
    return names


def test_metric_name_extraction_skips_functions_labels_and_durations() -> None:
    expression = (
        'histogram_quantile(0.95, sum by (le, queue) (rate(a_seconds_bucket{queue=~"x|y",'
        ' state!="by"}[5m]))) > on (queue) group_left b_total offset 1h'
        ' unless absent(up{job="j"} == 1) and c:recorded'
    )

    assert metric_names(expression) == {"a_seconds_bucket", "b_total", "up", "c:recorded"}
    assert ("state", "!=", "by") in label_matchers(expression)


def test_registry_lists_the_project_metrics() -> None:
    # A sanity floor: the check below is only as good as this list.
    assert "jobqueue_jobs_submitted_total" in EXPORTED
    assert "jobqueue_dispatch_latency_seconds_bucket" in EXPORTED
    assert "jobqueue_outbox_backlog_events" in EXPORTED
    assert "jobqueue_queue_jobs" in EXPORTED
    assert "jobqueue_queue_jobs_total" not in EXPORTED
    assert EXPORTED["jobqueue_queue_jobs"][1] == {"queue", "state"}


def test_unexported_metric_is_caught() -> None:
    with pytest.raises(AssertionError, match="not exported"):
        _check_expression('sum(jobqueue_jobs_pending{queue="a"})')
    with pytest.raises(AssertionError, match="unknown labels"):
        _check_expression("sum by (tenant) (jobqueue_queue_jobs)")
    with pytest.raises(AssertionError):
        _check_expression('jobqueue_queue_jobs{state="waiting"}')
    with pytest.raises(AssertionError):
        _check_expression('jobqueue_grpc_calls_refused_total{code="FORBIDDEN"}')


# Alerts -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    rule = only(render(FULL_VALUES), "PrometheusRule")
    (group,) = rule["spec"]["groups"]
    return list(group["rules"])


def test_alerts_cover_the_on_call_cases(rules: list[dict[str, Any]]) -> None:
    assert {rule["alert"] for rule in rules} == EXPECTED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0m")), rule["alert"]


def test_alerts_name_only_exported_metrics(rules: list[dict[str, Any]]) -> None:
    named = set()
    for rule in rules:
        named |= _check_expression(rule["expr"])

    # Every alert is scoped to this release's operator.
    for rule in rules:
        matchers = label_matchers(rule["expr"])
        assert ("job", "=", "jq") in matchers, rule["alert"]
        assert ("namespace", "=", "jobqueue") in matchers, rule["alert"]
    assert "jobqueue_outbox_backlog_events" in named
    assert "jobqueue_workers_connected" in named
    assert "jobqueue_grpc_calls_refused_total" in named


def test_alert_thresholds_come_from_values(rules: list[dict[str, Any]]) -> None:
    expressions = {rule["alert"]: rule["expr"] for rule in rules}

    assert re.search(r">\s*500\b", expressions["JobQueueBacklogGrowing"])
    assert re.search(r">\s*300\b", expressions["JobQueueOldestJobTooOld"])
    assert re.search(r">\s*5000\b", expressions["JobQueueOutboxBacklog"])


def test_alerts_are_off_by_default() -> None:
    kinds = {document["kind"] for document in render()}

    assert not kinds & {"PrometheusRule", "ServiceMonitor"}


# Dashboard --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def test_dashboard_panels_are_well_formed(dashboard: dict[str, Any]) -> None:
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]

    assert dashboard["uid"]
    assert dashboard["title"]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["type"] in ("stat", "timeseries"), panel["title"]
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]
        references = [target["refId"] for target in panel["targets"]]
        assert len(references) == len(set(references)), panel["title"]
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert variables == {"datasource", "namespace", "queue"}


def test_dashboard_names_only_exported_metrics(dashboard: dict[str, Any]) -> None:
    named = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            named |= _check_expression(target["expr"])
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", query["query"])
            assert inner, query
            named |= _check_expression(inner[1])

    # Most of what the project exports is on the dashboard.
    families = {EXPORTED[name][0] for name in named}
    all_families = {family for family, _, _ in EXPORTED.values()}
    assert families == all_families, sorted(all_families - families)


def test_dashboard_config_map_carries_the_file() -> None:
    config_map = only(render(FULL_VALUES), "ConfigMap", "jq-dashboard")

    assert json.loads(config_map["data"]["jobqueue.json"]) == json.loads(DASHBOARD.read_text())
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
