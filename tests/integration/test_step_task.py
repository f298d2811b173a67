"""The step task in-process, on Postgres: what one delivery does at the edges of its step."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from nofx import status
from nofx.config import get_settings
from nofx.db.engine import transaction
from nofx.db.models import events, steps
from nofx.services import execute, reaper
from nofx.tools.echo import EchoTool
from nofx.worker.tasks import run_step
from tests.support.fake_anthropic import Reply
from tests.support.runs import settle, token

MADE: list[str] = []


@pytest.fixture(autouse=True)
def _settled() -> Iterator[None]:
    """Whatever a test's runs are left doing is ended with it (``settle``)."""
    MADE.clear()
    yield
    settle(MADE)


def new_run(*tools: str, inputs: dict[str, Any] | None = None, timeout_s: float = 30.0,
            max_attempts: int = 3) -> tuple[str, list[str]]:
    """A run written straight to the database, run here by ``run`` rather than by any
    worker (written as sent, so no reaper sends it meanwhile)."""
    run_id, step_ids = status.new_id(), [status.new_id() for _ in tools]
    MADE.append(run_id)
    with transaction() as conn:
        status.create_run(conn, run_id=run_id, goal="g", plan={}, step_rows=[{
            "id": step_id, "index": i, "name": f"s{i}", "tool": tool, "inputs": inputs or {},
            "max_attempts": max_attempts, "timeout_s": timeout_s}
            for i, (step_id, tool) in enumerate(zip(step_ids, tools))], dispatched=True)
    return run_id, step_ids


def step_row(step_id: str) -> Any:
    with transaction() as conn:
        return conn.execute(select(steps).where(steps.c.id == step_id)).mappings().one()


def event_types(run_id: str) -> list[str]:
    with transaction() as conn:
        return list(conn.execute(select(events.c.type).where(events.c.run_id == run_id)
                                 .order_by(events.c.id)).scalars())


def run(run_id: str, step_id: str, tool: str = "echo") -> Any:
    return run_step.apply(args=(run_id, step_id), kwargs={"tool": tool}, task_id=str(uuid.uuid4()))


def database_gone() -> OperationalError:
    return OperationalError("SELECT nofx_succeed_step(...)", {},
                            Exception("server closed the connection unexpectedly"))


def failing(real: Any, times: int, after_real: bool = False) -> Any:
    """``real``, except that its first ``times`` calls raise as a lost database would;
    ``after_real``: they raise after the real call did its work (the answer was lost)."""
    calls = {"n": 0}

    def call(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] <= times:
            if after_real:
                real(*args, **kwargs)
            raise database_gone()
        return real(*args, **kwargs)

    return call


def test_a_step_cancelled_while_its_tool_finishes_is_dropped_quietly(
    database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    # given a run whose step's tool is still working when the run is cancelled (the revoke
    # came too late to interrupt it), so its success can no longer be recorded
    run_id, [step_id] = new_run("echo")
    finish = EchoTool.run

    def cancelled_meanwhile(self: EchoTool, inputs: dict[str, Any], ctx: Any) -> Any:
        with transaction() as conn:
            assert status.cancel_run(conn, run_id) is not None
        return finish(self, inputs, ctx)

    monkeypatch.setattr(EchoTool, "run", cancelled_meanwhile)

    # when the delivery runs its step
    with caplog.at_level(logging.INFO):
        result = run_step.apply(args=(run_id, step_id), kwargs={"tool": "echo"},
                                task_id=str(uuid.uuid4()))

    # then the task stops without a failure: no ERROR line, no traceback, the chain ends
    assert result.state == "IGNORED"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    [dropped] = [r for r in caplog.records if "no longer holds" in r.getMessage()]
    assert (dropped.run_id, dropped.step_id, dropped.attempt) == (run_id, step_id, 1)
    # and the step stays as the cancel left it
    with transaction() as conn:
        assert conn.execute(select(steps.c.status).where(steps.c.id == step_id)).scalar() == \
            "cancelled"


def test_a_success_write_the_database_drops_once_is_tried_again_and_the_step_succeeds(
        database, monkeypatch, caplog):
    run_id, [step_id] = new_run("echo")
    monkeypatch.setattr(status, "succeed_step", failing(status.succeed_step, times=1))

    with caplog.at_level(logging.WARNING):
        result = run(run_id, step_id)

    assert result.state == "SUCCESS"
    assert step_row(step_id)["status"] == "succeeded"
    assert event_types(run_id)[-1] == "run.finished"
    [warned] = [r for r in caplog.records if "trying once more" in r.getMessage()]
    assert (warned.run_id, warned.step_id) == (run_id, step_id)


def test_a_success_that_committed_before_its_answer_was_lost_counts_as_a_success(
        database, monkeypatch):
    # given a two-step run whose first success commits, then the connection drops
    run_id, [first, second] = new_run("echo", "echo")
    monkeypatch.setattr(status, "succeed_step",
                        failing(status.succeed_step, times=1, after_real=True))

    result = run(run_id, first)

    # then the task succeeds (so Celery sends the next link), recorded once
    assert result.state == "SUCCESS"
    assert step_row(first)["status"] == "succeeded"
    assert event_types(run_id).count("step.finished") == 1
    assert step_row(second)["status"] == "queued"


def test_a_database_gone_for_good_leaves_the_step_to_the_reaper_not_failed(
        database, monkeypatch, caplog):
    # given a step whose success cannot be written, twice
    run_id, [step_id] = new_run("echo")
    monkeypatch.setattr(status, "succeed_step", failing(status.succeed_step, times=2))

    with caplog.at_level(logging.INFO):
        result = run(run_id, step_id)

    # then the task stops without failing the step or the run, and says why, with its ids
    assert result.state == "IGNORED"
    assert step_row(step_id)["status"] == "running"
    assert "run.finished" not in event_types(run_id)
    [said] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "reaper will take the step back" in said.getMessage()
    assert (said.run_id, said.step_id, said.attempt) == (run_id, step_id, 1)

    # and once its heartbeat is old, the reaper queues it again for another attempt
    monkeypatch.undo()
    with transaction() as conn:
        conn.execute(update(steps).where(steps.c.id == step_id)
                     .values(heartbeat_at=status.now() - timedelta(minutes=10)))
    reaped = [s for s in reaper.stuck_steps() if s["id"] == step_id]
    assert [s["reason"] for s in reaped] == ["heartbeat_lost"]


def test_llm_usage_the_database_cannot_take_is_logged_and_the_answer_kept(
        services, fake_llm, monkeypatch, caplog):
    marker = token()
    fake_llm.script(marker, [Reply.ok("# Kept\n", input_tokens=5, output_tokens=6)])
    run_id, [step_id] = new_run("codegen", inputs={"prompt": f"x {marker}"})
    monkeypatch.setattr(status, "record_for_attempt", failing(status.record_for_attempt, times=1))

    with caplog.at_level(logging.ERROR):
        result = run(run_id, step_id, tool="codegen")

    assert result.state == "SUCCESS"
    assert step_row(step_id)["status"] == "succeeded"
    assert "llm.usage" not in event_types(run_id)
    [said] = [r for r in caplog.records if "could not record llm.usage" in r.getMessage()]
    assert (said.run_id, said.step_id) == (run_id, step_id)
    assert (said.usage["input_tokens"], said.usage["output_tokens"]) == (5, 6)


def events_of(run_id: str, type_: str) -> list[dict[str, Any]]:
    with transaction() as conn:
        return list(conn.execute(select(events.c.payload).where(
            events.c.run_id == run_id, events.c.type == type_).order_by(events.c.id)).scalars())


def progress_every(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    settings = replace(get_settings(), progress_every_s=seconds)
    monkeypatch.setattr(execute, "get_settings", lambda: settings)


def test_a_long_answer_records_its_progress_as_it_streams_in(services, fake_llm, monkeypatch):
    # given progress kept every 0.3 s, and an answer that streams in over ~1.4 s
    progress_every(monkeypatch, 0.3)
    marker = token()
    text = "# Long\n" + "y" * 113
    fake_llm.script(marker, [Reply(text=text, chunks=8, chunk_delay_s=0.2)])
    run_id, [step_id] = new_run("codegen", inputs={"prompt": f"x {marker}"})

    assert run(run_id, step_id, tool="codegen").state == "SUCCESS"

    # then the run's events say how far the answer had got, a few times while it came in
    progress = events_of(run_id, "step.progress")
    assert len(progress) >= 2
    chars = [p["llm_chars"] for p in progress]
    assert chars == sorted(set(chars)) and 0 < chars[0] < len(text) and chars[-1] <= len(text)
    assert all(p["attempt"] == 1 for p in progress)
    elapsed = [p["elapsed_s"] for p in progress]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0.3
    # between the step's start and the answer's usage
    types = event_types(run_id)
    first, last = types.index("step.progress"), len(types) - types[::-1].index("step.progress")
    assert types.index("step.started") < first and last <= types.index("llm.usage")


def test_progress_is_not_kept_when_turned_off_or_for_a_quick_answer(
        services, fake_llm, monkeypatch):
    marker = token()
    fake_llm.script(marker, [Reply(text="abcdef", chunks=3, chunk_delay_s=0.2),
                             Reply(text="abcdef", chunks=3, chunk_delay_s=0.2)])
    for every_s in (0, 10):  # off; longer than the answer takes
        progress_every(monkeypatch, every_s)
        run_id, [step_id] = new_run("codegen", inputs={"prompt": f"x {marker}"})
        assert run(run_id, step_id, tool="codegen").state == "SUCCESS"
        assert events_of(run_id, "step.progress") == []
        assert len(events_of(run_id, "llm.usage")) == 1


def test_progress_the_database_cannot_take_is_logged_and_the_step_goes_on(
        services, fake_llm, monkeypatch, caplog):
    progress_every(monkeypatch, 0.2)
    marker = token()
    fake_llm.script(marker, [Reply(text="abcdef", chunks=3, chunk_delay_s=0.3)])
    run_id, [step_id] = new_run("codegen", inputs={"prompt": f"x {marker}"})
    monkeypatch.setattr(status, "record_for_attempt", failing(status.record_for_attempt, times=1))

    with caplog.at_level(logging.WARNING):
        result = run(run_id, step_id, tool="codegen")

    assert result.state == "SUCCESS"
    assert step_row(step_id)["status"] == "succeeded"
    [said] = [r for r in caplog.records if "could not record step progress" in r.getMessage()]
    assert (said.run_id, said.step_id) == (run_id, step_id)
    assert len(events_of(run_id, "llm.usage")) == 1


def test_an_artifact_named_to_climb_out_of_its_step_fails_the_step_saying_so(
        database, monkeypatch):
    # given a tool (a plugin, say) that names its artifact to land in another run's place
    from nofx.tools import Artifact, ToolResult

    monkeypatch.setattr(EchoTool, "run", lambda self, inputs, ctx: ToolResult(
        outputs={}, artifacts=[Artifact("../../../other-run/x", b"x", "text/plain")]))
    run_id, [step_id] = new_run("echo", max_attempts=3)

    run(run_id, step_id)

    # then the step fails at once, not retried, saying what was wrong
    row = step_row(step_id)
    assert (row["status"], row["attempt"]) == ("failed", 1)
    assert row["error"]["type"] == "PermanentToolError"
    assert "artifact name" in row["error"]["message"]


def test_a_second_delivery_of_a_finished_step_passes_the_chain_on_and_records_nothing(
        database):
    run_id, [step_id] = new_run("echo")
    assert run(run_id, step_id).state == "SUCCESS"
    recorded = event_types(run_id)

    again = run(run_id, step_id)

    assert again.state == "SUCCESS"  # Celery goes on to the next link
    assert event_types(run_id) == recorded


def test_a_delivery_of_a_step_another_attempt_holds_stops_there(database):
    run_id, [step_id] = new_run("echo")
    with transaction() as conn:
        assert status.claim_step(conn, run_id, step_id, "the-other-delivery")
    recorded = event_types(run_id)

    assert run(run_id, step_id).state == "IGNORED"
    assert event_types(run_id) == recorded
    assert (step_row(step_id)["status"], step_row(step_id)["task_id"]) == (
        "running", "the-other-delivery")


def test_a_step_whose_tool_is_not_installed_fails_at_once_saying_so(database):
    run_id, [step_id] = new_run("not-installed", max_attempts=3)
    run(run_id, step_id, tool="not-installed")
    row = step_row(step_id)
    assert (row["status"], row["attempt"]) == ("failed", 1)
    assert "no tool named 'not-installed'" in row["error"]["message"]


def test_a_step_queued_before_the_spending_bounds_tightened_fails_saying_why(
        database, monkeypatch):
    # given a codegen step accepted for 8192 tokens, and then a limit of 4096
    from nofx.tools import codegen

    run_id, [step_id] = new_run("codegen", inputs={"prompt": "p", "max_tokens": 8192})
    tightened = replace(get_settings(), llm_max_tokens_limit=4096, llm_max_tokens=1024)
    monkeypatch.setattr(codegen, "get_settings", lambda: tightened)

    run(run_id, step_id, tool="codegen")

    # then it fails at once, not retried, naming the input and the limit
    row = step_row(step_id)
    assert (row["status"], row["attempt"]) == ("failed", 1)
    assert row["error"]["type"] == "InvalidInputs"
    assert "max_tokens: at most 4096 here (NOFX_LLM_MAX_TOKENS_LIMIT)" in row["error"]["message"]


def test_a_retryable_failure_of_a_cancelled_step_is_not_retried(database, monkeypatch, caplog):
    # given a tool that fails in a way worth retrying, just after its run was cancelled
    from nofx.errors import RetryableToolError

    def cancel_then_fail(self: Any, inputs: Any, ctx: Any) -> Any:
        with transaction() as conn:
            status.cancel_run(conn, ctx.run_id)
        raise RetryableToolError("overloaded")

    monkeypatch.setattr(EchoTool, "run", cancel_then_fail)
    run_id, [step_id] = new_run("echo", max_attempts=3)

    with caplog.at_level(logging.WARNING):
        run(run_id, step_id)

    # then the step stays cancelled, ended once, and no retry is queued
    assert step_row(step_id)["status"] == "cancelled"
    types = event_types(run_id)
    assert types.count("step.finished") == 1 and "step.retrying" not in types
    assert any("step failure not recorded" in r.getMessage() and r.run_id == run_id
               for r in caplog.records)


def test_a_step_interrupted_by_a_signal_meant_for_another_task_runs_again(
        database, monkeypatch, caplog):
    # given a step whose process receives SIGUSR1 meant for the task it ran before (a
    # cancel's revoke arriving late): SoftTimeLimitExceeded long before its own limit
    from celery.exceptions import SoftTimeLimitExceeded

    run_id, [step_id] = new_run("echo")
    calls = {"n": 0}
    finish = EchoTool.run

    def interrupted_once(self: EchoTool, inputs: dict[str, Any], ctx: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise SoftTimeLimitExceeded()
        return finish(self, inputs, ctx)

    monkeypatch.setattr(EchoTool, "run", interrupted_once)

    with caplog.at_level(logging.WARNING):
        result = run(run_id, step_id)

    # then it is not recorded timed out: it is tried again, and succeeds
    assert result.state == "SUCCESS" and calls["n"] == 2
    row = step_row(step_id)
    assert (row["status"], row["attempt"]) == ("succeeded", 2)
    assert event_types(run_id).count("step.retrying") == 1
    assert any("meant for another task" in r.getMessage() for r in caplog.records)


def test_a_step_past_its_own_soft_limit_still_ends_timed_out(database, monkeypatch):
    from celery.exceptions import SoftTimeLimitExceeded

    # given a step whose soft limit (9 s for a 10 s timeout) has passed when the signal comes
    run_id, [step_id] = new_run("echo", timeout_s=10.0)

    def too_slow(self: EchoTool, inputs: dict[str, Any], ctx: Any) -> Any:
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(EchoTool, "run", too_slow)
    monkeypatch.setattr("nofx.worker.tasks._ran_s", lambda request: 9.5)

    result = run(run_id, step_id)

    assert result.state == "FAILURE"
    assert step_row(step_id)["status"] == "timed_out"


def test_a_stray_signal_on_the_last_attempt_fails_the_step_saying_so(database, monkeypatch):
    from celery.exceptions import SoftTimeLimitExceeded

    run_id, [step_id] = new_run("echo", max_attempts=1)

    def interrupted(self: EchoTool, inputs: dict[str, Any], ctx: Any) -> Any:
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(EchoTool, "run", interrupted)

    assert run(run_id, step_id).state == "FAILURE"
    row = step_row(step_id)
    assert row["status"] == "failed"  # not timed_out: its own limit was far off
    assert row["error"]["message"] == "interrupted by a signal meant for another task"


def test_a_retrys_backoff_starts_again_with_a_resumed_steps_budget(database):
    from nofx.services import execute

    # given a step that used its three attempts, was resumed, and runs its fourth
    run_id, [step_id] = new_run("echo")
    with transaction() as conn:
        for attempt in (1, 2, 3):
            claimed = status.claim_step(conn, run_id, step_id, f"t-{attempt}")
            assert claimed is not None and claimed.attempt == attempt
            if attempt < 3:
                assert status.requeue_step(conn, run_id, step_id, attempt, ("step.retrying", {}))
        assert status.fail_step(conn, run_id, step_id, 3, {"type": "E", "message": "m"})
        assert status.resume_run(conn, run_id) == 0
        fourth = status.claim_step(conn, run_id, step_id, "t-4")

    # then it is the first attempt of its new budget, as far as backoff goes
    assert fourth is not None and (fourth.attempt, fourth.max_attempts) == (4, 6)
    assert execute.attempt_in_budget(fourth) == 1
