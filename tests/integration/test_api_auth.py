"""Bearer tokens: every operation but ``GET /health`` and ``GET /metrics`` needs one.

The operations are read from the app's own OpenAPI document, so a new endpoint is
covered the day it is added.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from typing import Any

import pytest

from nofx.api import create_app
from nofx.api.gunicorn_conf import check_binds, open_bind_problem
from tests.support.api import app_with_tokens, bearer, new_token, settings_env
from tests.support.procs import ROOT, free_port
from tests.support.runs import plan, step

PUBLIC = {("get", "/health"), ("get", "/health/ready"), ("get", "/metrics")}
METHODS = {"get", "post", "put", "patch", "delete"}


def documented_operations() -> list[tuple[str, str]]:
    document = create_app({"TESTING": True}).test_client().get("/openapi.json").get_json()
    return sorted((method, path) for path, item in document["paths"].items()
                  for method in item if method in METHODS)


OPERATIONS = documented_operations()
PROTECTED = [op for op in OPERATIONS if op not in PUBLIC]
# Beyond the document: the document itself and its interactive page.
UNDOCUMENTED = [("get", "/openapi.json"), ("get", "/docs"), ("get", "/no/such/route")]


def concrete(path: str) -> str:
    """The path with every ``{parameter}`` filled in."""
    return re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)


@pytest.fixture(scope="module")
def tokens() -> tuple[str, str]:
    return new_token(), new_token()


@pytest.fixture(scope="module")
def guarded(services: dict[str, Any], tokens: tuple[str, str]) -> Any:
    """A test client for an app with two tokens configured."""
    return app_with_tokens(*tokens).test_client()


def assert_unauthorized(response: Any) -> None:
    assert response.status_code == 401
    assert response.mimetype == "application/json"
    assert response.get_json()["code"] == 401 and response.get_json()["message"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_the_document_lists_the_operations_this_test_walks():
    assert ("post", "/runs") in OPERATIONS and ("get", "/runs/{run_id}/events/stream") in OPERATIONS
    assert set(PUBLIC) <= set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), PROTECTED + UNDOCUMENTED)
@pytest.mark.parametrize("credentials", [
    {},
    {"Authorization": "Bearer not-the-token"},
    {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": "Bearer"},
], ids=["none", "wrong-token", "other-scheme", "empty-bearer"])
def test_every_operation_without_a_valid_token_answers_401(guarded, method, path, credentials):
    # when an operation is called without a valid token
    response = getattr(guarded, method)(concrete(path), headers=credentials)
    # then it is refused, in JSON, with a Bearer challenge
    assert_unauthorized(response)


def test_a_refused_token_is_named_invalid_in_the_challenge(guarded):
    refused = guarded.get("/runs", headers=bearer("not-the-token"))
    missing = guarded.get("/runs")
    assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]
    assert "error=" not in missing.headers["WWW-Authenticate"]


@pytest.mark.parametrize(("method", "path"), sorted(PUBLIC))
def test_health_and_metrics_answer_without_a_token(guarded, method, path):
    assert getattr(guarded, method)(path).status_code == 200


def test_each_configured_token_is_accepted_everywhere(guarded, tokens):
    for token in tokens:
        for path in ("/runs", "/openapi.json", "/docs", "/dev/stuck-steps"):
            assert guarded.get(path, headers=bearer(token)).status_code == 200, path


def test_the_token_is_checked_before_anything_about_the_request(guarded):
    # given requests that would otherwise be 415, 422 and 404
    not_json = guarded.post("/runs", data="hello", content_type="text/plain")
    bad_plan = guarded.post("/runs", json={"plan": "nope"})
    unknown = guarded.get(f"/runs/{uuid.uuid4()}")
    # then, with no token, each is a 401 and no run was made
    for response in (not_json, bad_plan, unknown):
        assert_unauthorized(response)


def test_a_valid_token_submits_a_run(guarded, tokens):
    response = guarded.post("/runs", json=plan(step("hello", "echo")), headers=bearer(tokens[1]))
    assert response.status_code == 201


def test_tokens_are_read_comma_separated_with_spaces_ignored(services):
    # given NOFX_API_TOKEN with two tokens and stray spaces
    first, second = new_token(), new_token()
    client = app_with_tokens(f" {first} ", f"{second}  ").test_client()
    # then both tokens work
    assert client.get("/runs", headers=bearer(first)).status_code == 200
    assert client.get("/runs", headers=bearer(second)).status_code == 200


def test_the_document_declares_bearer_auth_and_a_401_and_403_for_every_protected_operation(
        client):
    document = client.get("/openapi.json").get_json()
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert "loopback" in document["components"]["responses"]["LoopbackOnly"]["description"]
    for method, path in OPERATIONS:
        responses = document["paths"][path][method]["responses"]
        protected = (method, path) not in PUBLIC
        assert ("401" in responses) == protected, (method, path)
        assert ("403" in responses) == protected, (method, path)


# -- refusing to serve an open API on the network ------------------------------------------


@pytest.mark.parametrize(("binds", "env", "refused"), [
    (["127.0.0.1:8000"], {}, False),
    (["localhost:8000"], {}, False),
    (["[::1]:8000"], {}, False),
    (["unix:/run/nofx.sock"], {}, False),
    (["0.0.0.0:8000"], {}, True),
    (["127.0.0.1:8000", "[::]:8000"], {}, True),
    (["10.1.2.3:8000"], {}, True),
    (["0.0.0.0:8000"], {"NOFX_API_TOKEN": "s3cret"}, False),
    (["0.0.0.0:8000"], {"NOFX_API_ALLOW_OPEN": "1"}, False),
])
def test_with_no_token_the_api_refuses_to_bind_beyond_loopback(binds, env, refused):
    env = {"NOFX_API_TOKEN": "", "NOFX_API_ALLOW_OPEN": "", **env}
    with settings_env(**env):
        problem = open_bind_problem(binds)
    assert (problem is not None) == refused
    if problem is not None:
        assert "NOFX_API_TOKEN" in problem and "--allow-open" in problem


class Recorder:
    """Stands in for gunicorn's logger: an allowed open bind is not done for real in tests."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, message: str, *args: Any) -> None:
        self.warnings.append(message % args)


@pytest.mark.parametrize(("binds", "allow_open", "outcome"), [
    (["0.0.0.0:8000"], "", "refused"),
    (["0.0.0.0:8000"], "1", "warned"),
    (["127.0.0.1:8000"], "", "quiet"),
])
def test_gunicorn_refuses_or_warns_about_the_addresses_it_will_really_bind(
    binds, allow_open, outcome
):
    # given gunicorn about to bind ``binds`` (from -b or the config) with no token
    log = Recorder()
    with settings_env(NOFX_API_TOKEN="", NOFX_API_ALLOW_OPEN=allow_open):
        # when it starts, then it stops with the reason, warns, or says nothing
        if outcome == "refused":
            with pytest.raises(SystemExit, match="refusing to serve 0.0.0.0:8000"):
                check_binds(binds, log)
        else:
            check_binds(binds, log)
    assert bool(log.warnings) == (outcome == "warned")


def test_gunicorn_started_on_an_open_address_without_a_token_exits_before_binding(
    stack_env, logs_dir
):
    # given gunicorn told on its command line to bind every interface, with no token
    port = free_port()
    env = {k: v for k, v in stack_env.items() if k != "NOFX_API_TOKEN"}
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:nofx.api.gunicorn_conf",
            "-b", f"0.0.0.0:{port}", "nofx.api:create_app()"]
    # when it starts, then it exits at once, saying why
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode != 0
    assert "refusing to serve 0.0.0.0:" in done.stdout + done.stderr


# -- with no token, only loopback clients: whatever server runs the app --------------------
# ``gunicorn 'nofx.api:create_app()'`` without NOFX's gunicorn config never runs the bind
# check above, so the app itself answers only loopback clients while it has no token.


def open_app(**env: str) -> Any:
    with settings_env(NOFX_API_TOKEN="", **env):
        return create_app({"TESTING": True}).test_client()


@pytest.mark.parametrize("remote", ["10.1.2.3", "192.168.0.7", "2001:db8::1", "::ffff:10.0.0.1"])
def test_with_no_token_a_client_beyond_loopback_gets_a_json_403_and_nothing_is_done(
        services, remote, caplog):
    client = open_app()
    before = run_ids(client)

    response = client.post("/runs", json=plan(step("s", "echo")),
                           environ_base={"REMOTE_ADDR": remote})

    assert response.status_code == 403 and response.mimetype == "application/json"
    assert "NOFX_API_TOKEN" in response.get_json()["message"]
    assert run_ids(client) == before
    assert client.get("/runs", environ_base={"REMOTE_ADDR": remote}).status_code == 403


def run_ids(client: Any) -> list[str]:
    return [run["id"] for run in client.get("/runs?limit=200").get_json()["items"]]


@pytest.mark.parametrize("headers", [
    {"Host": "attacker.example:8000"},  # DNS rebinding: the page's own name, resolved to us
    {"Host": "127.0.0.1.nip.io"},
    {"Origin": "http://attacker.example"},
    {"Origin": "null"},
    {"X-Forwarded-For": "203.0.113.7"},  # a proxy on this machine, passing the world on
    {"Forwarded": "for=203.0.113.7"},
    {"X-Real-IP": "203.0.113.7"},
    {"Via": "1.1 proxy.example"},
], ids=["rebound Host", "rebound Host (nip.io)", "foreign Origin", "opaque Origin",
        "X-Forwarded-For", "Forwarded", "X-Real-IP", "Via"])
@pytest.mark.parametrize("remote", ["127.0.0.1", ""], ids=["tcp", "unix socket"])
def test_with_no_token_loopback_is_not_enough_through_a_proxy_or_for_a_foreign_name(
        services, headers, remote):
    client = open_app()
    before = run_ids(client)
    response = client.post("/runs", json=plan(step("s", "echo")), headers=headers,
                           environ_base={"REMOTE_ADDR": remote})
    assert response.status_code == 403 and "loopback" in response.get_json()["message"]
    assert run_ids(client) == before


@pytest.mark.parametrize("headers", [
    {"Host": "localhost:8000"}, {"Host": "127.0.0.1:8000"}, {"Host": "[::1]:8000"},
    {"Host": "nofx.localhost"}, {"Host": "127.0.0.1", "Origin": "http://localhost:8000"},
])
def test_with_no_token_loopback_names_are_served(services, headers):
    response = open_app().get("/runs", headers=headers, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert response.status_code == 200


@pytest.mark.parametrize("remote", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_with_no_token_loopback_clients_are_served(services, remote):
    assert open_app().get("/runs", environ_base={"REMOTE_ADDR": remote}).status_code == 200


@pytest.mark.parametrize(("method", "path"), sorted(PUBLIC))
def test_with_no_token_health_and_metrics_answer_anyone(services, method, path):
    response = open_app().open(path, method=method.upper(),
                               environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert response.status_code == 200


def test_allow_open_serves_every_client_with_no_token(services):
    client = open_app(NOFX_API_ALLOW_OPEN="1")
    assert client.get("/runs", environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 200


def test_with_a_token_any_address_is_served_that_presents_it(guarded, tokens):
    response = guarded.get("/runs", headers=bearer(tokens[0]),
                           environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert response.status_code == 200


def test_with_no_token_a_unix_socket_client_is_served_and_an_unknown_address_is_not(services):
    client = open_app()
    assert client.get("/runs", environ_base={"REMOTE_ADDR": ""}).status_code == 200
    assert client.get("/runs", environ_base={"REMOTE_ADDR": "unknown"}).status_code == 403
