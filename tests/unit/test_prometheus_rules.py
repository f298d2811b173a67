"""The Prometheus alert rules, scrape config and Grafana dashboard in ``deploy/``.

promtool checks and unit-tests them (CI installs it: Debian package ``prometheus``); without
promtool these tests fail rather than skip, so a missing tool cannot hide a broken rule.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yml"
CONFIG = PROMETHEUS / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "nofx-dashboard.json"
RUNBOOKS = [ROOT / "docs" / "operations.md"]

# The metrics the contract (section "Metrics (Prometheus)") says NOFX exposes, by type.
CONTRACT_METRICS = {
    # API /metrics: fleet figures read from the database, and the API's own HTTP figures
    "nofx_runs": "counter",
    "nofx_steps": "counter",
    "nofx_steps_running": "gauge",
    "nofx_step_running_oldest_age_seconds": "gauge",
    "nofx_steps_stuck": "gauge",
    "nofx_steps_reaped": "counter",
    "nofx_reaper_last_run_timestamp_seconds": "gauge",
    "nofx_http_requests": "counter",
    "nofx_http_request_duration_seconds": "histogram",
    # each worker, on NOFX_WORKER_METRICS_PORT
    "nofx_step_duration_seconds": "histogram",
    "nofx_llm_tokens": "counter",
    "nofx_llm_cost_usd": "counter",
}
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
EXPOSED = {name + suffix for name, kind in CONTRACT_METRICS.items() for suffix in SUFFIXES[kind]}
REQUIRED_ALERTS = {"NofxStepStuck", "NofxReaperDown", "NofxNoWorkers", "NofxStepFailureRateHigh"}
METRIC_NAME = re.compile(r"\bnofx_[a-z0-9_]+\b")
# Grafana's variables, replaced by something PromQL accepts before promtool parses a query.
GRAFANA_VARIABLES = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "tool": ".*"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed: install the Debian/Ubuntu package `prometheus` "
                    "(or put promtool from a Prometheus release on PATH) to check the alert rules",
                    pytrace=False)
    return subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    output = f"$ {' '.join(result.args)}\n{result.stdout}{result.stderr}"
    print(output)
    assert result.returncode == 0, output


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    board = dashboard()
    found = [(f"panel {panel['title']!r} {target.get('refId', '')}", target["expr"])
             for panel in dashboard_panels(board["panels"])
             for target in panel.get("targets", []) if target.get("expr")]
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            found.append((f"variable {variable['name']}",
                          query["query"] if isinstance(query, dict) else query))
    return found


def with_grafana_variables_filled(expr: str) -> str:
    def fill(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in GRAFANA_VARIABLES, f"unknown Grafana variable ${name} in {expr}"
        return GRAFANA_VARIABLES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", fill, expr)


def test_alert_rules_pass_promtool_check() -> None:
    assert_ok(promtool("check", "rules", str(ALERTS.relative_to(ROOT))))


def test_alert_rule_unit_tests_pass_promtool() -> None:
    assert_ok(promtool("test", "rules", str(ALERTS_TEST.relative_to(ROOT))))


def test_prometheus_config_passes_promtool_check() -> None:
    assert_ok(promtool("check", "config", str(CONFIG.relative_to(ROOT))))


def test_prometheus_config_scrapes_the_api_the_workers_and_flower_and_loads_the_alerts() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"nofx-api", "nofx-worker", "flower"} <= set(jobs)
    assert jobs["nofx-api"].get("metrics_path", "/metrics") == "/metrics"
    # every replica of compose's worker service, each its own target
    assert jobs["nofx-worker"]["dns_sd_configs"] == [
        {"names": ["worker"], "type": "A", "port": 9546}]
    assert config["rule_files"] == ["alerts.yml"]


def test_the_contract_alerts_are_defined() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert REQUIRED_ALERTS <= set(names)
    assert len(names) == len(set(names)), "an alert name is used twice"


def test_every_alert_has_a_severity_summary_description_and_runbook_link() -> None:
    for rule in alert_rules():
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}, name
        annotations = rule.get("annotations", {})
        assert annotations.get("summary"), f"{name} has no summary"
        assert annotations.get("description"), f"{name} has no description"
        assert f"docs/operations.md#{name.lower()}" in annotations.get("runbook_url", ""), (
            f"{name}: runbook_url must link to docs/operations.md#{name.lower()}")


def test_every_alert_has_a_runbook_section_named_after_it() -> None:
    text = "\n".join(path.read_text() for path in RUNBOOKS if path.exists())
    headings = set(re.findall(r"^## (\S+)\s*$", text, flags=re.MULTILINE))
    missing = {rule["alert"] for rule in alert_rules()} - headings
    assert not missing, f"no `## <AlertName>` runbook section in docs/ for {sorted(missing)}"


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not() -> None:
    cases = [case for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
             for case in test.get("alert_rule_test", [])]
    for rule in alert_rules():
        name = rule["alert"]
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in mine), f"no test where {name} fires"
        assert any(not case.get("exp_alerts") for case in mine), f"no test where {name} is quiet"


def test_alert_rules_only_use_metrics_from_the_contract() -> None:
    for rule in alert_rules():
        unknown = set(METRIC_NAME.findall(rule["expr"])) - EXPOSED
        assert not unknown, f"{rule['alert']} uses metrics outside the contract: {unknown}"


def test_dashboard_is_valid_json_with_a_prometheus_datasource_variable() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    assert board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard_panels(board["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard_panels(board["panels"]):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            assert panel["targets"], f"panel {panel['title']!r} has no query"


def test_dashboard_queries_only_use_metrics_from_the_contract() -> None:
    queries = dashboard_queries()
    assert queries
    for where, expr in queries:
        unknown = set(METRIC_NAME.findall(expr)) - EXPOSED
        assert not unknown, f"{where} uses metrics outside the contract: {unknown}"


def test_dashboard_charts_every_contract_metric() -> None:
    used = {name for _, expr in dashboard_queries() for name in METRIC_NAME.findall(expr)}
    missing = [base for base, kind in CONTRACT_METRICS.items()
               if not any(base + suffix in used for suffix in SUFFIXES[kind])]
    assert not missing, f"no dashboard panel shows {missing}"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    rules = [{"record": f"nofx_dashboard:query_{i}", "expr": with_grafana_variables_filled(expr)}
             for i, (_, expr) in enumerate(dashboard_queries())
             if not expr.startswith("label_values(")]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert_ok(promtool("check", "rules", str(path)))


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard_folder() -> None:
    provisioning = GRAFANA / "provisioning"
    sources = [source for path in (provisioning / "datasources").glob("*.yml")
               for source in yaml.safe_load(path.read_text())["datasources"]]
    assert any(s["type"] == "prometheus" and s["url"] == "http://prometheus:9090" for s in sources)
    providers = [provider for path in (provisioning / "dashboards").glob("*.yml")
                 for provider in yaml.safe_load(path.read_text())["providers"]]
    assert any(p["type"] == "file" and p["options"]["path"] for p in providers)


def test_worker_metrics_defined_in_code_are_in_the_contract() -> None:
    from nofx import observe

    for metric in (observe.STEP_DURATION, observe.LLM_TOKENS, observe.LLM_COST):
        for family in metric.describe():
            assert CONTRACT_METRICS.get(family.name) == family.type, (
                f"{family.name} ({family.type}) is not a contract metric of that type")
