"""Retries, time limits, the reaper, cancel and resume, on the session's real worker."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import OperationalError

from nofx import status
from nofx.config import get_settings
from nofx.db.engine import get_engine, transaction
from nofx.db.models import runs, steps
from nofx.services import reaper
from tests.support.fake_anthropic import Reply
from tests.support.procs import wait_until
from tests.support.runs import events, get_run, plan, step, submit, token, wait_finished


def kinds(client, run_id: str, kind: str) -> list[dict]:
    return [e for e in events(client, run_id) if e["type"] == kind]


def test_an_overloaded_model_is_retried_with_backoff_until_it_answers(client, worker, fake_llm):
    marker = token()
    fake_llm.script(marker, [Reply.error(529), Reply.error(529), Reply.ok("# Third time\n")])

    run = wait_finished(client, submit(client, plan(step("w", "codegen", prompt=marker)))["id"])

    assert run["status"] == "succeeded"
    assert run["steps"][0]["attempt"] == 3
    retrying = [e["payload"] for e in kinds(client, run["id"], "step.retrying")]
    assert [r["attempt"] for r in retrying] == [1, 2]
    assert all(r["error"]["type"] == "RetryableToolError" and "529" in r["error"]["message"]
               for r in retrying)
    assert all(r["delay_s"] > 0 for r in retrying)
    assert len(fake_llm.calls(marker)) == 3
    assert len(kinds(client, run["id"], "step.finished")) == 1


def test_a_bad_request_fails_at_once_without_a_retry(client, worker, fake_llm):
    marker = token()
    fake_llm.script(marker, [Reply.error(400), Reply.ok("never asked")])

    run = wait_finished(client, submit(client, plan(step("w", "codegen", prompt=marker)))["id"])

    assert run["status"] == "failed" and run["steps"][0]["attempt"] == 1
    assert kinds(client, run["id"], "step.retrying") == []
    assert len(fake_llm.calls(marker)) == 1


def test_retries_stop_at_max_attempts_with_the_last_error(client, worker, fake_llm):
    marker = token()
    fake_llm.script(marker, [Reply.error(429)] * 5)
    body = plan({**step("w", "codegen", prompt=marker), "max_attempts": 2})

    run = wait_finished(client, submit(client, body)["id"])

    assert run["status"] == "failed" and run["steps"][0]["attempt"] == 2
    assert "429" in run["steps"][0]["error"]["message"]
    assert len(fake_llm.calls(marker)) == 2


def test_the_soft_time_limit_ends_a_step_timed_out_on_the_prefork_pool(client, worker):
    body = plan({**step("nap", "sleep", seconds=30), "timeout_s": 2}, step("after", "echo"))

    run = wait_finished(client, submit(client, body)["id"], timeout=30)

    nap, after = run["steps"]
    assert run["status"] == "failed"
    assert nap["status"] == "timed_out"
    assert nap["error"]["type"] == "TimeLimitExceeded" and "2s" in nap["error"]["message"]
    assert after["status"] == "cancelled"
    [finished, _] = kinds(client, run["id"], "step.finished")
    assert finished["payload"]["status"] == "timed_out"
    assert finished["payload"]["duration_s"] < 30


def _stored_running_step(*, started_ago_s: float, heartbeat_ago_s: float | None,
                         max_attempts: int = 3, timeout_s: float = 60.0) -> tuple[str, str]:
    """A run whose only step looks claimed by a worker that is gone (test set-up)."""
    run_id, step_id = status.new_id(), status.new_id()
    now = status.now()
    with transaction() as conn:
        status.create_run(conn, run_id=run_id, goal="orphan", plan={}, step_rows=[{
            "id": step_id, "index": 0, "name": "orphan", "tool": "echo",
            "inputs": {"from": "the reaper"}, "max_attempts": max_attempts,
            "timeout_s": timeout_s}])
        assert status.claim_step(conn, run_id, step_id, "lost-task")
        conn.execute(update(steps).where(steps.c.id == step_id).values(
            started_at=now - timedelta(seconds=started_ago_s),
            heartbeat_at=None if heartbeat_ago_s is None
            else now - timedelta(seconds=heartbeat_ago_s)))
        conn.execute(update(runs).where(runs.c.id == run_id).values(dispatched_at=now))
    return run_id, step_id


def test_a_step_that_never_heartbeat_is_reaped_and_run_again(client, worker):
    run_id, step_id = _stored_running_step(started_ago_s=60, heartbeat_ago_s=None)
    listed = client.get("/dev/stuck-steps").get_json()["items"]
    [mine] = [s for s in listed if s["id"] == step_id]
    assert mine["reason"] == "heartbeat_lost" and mine["age_s"] >= 59

    acted = reaper.reap()

    assert acted["requeued"] >= 1
    run = wait_finished(client, run_id)
    assert run["status"] == "succeeded" and run["steps"][0]["outputs"] == {"from": "the reaper"}
    [reaped] = kinds(client, run_id, "step.reaped")
    assert reaped["payload"]["reason"] == "heartbeat_lost"
    assert reaped["payload"]["action"] == "requeued"


def test_a_step_past_its_hard_limit_is_reaped_even_with_a_live_heartbeat(client, worker):
    run_id, step_id = _stored_running_step(started_ago_s=30, heartbeat_ago_s=0.1, timeout_s=5)
    reaper.reap()
    [reaped] = kinds(client, run_id, "step.reaped")
    assert reaped["payload"]["reason"] == "hard_time_limit"
    assert wait_finished(client, run_id)["status"] == "succeeded"


def test_a_stuck_step_with_no_attempts_left_fails_with_a_clear_reason(client):
    run_id, step_id = _stored_running_step(started_ago_s=60, heartbeat_ago_s=50, max_attempts=1)
    reaper.reap()
    run = get_run(client, run_id)
    assert run["status"] == "failed" and run["steps"][0]["status"] == "failed"
    assert run["steps"][0]["error"]["message"] == "gave up after 1 attempt(s): heartbeat lost"
    [reaped] = kinds(client, run_id, "step.reaped")
    assert reaped["payload"]["action"] == "failed"
    assert reaper.reap()["failed"] == 0  # nothing left to do: no second action, no event
    assert len(kinds(client, run_id, "step.reaped")) == 1


def test_a_step_past_its_hard_limit_with_no_attempts_left_ends_timed_out(client):
    run_id, step_id = _stored_running_step(started_ago_s=60, heartbeat_ago_s=0.1, timeout_s=5,
                                           max_attempts=1)
    reaper.reap()  # (or the session's beat, if it ticks first: the outcome is the same)
    run = get_run(client, run_id)
    assert (run["status"], run["steps"][0]["status"]) == ("failed", "timed_out")
    [reaped] = kinds(client, run_id, "step.reaped")
    assert (reaped["payload"]["reason"], reaped["payload"]["action"]) == (
        "hard_time_limit", "failed")


def test_a_run_whose_steps_all_succeeded_but_whose_end_was_lost_is_ended_once(client):
    # given a running run whose only step succeeded, its end never written (a NOFX 0.1
    # chain's last link lost, or a crash between the two)
    run_id, step_id = _stored_running_step(started_ago_s=1, heartbeat_ago_s=0.1)
    with transaction() as conn:
        conn.execute(update(steps).where(steps.c.id == step_id).values(
            status="succeeded", ended_at=status.now()))

    # when the reaper ticks, twice (the session's beat may tick between them too)
    reaper.reap(), reaper.reap()

    # then the run has ended, once
    assert get_run(client, run_id)["status"] == "succeeded"
    assert [e["payload"] for e in kinds(client, run_id, "run.finished")] == [
        {"status": "succeeded"}]


def test_a_second_reaper_does_nothing_while_the_first_holds_the_lock(client):
    run_id, _ = _stored_running_step(started_ago_s=60, heartbeat_ago_s=50)
    with get_engine().connect() as holder:
        holder.execute(text("SELECT pg_advisory_lock(:id)"), {"id": reaper.REAPER_LOCK_ID})
        assert reaper.reap()["skipped"] == 1
        assert kinds(client, run_id, "step.reaped") == []
        holder.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": reaper.REAPER_LOCK_ID})
        holder.commit()
    reaper.reap()
    assert len(kinds(client, run_id, "step.reaped")) == 1


def test_a_dispatched_run_whose_message_was_lost_is_sent_again(client, worker):
    run_id, step_id = status.new_id(), status.new_id()
    long_ago = status.now() - timedelta(minutes=10)
    with transaction() as conn:
        status.create_run(conn, run_id=run_id, goal="lost message", plan={}, step_rows=[{
            "id": step_id, "index": 0, "name": "e", "tool": "echo", "inputs": {},
            "max_attempts": 3, "timeout_s": 30.0}])
        conn.execute(update(steps).where(steps.c.id == step_id).values(due_at=long_ago))
        conn.execute(update(runs).where(runs.c.id == run_id).values(dispatched_at=long_ago))

    assert reaper.reap()["redispatched"] >= 1

    assert wait_finished(client, run_id)["status"] == "succeeded"
    [reaped] = kinds(client, run_id, "step.reaped")
    assert reaped["payload"] == {"reason": "never_started", "action": "redispatched"}


def test_cancelling_a_running_step_stops_it_and_cancels_the_run(client, worker):
    run = submit(client, plan(step("long", "sleep", seconds=60), step("never", "echo")))
    wait_until(lambda: get_run(client, run["id"])["steps"][0]["status"] == "running",
               timeout=30, what="the step to start")

    response = client.post(f"/runs/{run['id']}/cancel")

    assert response.status_code == 200
    cancelled = response.get_json()
    assert cancelled["status"] == "cancelled"
    assert [s["status"] for s in cancelled["steps"]] == ["cancelled", "cancelled"]
    assert [e["payload"]["status"] for e in kinds(client, run["id"], "run.finished")] == ["cancelled"]
    # and the worker process running it was interrupted (SIGUSR1), not left sleeping
    task_id = kinds(client, run["id"], "step.started")[0]["payload"]["task_id"]
    wait_until(lambda: f"Terminating {task_id}" in worker.log(), timeout=10,
               what="the worker to terminate the task")
    wait_until(lambda: "this attempt no longer holds it" in _lines_of(worker.log(), task_id),
               timeout=10, what="the task to stop")
    assert len(kinds(client, run["id"], "step.finished")) == 2


def _lines_of(log: str, task_id: str) -> str:
    return "\n".join(line for line in log.splitlines() if task_id in line)


def test_a_failed_run_resumes_from_the_failed_step_and_keeps_earlier_outputs(
    client, worker, fake_llm
):
    first, second = token(), token()
    fake_llm.script(first, [Reply.ok("# One\n")])
    fake_llm.script(second, [Reply.error(400), Reply.ok("# Two\n")])
    body = plan(step("one", "codegen", prompt=first, filename="ONE.md"),
                step("two", "codegen", prompt=second, filename="TWO.md"))
    failed = wait_finished(client, submit(client, body)["id"])
    assert failed["status"] == "failed"

    response = client.post(f"/runs/{failed['id']}/retry")

    assert response.status_code == 200
    run = wait_finished(client, failed["id"])
    assert run["status"] == "succeeded"
    assert run["steps"][0]["outputs"] == failed["steps"][0]["outputs"]
    assert len(fake_llm.calls(first)) == 1 and len(fake_llm.calls(second)) == 2
    assert sorted(a["name"] for a in run["artifacts"]) == ["ONE.md", "TWO.md"]
    assert client.post(f"/runs/{run['id']}/retry").status_code == 409


def test_an_attempt_whose_step_was_taken_away_is_interrupted_by_its_heartbeat(client, worker):
    # given a step sleeping on the worker
    run = submit(client, plan(step("long", "sleep", seconds=60)))
    wait_until(lambda: get_run(client, run["id"])["steps"][0]["status"] == "running",
               timeout=30, what="the step to start")
    step_id = get_run(client, run["id"])["steps"][0]["id"]
    task_id = kinds(client, run["id"], "step.started")[0]["payload"]["task_id"]

    # when the step is taken from that attempt (as the reaper does), with no revoke sent
    with transaction() as conn:
        assert status.requeue_step(conn, run["id"], step_id, 1, ("step.reaped", {
            "reason": "test", "action": "requeued"}))

    # then the attempt's heartbeat notices and stops the tool within a few beats
    wait_until(lambda: "interrupting the tool" in _lines_of(worker.log(), step_id),
               timeout=10, what="the heartbeat to interrupt the tool")
    wait_until(lambda: "this attempt no longer holds it" in _lines_of(worker.log(), task_id),
               timeout=10, what="the task to stop")
    with transaction() as conn:  # let the run end: cancel it
        status.cancel_run(conn, run["id"])


def _step_status(step_id: str) -> str:
    with transaction() as conn:
        return conn.execute(select(steps.c.status).where(steps.c.id == step_id)).scalar_one()


def test_a_worker_that_beats_after_the_reaper_read_its_step_keeps_it(client):
    # given a silent step the reaper has just read as stuck
    run_id, step_id = _stored_running_step(started_ago_s=60, heartbeat_ago_s=50)
    [seen] = [s for s in reaper.stuck_steps() if s["id"] == step_id]

    # when its worker beats before the reaper acts (a slow tick, a worker back from a stall)
    with transaction() as conn:
        assert status.beat(conn, step_id, 1)

    # then the reaper leaves it: requeued no, failed no, nothing recorded
    assert reaper._heal_stuck(seen, get_settings()) == "skipped"
    assert reaper._heal_stuck({**seen, "max_attempts": 1}, get_settings()) == "skipped"
    assert _step_status(step_id) == "running" and kinds(client, run_id, "step.reaped") == []
    with transaction() as conn:
        status.cancel_run(conn, run_id)


def test_after_losing_the_database_the_reaper_gives_heartbeats_time_to_resume(
        client, monkeypatch, caplog):
    # given a step silent for 50 s, and a reaper whose last tick could not reach the database
    monkeypatch.setattr(reaper, "SIGHT", reaper._Sight())
    settings = replace(get_settings(), stuck_after_s=1.0)
    run_id, step_id = _stored_running_step(started_ago_s=60, heartbeat_ago_s=50)
    with monkeypatch.context() as outage:
        outage.setattr(reaper, "stuck_steps", lambda *a: (_ for _ in ()).throw(
            OperationalError("SELECT", {}, Exception("connection refused"))))
        with pytest.raises(OperationalError):
            reaper.reap(settings)

    # when the next tick reaches it again, the silence is not yet taken for a dead worker
    with caplog.at_level(logging.INFO):
        assert reaper.reap(settings)["requeued"] == 0
    assert _step_status(step_id) == "running"
    assert any("not judging a silent heartbeat yet" in r.getMessage() and
               getattr(r, "step_id", None) == step_id for r in caplog.records)

    # then, NOFX_STUCK_AFTER_S after the database came back, it is
    time.sleep(1.1)
    assert reaper.reap(settings)["requeued"] >= 1
    assert kinds(client, run_id, "step.reaped")[0]["payload"]["reason"] == "heartbeat_lost"
    with transaction() as conn:
        status.cancel_run(conn, run_id)
