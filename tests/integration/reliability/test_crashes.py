"""Real crashes, real signals: a killed worker, a stopped broker, a task delivered twice."""

from __future__ import annotations

import signal

from sqlalchemy import select

from nofx import status
from nofx.db.engine import transaction
from nofx.db.models import steps
from tests.support.fake_anthropic import Reply
from tests.support.procs import wait_until
from tests.support.runs import plan, step, token
from tests.support.stack import PrivateRedis, now_iso, seconds_between

STUCK_AFTER_S = 3.0  # NOFX_STUCK_AFTER_S in the test environment


def test_a_worker_killed_mid_step_is_recovered_and_the_step_runs_once_more(
    make_stack, broker_url, fake_llm, capsys
):
    # given a stack whose only worker is busy waiting on a slow model
    stack = make_stack(broker_url).start_api()
    stack.start_beat()
    victim = stack.start_worker("victim")
    marker = token()
    # (the slow answer never comes in time, however long the rescuer takes to start)
    fake_llm.script(marker, [Reply(text="slow", delay_s=600), Reply.ok("# Recovered\n")])
    run = stack.submit(plan(step("write", "codegen", prompt=f"write {marker}")))
    wait_until(lambda: stack.run(run["id"])["steps"][0]["status"] == "running", timeout=30,
               what="the step to start")
    wait_until(lambda: fake_llm.calls(marker), timeout=10, what="the model to be asked")
    rescuer = stack.start_worker("rescuer")

    # when the busy worker and its pool are killed outright
    killed_at = now_iso()
    victim.kill(signal.SIGKILL)

    # then the reaper notices, the step runs again elsewhere, and the run succeeds
    finished = stack.wait_finished(run["id"], timeout=60)
    assert finished["status"] == "succeeded"
    [only] = finished["steps"]
    assert only["attempt"] == 2
    events = stack.events(run["id"])
    reaped = [e for e in events if e["type"] == "step.reaped"]
    assert [(e["payload"]["reason"], e["payload"]["action"]) for e in reaped] == [
        ("heartbeat_lost", "requeued")]
    assert [e["payload"]["status"] for e in events if e["type"] == "step.finished"] == ["succeeded"]
    assert len([e for e in events if e["type"] == "artifact.created"]) == 1
    assert len(finished["artifacts"]) == 1
    assert stack.http.get(finished["artifacts"][0]["url"]).text == "# Recovered\n"
    restarted = [e for e in events if e["type"] == "step.started"][-1]
    recovery_s = seconds_between(killed_at, restarted["created_at"])
    assert rescuer.alive()
    with capsys.disabled():
        print(f"\n[measure] {broker_url.split(':')[0]}: kill -> new attempt started in "
              f"{recovery_s:.2f}s (NOFX_STUCK_AFTER_S={STUCK_AFTER_S:g})")


def test_a_step_task_published_twice_runs_once(make_stack, broker_url, fake_llm):
    # given a run stored but not yet sent, and a worker with two processes
    stack = make_stack(broker_url)
    stack.start_worker("twins", concurrency=2)
    marker = token()
    fake_llm.script(marker, [Reply(text="# Once\n", delay_s=1.0)])
    run_id, step_id = status.new_id(), status.new_id()
    with transaction() as conn:
        status.create_run(conn, run_id=run_id, goal="twice", plan={}, step_rows=[{
            "id": step_id, "index": 0, "name": "write", "tool": "codegen",
            "inputs": {"prompt": f"write {marker}"}, "max_attempts": 3, "timeout_s": 60.0}])

    # when the same step task is published twice by hand
    stack.publish_chain(run_id, [step_id])
    stack.publish_chain(run_id, [step_id])

    # then the model was asked once, and every transition was recorded once
    from tests.support.runs import TERMINAL

    def finished() -> bool:
        with transaction() as conn:
            return conn.execute(select(steps.c.status).where(steps.c.id == step_id)).scalar() \
                in TERMINAL | {"succeeded"}

    wait_until(finished, timeout=30, what="the step to finish")
    from nofx.services.runs import get_run, list_events

    wait_until(lambda: get_run(run_id)["status"] == "succeeded", timeout=15, what="run end")
    types = [e["type"] for e in list_events(run_id)]
    assert types == ["run.created", "run.started", "step.started", "llm.usage",
                     "artifact.created", "step.finished", "run.finished"]
    assert len(fake_llm.calls(marker)) == 1
    assert len(get_run(run_id)["artifacts"]) == 1


def test_a_run_submitted_while_the_broker_is_down_completes_once_it_is_back(
    make_stack, tmp_path, fake_llm
):
    # given a stack on a Redis of its own
    redis = PrivateRedis(tmp_path).start()
    try:
        stack = make_stack(redis.url).start_api()
        stack.start_beat()
        stack.start_worker("patient")

        # when the broker goes away and a plan is submitted
        redis.stop()
        response = stack.http.post("/runs", json=plan(step("hello", "echo", say="hi")))

        # then the API still accepts it
        assert response.status_code == 201, response.text
        run_id = response.json()["id"]
        assert stack.run(run_id)["status"] == "queued"

        # and once the broker is back the run completes without being resubmitted
        redis.start()
        finished = stack.wait_finished(run_id, timeout=90)
        assert finished["status"] == "succeeded"
        reaped = [e["payload"] for e in stack.events(run_id) if e["type"] == "step.reaped"]
        assert reaped and reaped[0] == {"reason": "never_dispatched", "action": "redispatched"}
    finally:
        redis.stop()
