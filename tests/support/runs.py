"""Helpers for tests that submit plans and wait for runs."""

from __future__ import annotations

import json
import uuid
from typing import Any

from tests.support.procs import ROOT, wait_until

TERMINAL = {"succeeded", "failed", "cancelled"}


def seed_body() -> dict[str, Any]:
    """The seed's exact plan, as shipped in examples/hello-readme.json."""
    return json.loads((ROOT / "examples" / "hello-readme.json").read_text())


def token() -> str:
    """A unique marker to put in a prompt, so the fake Claude can script this test's replies."""
    return f"tok-{uuid.uuid4().hex[:12]}"


def step(name: str, tool: str, **inputs: Any) -> dict[str, Any]:
    return {"name": name, "tool": tool, "inputs": inputs}


def plan(*steps: dict[str, Any], goal: str = "a test run") -> dict[str, Any]:
    return {"plan": {"goal": goal, "steps": list(steps)}}


def submit(client: Any, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = client.post("/runs", json=body, headers=headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def get_run(client: Any, run_id: str) -> dict[str, Any]:
    response = client.get(f"/runs/{run_id}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def wait_finished(client: Any, run_id: str, timeout: float = 60) -> dict[str, Any]:
    """Poll until the run is terminal; return it."""
    def _done() -> dict[str, Any] | None:
        run = get_run(client, run_id)
        return run if run["status"] in TERMINAL else None

    return wait_until(_done, timeout=timeout, interval=0.2, what=f"run {run_id} to finish")  # type: ignore[return-value]


def events(client: Any, run_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/runs/{run_id}/events")
    assert response.status_code == 200
    return response.get_json()["items"]


def event_types(client: Any, run_id: str) -> list[str]:
    return [e["type"] for e in events(client, run_id)]


def quiet() -> bool:
    """No run an earlier test sent to the workers is still moving (the status counters are
    global; runs written directly by other tests are never sent, and never move)."""
    from sqlalchemy import text

    from nofx.db.engine import transaction

    with transaction() as conn:
        return not conn.execute(text(
            "SELECT count(*) FROM runs WHERE status IN ('queued', 'running') "
            "AND dispatched_at IS NOT NULL")).scalar()


def settle(run_ids: list[str], url: str | None = None) -> None:
    """End, directly, whatever of ``run_ids`` a test left queued or running (tear-down, as
    set-up, writes statuses directly: no events, no counters). Left as they were, a reaper
    would heal them later (requeue, send, fail), and the session's worker run them, under
    some later test that counts what moves."""
    from sqlalchemy import update

    from nofx.db.engine import transaction
    from nofx.db.models import runs, steps

    if not run_ids:
        return
    with transaction(url) as conn:
        conn.execute(update(steps).where(steps.c.run_id.in_(run_ids),
                                         steps.c.status.in_(["queued", "running"]))
                     .values(status="cancelled", due_at=None))
        conn.execute(update(runs).where(runs.c.id.in_(run_ids),
                                        runs.c.status.in_(["queued", "running"]))
                     .values(status="cancelled"))
