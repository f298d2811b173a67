"""The step task in-process, on Postgres: what one delivery does at the edges of its step."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from sqlalchemy import select

from nofx import status
from nofx.db.engine import transaction
from nofx.db.models import steps
from nofx.tools.echo import EchoTool
from nofx.worker.tasks import run_step


def test_a_step_cancelled_while_its_tool_finishes_is_dropped_quietly(
    database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    # given a run whose step's tool is still working when the run is cancelled (the revoke
    # came too late to interrupt it), so its success can no longer be recorded
    run_id, step_id = status.new_id(), status.new_id()
    with transaction() as conn:
        status.create_run(conn, run_id=run_id, goal="g", plan={}, step_rows=[{
            "id": step_id, "index": 0, "name": "s", "tool": "echo", "inputs": {},
            "max_attempts": 3, "timeout_s": 30.0}])
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
