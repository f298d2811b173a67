"""Prometheus figures: the API's fleet view from the database, and each worker's own endpoint."""

from __future__ import annotations

import json
import uuid

from nofx.services import reaper
from tests.conftest import PORTS
from tests.support.fake_anthropic import Reply
from tests.support.ops import Scrape, plant_stuck_step, reaper_paused
from tests.support.procs import wait_until
from tests.support.runs import plan, quiet, step, submit, token, wait_finished

WORKER_METRICS = f"http://127.0.0.1:{PORTS['metrics']}/metrics"


def scrape_api(client) -> Scrape:
    response = client.get("/metrics")
    assert response.status_code == 200
    # Prometheus's own content type, as prometheus-client gives it: once, not charset twice
    from prometheus_client import CONTENT_TYPE_LATEST

    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    return Scrape(response.get_data(as_text=True))


def test_a_finished_run_moves_the_fleet_counters_by_exactly_itself(client, worker, fake_llm):
    # given the figures before (once earlier tests' runs have stopped moving them), and a
    # two-step plan
    wait_until(quiet, timeout=60, what="earlier tests' runs to finish")
    before = scrape_api(client)
    body = plan(step("write", "codegen", prompt=f"write {token()}"), step("say", "echo", n=1))

    # when it runs to the end
    run = wait_finished(client, submit(client, body)["id"])
    client.get(f"/runs/{run['id']}/events")
    after = scrape_api(client)

    # then the run and each of its steps moved their status counters by one
    assert run["status"] == "succeeded"
    moved = lambda name, **labels: after.moved_since(before, name, **labels)
    assert moved("nofx_runs_total", status="succeeded") == 1
    assert moved("nofx_runs_total", status="failed") == 0
    assert moved("nofx_steps_total", tool="codegen", status="succeeded") == 1
    assert moved("nofx_steps_total", tool="echo", status="succeeded") == 1
    assert moved("nofx_steps_total", tool="codegen", status="failed") == 0
    # and HTTP figures are counted once per request, under the route template
    assert moved("nofx_http_requests_total", method="POST", route="/runs", status="201") == 1
    assert moved("nofx_http_requests_total", method="GET", route="/runs/<run_id>/events",
                 status="200") == 1
    assert after.value("nofx_http_request_duration_seconds_count", method="POST", route="/runs") >= 1
    routes = after.label_values("nofx_http_requests_total", "route")
    assert not any(run["id"] in route for route in routes), routes


def test_every_contract_metric_is_on_the_api_or_the_worker_endpoint(client, worker, fake_llm):
    # given one LLM step has run, so every worker figure has a sample
    wait_finished(client, submit(client, plan(step("w", "codegen", prompt=token())))["id"])

    api, on_worker = scrape_api(client), Scrape.of(WORKER_METRICS)

    assert {"nofx_runs": "counter", "nofx_steps": "counter", "nofx_steps_running": "gauge",
            "nofx_step_running_oldest_age_seconds": "gauge", "nofx_steps_stuck": "gauge",
            "nofx_steps_reaped": "counter", "nofx_reaper_last_run_timestamp_seconds": "gauge",
            "nofx_http_requests": "counter", "nofx_http_request_duration_seconds": "histogram",
            }.items() <= {name: f.type for name, f in api.families.items()}.items()
    assert {"nofx_step_duration_seconds": "histogram", "nofx_llm_tokens": "counter",
            "nofx_llm_cost_usd": "counter",
            }.items() <= {name: f.type for name, f in on_worker.families.items()}.items()
    # and a worker serves no API figures (each process tree has its own metrics folder)
    assert not any(name.startswith("nofx_http") for name in on_worker.families)


def test_the_worker_endpoint_sums_step_durations_and_llm_usage_over_its_pool(client, worker, fake_llm):
    # given a model name only this test uses, and two runs that keep both pool processes busy
    model = f"claude-sonnet-4-5-test-{uuid.uuid4().hex[:8]}"
    marker = token()
    fake_llm.script(marker, [Reply.ok("# one\n", 100, 200), Reply.ok("# two\n", 100, 200)])
    before = Scrape.of(WORKER_METRICS)
    body = plan(step("nap", "sleep", seconds=0.5),
                step("write", "codegen", prompt=f"write {marker}", model=model))

    # when both run at once
    ids = [submit(client, body)["id"] for _ in range(2)]
    runs = [wait_finished(client, run_id) for run_id in ids]
    after = Scrape.of(WORKER_METRICS)

    # then tokens and cost are exactly those two calls, per provider and model
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"]
    tokens = lambda kind: after.value("nofx_llm_tokens_total", provider="anthropic",
                                      model=model, kind=kind)
    assert (tokens("input"), tokens("output")) == (200, 400)
    cost = after.value("nofx_llm_cost_usd_total", provider="anthropic", model=model)
    assert abs(cost - 2 * (100 * 3.0 + 200 * 15.0) / 1e6) < 1e-12
    # and each step attempt was timed once, whichever pool process ran it: the two naps ran
    # in two processes (the worker's log says which), and the endpoint counts both
    naps = [line for line in map(json_line, worker.log().splitlines())
            if line.get("run_id") in ids and line.get("message") == "step started"
            and line.get("tool") == "sleep"]
    assert len({line["pid"] for line in naps}) == 2, naps
    timed = lambda tool: after.moved_since(
        before, "nofx_step_duration_seconds_count", tool=tool, status="succeeded")
    assert (timed("sleep"), timed("codegen")) == (2, 2)
    assert after.total("nofx_step_duration_seconds_sum", tool="sleep") >= 1.0


def json_line(line: str) -> dict:
    try:
        parsed = json.loads(line)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def test_a_step_made_stuck_shows_in_the_stuck_and_oldest_running_age_gauges(client):
    tool = f"stuck-{uuid.uuid4().hex[:8]}"
    with reaper_paused():
        # given the figures before, and a step whose worker went silent two minutes ago
        before = scrape_api(client)
        _, step_id = plant_stuck_step(tool, silent_for_s=120)

        # when Prometheus scrapes
        after = scrape_api(client)

        # then it counts as stuck, running, and its age is that of the oldest running step
        assert after.value("nofx_steps_stuck") >= before.value("nofx_steps_stuck") + 1
        assert after.value("nofx_steps_running", tool=tool) == 1
        assert 120 <= after.value("nofx_step_running_oldest_age_seconds", tool=tool) < 180
        listed = client.get("/dev/stuck-steps").get_json()["items"]
        assert [s["reason"] for s in listed if s["id"] == step_id] == ["heartbeat_lost"]

    # and once the reaper acts, it is gone from the gauges and counted as reaped
    reaper.reap()
    healed = scrape_api(client)
    assert healed.value("nofx_steps_running", tool=tool) == 0
    assert healed.value("nofx_step_running_oldest_age_seconds", tool=tool) == 0
    assert healed.moved_since(before, "nofx_steps_reaped_total", reason="heartbeat_lost",
                              action="failed") >= 1
    assert healed.value("nofx_reaper_last_run_timestamp_seconds") > 0


def test_made_up_methods_are_counted_together_not_one_series_each(client):
    # given requests with methods nobody serves, from a client without a token
    before = scrape_api(client)
    made_up = [f"ZZZ{uuid.uuid4().hex[:8].upper()}" for _ in range(3)]
    for method in made_up:
        assert client.open("/runs", method=method).status_code in (401, 405)

    # then they are counted, under one label that names none of them
    after = scrape_api(client)
    methods = after.label_values("nofx_http_requests_total", "method")
    assert not any(m in methods for m in made_up), methods
    assert after.moved_since(before, "nofx_http_requests_total", method="other") == 3
