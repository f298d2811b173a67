"""A real Prometheus scrapes NOFX and fires the shipped NofxStepStuck rule for a stuck step."""

from __future__ import annotations

import uuid

import httpx
import yaml

from nofx.services import reaper
from tests.support.ops import plant_stuck_step, reaper_paused, start_prometheus
from tests.support.procs import ROOT, start_api, wait_until

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"


def shipped_rule(name: str) -> dict:
    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
             for rule in group["rules"]]
    [rule] = [rule for rule in rules if rule.get("alert") == name]
    return rule


def firing(prometheus: str, name: str) -> list[dict]:
    alerts = httpx.get(f"{prometheus}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == name and a["state"] == "firing"]


def query(prometheus: str, promql: str) -> list[float]:
    """The values of an instant query's series."""
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=5).json()
    return [float(series["value"][1]) for series in answer["data"]["result"]]


def test_prometheus_scraping_the_api_fires_nofx_step_stuck_for_a_step_made_stuck(
        services, stack_env, logs_dir, tmp_path):
    tag = uuid.uuid4().hex[:8]
    # given the API under gunicorn, scraped every second by a real Prometheus that evaluates
    # the shipped NofxStepStuck expression, with no waiting period
    api, api_url = start_api(f"api-prom-{tag}", stack_env, logs_dir, workers=2)
    rule = shipped_rule("NofxStepStuck")
    prometheus, prom_url = start_prometheus(
        f"prometheus-{tag}", tmp_path,
        config={"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [{"job_name": "nofx-api",
                                    "static_configs": [{"targets": [api_url.split("//")[1]]}]}]},
        rules={"groups": [{"name": "nofx-test", "rules": [
            {**rule, "for": "0s"}]}]},
        log_dir=logs_dir)
    try:
        reaper.reap()  # steps left stuck by earlier tests are healed: the only one is ours
        with reaper_paused():
            wait_until(lambda: query(prom_url, 'up{job="nofx-api"}') == [1.0], timeout=20,
                       interval=0.5, what="a first scrape of the API")
            assert not firing(prom_url, "NofxStepStuck")

            # when a step goes stuck (its worker silent for two minutes, the reaper held off)
            plant_stuck_step(f"stuck-{tag}", silent_for_s=120)

            # then the alert fires, with the shipped labels, and the series it read is there
            [alert] = wait_until(lambda: firing(prom_url, "NofxStepStuck"), timeout=30,
                                 interval=0.5, what="NofxStepStuck to fire")
            assert alert["labels"]["severity"] == rule["labels"]["severity"]
            assert float(alert["value"]) == 1
            [age] = query(prom_url, f'nofx_step_running_oldest_age_seconds{{tool="stuck-{tag}"}}')
            assert age >= 120
    finally:
        reaper.reap()  # heal the planted step, so later tests see no stuck step
        prometheus.stop()
        api.stop()
