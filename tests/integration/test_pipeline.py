"""How runs move through the pipeline on real parts."""

from __future__ import annotations

from datetime import datetime

from tests.support.fake_anthropic import Reply
from tests.support.runs import events, plan, step, submit, token, wait_finished


def test_a_step_whose_llm_answers_400_fails_the_run_and_cancels_the_rest(client, worker, fake_llm):
    # given a model that refuses the first step's request
    marker = token()
    fake_llm.script(marker, [Reply.error(400)])
    body = plan(step("write", "codegen", prompt=f"write {marker}"),
                step("after", "echo", n=1), step("last", "echo", n=2))

    run = wait_finished(client, submit(client, body)["id"])

    # then that step failed with the API's message, without a retry
    first, second, third = run["steps"]
    assert run["status"] == "failed"
    assert first["status"] == "failed"
    assert first["error"]["type"] == "PermanentToolError"
    assert "400" in first["error"]["message"] and "scripted failure" in first["error"]["message"]
    assert (second["status"], third["status"]) == ("cancelled", "cancelled")
    assert len(fake_llm.calls(marker)) == 1
    finished = [e for e in events(client, run["id"]) if e["type"] == "step.finished"]
    assert finished[0]["step_id"] == first["id"]
    assert finished[0]["payload"]["status"] == "failed"
    assert finished[0]["payload"]["error"] == first["error"]
    assert [e["payload"]["status"] for e in finished[1:]] == ["cancelled", "cancelled"]
    assert events(client, run["id"])[-1]["payload"] == {"status": "failed"}


def test_three_steps_run_in_order_each_after_the_previous_ended(client, worker, fake_llm):
    body = plan(step("one", "echo", say="one"), step("two", "sleep", seconds=0.3),
                step("three", "codegen", prompt=f"write {token()}"))

    run = wait_finished(client, submit(client, body)["id"])

    assert run["status"] == "succeeded"
    assert [s["name"] for s in run["steps"]] == ["one", "two", "three"]
    assert run["steps"][0]["outputs"] == {"say": "one"}
    assert run["steps"][1]["outputs"] == {"slept": 0.3}
    for earlier, later in zip(run["steps"], run["steps"][1:]):
        assert _t(earlier["ended_at"]) <= _t(later["started_at"])
    # and in the event log each step.started follows the previous step.finished
    log = [(e["type"], e["step_id"]) for e in events(client, run["id"])
           if e["type"] in ("step.started", "step.finished")]
    ids = [s["id"] for s in run["steps"]]
    assert log == [(kind, sid) for sid in ids for kind in ("step.started", "step.finished")]


def test_a_run_can_be_listed_and_read_back(client, worker):
    run = submit(client, plan(step("e", "echo", x=1), goal=f"listed {token()}"))
    listed = client.get("/runs?limit=200").get_json()["items"]
    assert run["id"] in [r["id"] for r in listed]
    assert "steps" not in listed[0]
    assert client.get(f"/runs/{run['id']}/artifacts").get_json() == {"items": []}


def _t(value: str) -> datetime:
    return datetime.fromisoformat(value)
