"""What a client submits comes back as it was sent: a run's ``plan`` is the plan in the
request, and only its steps carry the inputs as each tool reads them (defaults filled in)."""

from __future__ import annotations

import json
from typing import Any

from tests.support.runs import settle

SENT: dict[str, Any] = {"plan": {
    "goal": "as sent",
    "steps": [
        {"name": "write", "tool": "codegen", "inputs": {"prompt": "p", "topic": "t"},
         "max_attempts": 2},
        {"name": "nap", "tool": "sleep", "inputs": {"seconds": 1}, "timeout_s": 30},
        {"name": "say", "tool": "echo", "inputs": {"z": 1, "a": [1.5, "é", None]}},
    ],
}}


def exactly(value: Any) -> str:
    """JSON text that tells 1 from 1.0 (Python's == does not), keys in one order."""
    return json.dumps(value, sort_keys=True)


def test_a_new_run_has_its_address_and_the_plan_as_sent_and_its_steps_hold_what_each_tool_reads(client):
    created = client.post("/runs", json=SENT)
    assert created.status_code == 201
    run_id = created.get_json()["id"]
    assert created.headers["Location"] == f"/runs/{run_id}"
    try:
        for run in (created.get_json(), client.get(f"/runs/{run_id}").get_json(),
                    next(r for r in client.get("/runs?limit=200").get_json()["items"]
                         if r["id"] == run_id)):
            assert exactly(run["plan"]) == exactly(SENT["plan"])
        steps = client.get(f"/runs/{run_id}").get_json()["steps"]
        assert steps[0]["inputs"]["filename"] == "README.md"  # the tool's default
        assert exactly(steps[1]["inputs"]) == exactly({"seconds": 1.0})
        assert exactly(steps[2]["inputs"]) == exactly(SENT["plan"]["steps"][2]["inputs"])
    finally:
        settle([run_id])
