"""Every error is JSON in the contract's shape; bad input changes nothing; no stack trace leaks."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import exc as sqlalchemy_exc
from sqlalchemy import func, select

from nofx.api import create_app
from nofx.db.engine import transaction
from nofx.db.models import runs
from tests.support.runs import plan, step, submit, wait_finished


def run_count() -> int:
    with transaction() as conn:
        return conn.execute(select(func.count()).select_from(runs)).scalar_one()


def assert_error_shape(response, code: int) -> dict:
    assert response.status_code == code
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["code"] == code and isinstance(body["status"], str) and body["message"]
    assert "Traceback" not in response.get_data(as_text=True)
    return body


@pytest.mark.parametrize(("method", "path", "code"), [
    ("get", "/runs/00000000-0000-0000-0000-000000000000", 404),
    ("get", "/runs/00000000-0000-0000-0000-000000000000/events", 404),
    ("get", "/runs/not-a-uuid/artifacts", 404),
    ("get", "/artifacts/00000000-0000-0000-0000-000000000000/content", 404),
    ("post", "/runs/00000000-0000-0000-0000-000000000000/cancel", 404),
    ("get", "/no/such/route", 404),
    ("delete", "/runs", 405),
    ("put", "/health", 405),
])
def test_errors_are_json_in_one_shape(client, method, path, code):
    assert_error_shape(getattr(client, method)(path), code)


def test_a_bad_plan_gets_422_field_by_field_and_stores_nothing(client):
    before = run_count()
    response = client.post("/runs", json=plan(step("x", "teleport")))
    body = assert_error_shape(response, 422)
    assert "teleport" in str(body["errors"]) and "tool" in str(body["errors"])
    assert run_count() == before


@pytest.mark.parametrize(("data", "content_type", "code"), [
    ("goal=x", "application/x-www-form-urlencoded", 415),
    ("hello", "text/plain", 415),
    ('{"plan": ', "application/json", 400),
    ("[]", "application/json", 422),
    ("null", "application/json", 422),
])
def test_a_body_that_is_not_a_plan_is_refused_and_nothing_is_stored(client, data, content_type, code):
    before = run_count()
    assert_error_shape(client.post("/runs", data=data, content_type=content_type), code)
    assert run_count() == before


@pytest.mark.parametrize(("data", "says"), [
    ('{"plan": {"goal": "g", "steps": [{"name": "a", "tool": "echo", '
     '"inputs": {"x": 1, "x": 2}}]}}', "'x' more than once"),
    ('{"plan": {"goal": "g", "steps": []}, "plan": {"goal": "h", "steps": '
     '[{"name": "a", "tool": "echo"}]}}', "'plan' more than once"),
    ('{"plan": {"goal": "g", "steps": [{"name": "a", "tool": "echo", '
     '"inputs": {"n": ' + "9" * 5000 + '}}]}}', "a number with more than 4300 digits"),
], ids=["duplicate key in inputs", "duplicate top-level key", "5000-digit integer"])
def test_a_body_whose_json_would_lose_something_is_a_400_saying_what(client, data, says):
    # given JSON that Python would read by dropping a key's first value, or cannot read
    before = run_count()
    body = assert_error_shape(client.post("/runs", data=data,
                                          content_type="application/json"), 400)
    # then it is refused, saying what, in words not Python's, and nothing is stored
    assert says in body["message"]
    assert "sys." not in body["message"] and "int_max_str_digits" not in body["message"]
    assert run_count() == before


def test_an_oversize_body_gets_413(client):
    huge = {"plan": {"goal": "g" * 2_000_000, "steps": []}}
    assert_error_shape(client.post("/runs", json=huge), 413)


def test_finished_runs_cannot_be_cancelled_and_running_ones_cannot_be_retried(client, worker):
    run = wait_finished(client, submit(client, plan(step("e", "echo")))["id"])
    assert_error_shape(client.post(f"/runs/{run['id']}/cancel"), 409)
    assert_error_shape(client.post(f"/runs/{run['id']}/retry"), 409)


def test_an_unexpected_error_is_a_json_500_and_is_logged(services, caplog):
    app = create_app({"TESTING": False, "PROPAGATE_EXCEPTIONS": False})

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    with caplog.at_level(logging.ERROR):
        response = app.test_client().get("/boom")
    body = assert_error_shape(response, 500)
    assert "secret internals" not in body["message"]
    assert any("secret internals" in (r.exc_text or "") or r.exc_info for r in caplog.records)


@pytest.mark.parametrize("failure", [
    sqlalchemy_exc.TimeoutError("QueuePool limit of size 5 overflow 5 reached, connection "
                                "timed out, timeout 10.00"),
    sqlalchemy_exc.InterfaceError("SELECT 1", {}, Exception("the connection is closed")),
    sqlalchemy_exc.OperationalError("SELECT 1", {}, Exception("connection refused")),
], ids=["pool exhausted", "connection lost", "database down"])
def test_a_database_that_cannot_answer_is_a_json_503_and_is_logged(services, caplog, failure):
    app = create_app({"TESTING": False, "PROPAGATE_EXCEPTIONS": False})

    @app.get("/db")
    def db():
        raise failure

    with caplog.at_level(logging.ERROR):
        response = app.test_client().get("/db")
    body = assert_error_shape(response, 503)
    assert body["message"] == "the database is unavailable; try again shortly"
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["database unavailable"]


def test_bad_query_parameters_get_422(client):
    assert_error_shape(client.get("/runs?limit=0"), 422)
    assert_error_shape(client.get("/runs?status=sleeping"), 422)
    assert_error_shape(client.get("/runs?cursor=%%%"), 422)
    assert_error_shape(client.get("/runs/x/events?after=-1"), 422)


@pytest.mark.parametrize(("path", "name"), [
    ("/runs?limit=1&limit=2", "limit"),
    ("/runs?status=failed&status=succeeded", "status"),
    ("/runs/00000000-0000-0000-0000-000000000000/events?after=1&after=2", "after"),
])
def test_a_query_parameter_given_twice_is_a_422_not_the_first_one_quietly(client, path, name):
    body = assert_error_shape(client.get(path), 422)
    assert body["errors"]["query"][name] == ["given more than once; give it once"]


def test_endpoints_that_take_no_query_parameters_ignore_a_query_string(client):
    run_id = client.post("/runs", json=plan(step("a", "echo"))).get_json()["id"]
    for query in ("x=1", "x=1&x=2"):
        assert client.get(f"/runs/{run_id}?{query}").status_code == 200
        assert client.get(f"/runs/{run_id}/artifacts?{query}").status_code == 200


@pytest.mark.parametrize("name", ["报告.md", 'a"b.md', "two\nlines.md", "plain.md"])
def test_an_artifact_named_anything_by_a_plugin_tool_downloads(client, services, name):
    # given an artifact a plugin tool named freely (the built-in tools allow safe names only)
    from nofx import adapters, status
    from nofx.db.models import artifacts

    run_id, step_id = status.new_id(), status.new_id()
    with transaction() as conn:
        status.create_run(conn, run_id=run_id, goal="g", plan={}, step_rows=[{
            "id": step_id, "index": 0, "name": "s", "tool": "echo", "inputs": {},
            "max_attempts": 1, "timeout_s": 30.0}])
        key = f"tests/{run_id}/artifact"
        stored = adapters.storage().put(key, b"bytes", "text/markdown")
        artifact_id = status.new_id()
        conn.execute(artifacts.insert().values(
            id=artifact_id, run_id=run_id, step_id=step_id, name=name,
            content_type="text/markdown", size=stored.size, sha256=stored.sha256,
            storage_key=stored.key, created_at=status.now()))
        status.cancel_run(conn, run_id)

    # when it is downloaded
    response = client.get(f"/artifacts/{artifact_id}/content")

    # then it comes, with a header a browser can read and no line break in it
    assert response.status_code == 200 and response.data == b"bytes"
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith("inline; filename")
    assert "\n" not in disposition and disposition.encode("latin-1")
    if name == "plain.md":
        assert disposition == 'inline; filename=plain.md'
    # and a browser runs nothing a model wrote on the API's origin
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Security-Policy"] == "sandbox"
    # and a client that has it already is told so, without the bytes
    assert response.headers["ETag"] == f'"{stored.sha256}"'
    again = client.get(f"/artifacts/{artifact_id}/content",
                       headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""
