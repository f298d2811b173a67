"""Logs: one JSON object per line from API, worker and beat, with ids, and never a secret."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from nofx.db.engine import transaction
from nofx.db.models import events
from nofx.logs import JsonFormatter, remember_secrets
from tests.support.fake_anthropic import Reply
from tests.support.procs import Proc, start_api, start_beat, start_worker, wait_until
from tests.support.runs import TERMINAL, plan, step, token

SECRET_KEY = f"sk-ant-api03-planted-{uuid.uuid4().hex}"
SECRET_TOKEN = f"planted-token-{uuid.uuid4().hex}"


class Stack:
    """API (with a bearer token), worker and beat on a private queue, all logging JSON."""

    def __init__(self, env: dict[str, str], logs_dir: Path) -> None:
        tag = uuid.uuid4().hex[:8]
        self.env = dict(env, NOFX_QUEUE=f"{env['NOFX_QUEUE']}-logs-{tag}",
                        NOFX_WORKER_METRICS_PORT="0", NOFX_API_TOKEN=SECRET_TOKEN,
                        ANTHROPIC_API_KEY=SECRET_KEY, NOFX_LOG_LEVEL="DEBUG",
                        NOFX_LOG_FORMAT="json")
        self.procs: dict[str, Proc] = {}
        self.procs["worker"] = start_worker(f"logs-worker-{tag}", self.env, logs_dir, concurrency=1)
        self.procs["beat"] = start_beat(f"logs-beat-{tag}", self.env, logs_dir)
        self.procs["api"], url = start_api(f"logs-api-{tag}", self.env, logs_dir, workers=1)
        self.http = httpx.Client(base_url=url, timeout=15,
                                 headers={"Authorization": f"Bearer {SECRET_TOKEN}"})

    def run(self, body: dict[str, Any], request_id: str) -> dict[str, Any]:
        created = self.http.post("/runs", json=body, headers={"X-Request-ID": request_id})
        assert created.status_code == 201, created.text
        run_id = created.json()["id"]

        def _done() -> dict[str, Any] | None:
            run = self.http.get(f"/runs/{run_id}").json()
            return run if run["status"] in TERMINAL else None

        return wait_until(_done, timeout=60, what=f"run {run_id}")  # type: ignore[return-value]

    def lines(self, name: str) -> list[str]:
        return [line for line in self.procs[name].log().splitlines() if line.strip()]

    def stop(self) -> None:
        self.http.close()
        for proc in self.procs.values():
            proc.stop()


@pytest.fixture(scope="module")
def stack(stack_env: dict[str, str], logs_dir: Path, fake_llm: Any) -> Iterator[dict[str, Any]]:
    """A private stack that ran one good and one failing LLM step, with known request ids."""
    stack = Stack(stack_env, logs_dir)
    good, bad = token(), token()
    fake_llm.script(bad, [Reply.error(401)])
    ran = {kind: stack.run(plan(step("write", "codegen", prompt=f"write {marker}")),
                           request_id=f"req-{kind}-{uuid.uuid4().hex[:8]}")
           for kind, marker in (("good", good), ("bad", bad))}
    wait_until(lambda: any('"reaper tick"' in line for line in stack.lines("beat")),
               timeout=20, what="beat to run a reaper tick")
    yield {"stack": stack, "runs": ran, "markers": (good, bad)}
    stack.stop()


def parsed(lines: list[str]) -> list[dict[str, Any]]:
    objects = []
    for line in lines:
        try:
            objects.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON log line: {line!r}")
    return objects


def test_every_line_from_api_worker_and_beat_is_one_json_object_carrying_the_ids(stack):
    s, good = stack["stack"], stack["runs"]["good"]
    api, worker, beat = (parsed(s.lines(name)) for name in ("api", "worker", "beat"))

    # then each process names itself
    assert {line["component"] for line in api} == {"api"}
    assert {line["component"] for line in worker} == {"worker"}
    assert {line["component"] for line in beat} == {"beat"}
    # (beat runs the reaper's ticks itself, each logged with what it did)
    ticks = [line for line in beat if line["message"] == "reaper tick"]
    assert ticks and {"requeued", "failed", "redispatched", "finished",
                      "duration_ms"} <= set(ticks[0]), ticks[0]
    # and each long-lived process put its startup objects out of the collector's way
    frozen = {line["role"]: line["objects"] for line in api + worker
              if line["message"] == "startup objects frozen"}
    assert set(frozen) == {"api", "worker", "worker-pool"}, frozen
    assert min(frozen.values()) > 10_000, frozen  # the app's modules, classes and tables
    # and the API's lines about the submission carry its request id and the run id
    [created] = [line for line in api if line["message"] == "run created"
                 and line.get("run_id") == good["id"]]
    assert created["request_id"].startswith("req-good-")
    [access] = [line for line in api if line.get("route") == "/runs"
                and line.get("request_id") == created["request_id"]]
    assert (access["method"], access["status"]) == ("POST", 201)
    # and the worker's lines about the step carry run, step and task ids
    step_id = good["steps"][0]["id"]
    started = [line for line in worker if line["message"] == "step started"
               and line.get("step_id") == step_id]
    assert started and started[0]["run_id"] == good["id"] and started[0]["task_id"]


def test_a_planted_api_key_and_bearer_token_appear_in_no_log_line_and_no_event(stack, fake_llm):
    s, ran = stack["stack"], stack["runs"]
    # given the key really was sent to the model, and the failing step was recorded
    good, _ = stack["markers"]
    sent = fake_llm.calls(good)[0]["headers"]
    assert SECRET_KEY in (sent.get("x-api-key"), sent.get("authorization", "").removeprefix("Bearer "))
    assert ran["bad"]["status"] == "failed"

    # then neither secret is in any line any process wrote
    for name in ("api", "worker", "beat"):
        for line in s.lines(name):
            assert SECRET_KEY not in line and SECRET_TOKEN not in line, (name, line)
    # nor in any event of those runs
    with transaction() as conn:
        rows = conn.execute(select(events.c.type, events.c.payload)
                            .where(events.c.run_id.in_([r["id"] for r in ran.values()]))).all()
    assert {"llm.usage", "step.finished", "run.finished"} <= {kind for kind, _ in rows}
    for kind, payload in rows:
        text = json.dumps(payload)
        assert SECRET_KEY not in text and SECRET_TOKEN not in text, (kind, text)


def test_a_secret_logged_by_mistake_is_masked_in_the_line():
    # given the formatter knows the configured secrets
    remember_secrets([SECRET_TOKEN, SECRET_KEY])
    record = logging.LogRecord("nofx.test", logging.INFO, __file__, 1,
                               "calling with %s and %s", (SECRET_TOKEN, f"Bearer {SECRET_KEY}"),
                               None)
    record.headers = {"Authorization": f"Bearer {SECRET_TOKEN}"}

    line = JsonFormatter("api").format(record)

    assert SECRET_TOKEN not in line and SECRET_KEY not in line
    assert json.loads(line)["message"].startswith("calling with [REDACTED]")
