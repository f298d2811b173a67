"""``Idempotency-Key`` on ``POST /runs``: enforced by a unique index, so races make one run."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import func, select

from nofx.db.engine import transaction
from nofx.db.models import events, runs
from tests.support.runs import plan, step


def new_key() -> str:
    return f"key-{uuid.uuid4()}"


def runs_with_key(key: str) -> int:
    with transaction() as conn:
        return conn.execute(
            select(func.count()).select_from(runs).where(runs.c.idempotency_key == key)
        ).scalar_one()


def created_events(run_id: str) -> int:
    with transaction() as conn:
        return conn.execute(select(func.count()).select_from(events).where(
            events.c.run_id == run_id, events.c.type == "run.created")).scalar_one()


def test_twenty_identical_requests_racing_with_one_key_make_one_run(app):
    # given twenty clients holding the same body and key, released at the same instant
    key, body = new_key(), plan(step("hello", "echo", n=1), goal=f"race {uuid.uuid4()}")
    start = threading.Barrier(20)

    def submit(_: int) -> Any:
        client = app.test_client()
        start.wait()
        return client.post("/runs", json=body, headers={"Idempotency-Key": key})

    # when they all POST /runs at once
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(submit, range(20)))

    # then one made the run and nineteen were told about it; the database holds one run
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * 19 + [201]
    assert len({a.get_json()["id"] for a in answers}) == 1
    run_id = answers[0].get_json()["id"]
    assert runs_with_key(key) == 1
    assert created_events(run_id) == 1


def test_the_same_key_and_body_again_returns_the_first_run(client):
    key, body = new_key(), plan(step("hello", "echo"))
    first = client.post("/runs", json=body, headers={"Idempotency-Key": key})
    again = client.post("/runs", json=body, headers={"Idempotency-Key": key})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.get_json()["id"] == first.get_json()["id"]


def test_the_same_body_with_its_keys_in_another_order_is_the_same_request(client):
    key = new_key()
    body = {"plan": {"goal": "order",
                     "steps": [{"name": "a", "tool": "echo", "inputs": {"x": 1, "y": 2}}]}}
    reordered = {"plan": {"steps": [{"inputs": {"y": 2, "x": 1}, "tool": "echo", "name": "a"}],
                          "goal": "order"}}
    first = client.post("/runs", json=body, headers={"Idempotency-Key": key})
    again = client.post("/runs", json=reordered, headers={"Idempotency-Key": key})
    assert again.status_code == 200 and again.get_json()["id"] == first.get_json()["id"]


def test_the_same_key_with_another_body_is_a_409_and_makes_nothing(client):
    # given a run made with a key
    key = new_key()
    client.post("/runs", json=plan(step("hello", "echo")), headers={"Idempotency-Key": key})
    # when the key comes back with a different plan
    response = client.post("/runs", json=plan(step("bye", "echo")),
                           headers={"Idempotency-Key": key})
    # then it is refused as a conflict, in the error shape, and still one run has the key
    assert response.status_code == 409
    body = response.get_json()
    assert body["code"] == 409 and "Idempotency-Key" in body["message"]
    assert runs_with_key(key) == 1


def test_different_keys_make_different_runs_and_no_key_makes_a_new_run_each_time(client):
    body = plan(step("hello", "echo"))
    ids = {client.post("/runs", json=body, headers={"Idempotency-Key": new_key()}).get_json()["id"],
           client.post("/runs", json=body, headers={"Idempotency-Key": new_key()}).get_json()["id"],
           client.post("/runs", json=body).get_json()["id"],
           client.post("/runs", json=body).get_json()["id"]}
    assert len(ids) == 4


@pytest.mark.parametrize("key", ["x" * 201, " padded", "tab\tinside", "caf\u00e9"],
                         ids=["too-long", "leading-space", "control-char", "not-ascii"])
def test_a_malformed_key_is_a_422_naming_the_header(client, key):
    response = client.post("/runs", json=plan(step("hello", "echo")),
                           headers={"Idempotency-Key": key.encode().decode("latin-1")})
    assert response.status_code == 422
    assert "Idempotency-Key" in str(response.get_json()["errors"])
