"""Limits the API keeps: body size, content type, plan size, page size; keyset pages."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest

from nofx.api.runs import decode_cursor
from nofx.api.schemas import EXAMPLE_CURSOR
from nofx.config import get_settings
from tests.support.runs import plan, step

LIMIT = 1_048_576  # NOFX_MAX_BODY_BYTES's default


def at(errors: dict[str, Any], where: str) -> Any:
    """The field errors at ``where`` (``plan.steps.0.inputs``) in a 422's nested errors."""
    for key in where.split("."):
        assert key in errors, f"{where} not in {errors}"
        errors = errors[key]
    return errors


def oversize_body() -> bytes:
    return json.dumps(plan(step("a", "echo"), goal="g" * (LIMIT + 10))).encode()


@pytest.mark.parametrize("sent", ["with-content-length", "chunked"])
def test_an_oversize_body_is_a_413_however_it_is_sent(client, sent):
    # given a plan larger than the limit, sent whole or streamed in chunks
    body = oversize_body()
    if sent == "chunked":
        response = client.post("/runs", input_stream=io.BytesIO(body), headers={
            "Transfer-Encoding": "chunked", "Content-Type": "application/json"})
    else:
        response = client.post("/runs", data=body, content_type="application/json")
    # then it is refused as too large, saying the limit
    assert response.status_code == 413
    assert str(LIMIT) in response.get_json()["message"]


def test_a_streamed_plan_within_the_limit_is_accepted(client):
    body = json.dumps(plan(step("a", "echo"))).encode()
    response = client.post("/runs", input_stream=io.BytesIO(body), headers={
        "Transfer-Encoding": "chunked", "Content-Type": "application/json"})
    assert response.status_code == 201


def test_a_plan_of_more_than_a_hundred_steps_is_refused(client):
    response = client.post("/runs", json=plan(*[step(f"s{i}", "echo") for i in range(101)]))
    assert response.status_code == 422
    assert "1 to 100 steps" in json.dumps(response.get_json()["errors"])


@pytest.mark.parametrize(("body", "where"), [
    ('{"plan": {"goal": "a\\u0000b", "steps": [{"name": "s", "tool": "echo"}]}}', "plan.goal"),
    ('{"plan": {"goal": "g", "steps": [{"name": "s", "tool": "echo", '
     '"inputs": {"k": ["ok", "\\ud800"]}}]}}', "plan.steps.0.inputs.k.1"),
    ('{"plan": {"goal": "g", "steps": [{"name": "s", "tool": "echo", '
     '"inputs": {"\\u0000": 1}}]}}', "plan.steps.0.inputs"),
], ids=["nul-in-goal", "lone-surrogate-in-inputs", "nul-in-a-key"])
def test_text_postgres_cannot_store_is_a_422_saying_where(client, body, where):
    # given a plan whose JSON is valid but holds a NUL or an unpaired surrogate
    response = client.post("/runs", data=body, content_type="application/json")
    # then it is refused, field by field (nested, as every 422 is), before anything is stored
    assert response.status_code == 422
    assert "cannot be stored" in at(response.get_json()["errors"]["json"], where)[0]


@pytest.mark.parametrize(("value", "where"), [
    ("NaN", "plan.steps.0.inputs.a"),
    ("Infinity", "plan.steps.0.inputs.a"),
    ("-Infinity", "plan.steps.0.inputs.a"),
    ("1e400", "plan.steps.0.inputs.a"),
    ('[1, {"b": NaN}]', "plan.steps.0.inputs.a.1.b"),
])
def test_numbers_json_cannot_carry_are_a_422_saying_where(client, value, where):
    # given a plan holding NaN or an infinity (Python's JSON reads them; JSON has neither,
    # and Postgres' jsonb refuses them), or a number too large for a double
    body = ('{"plan": {"goal": "g", "steps": [{"name": "s", "tool": "echo", '
            f'"inputs": {{"a": {value}}}}}]}}}}')
    before = [r["id"] for r in client.get("/runs?limit=200").get_json()["items"]]
    response = client.post("/runs", data=body, content_type="application/json")
    # then it is refused, saying where, and nothing is stored
    assert response.status_code == 422, response.get_data(as_text=True)
    assert "a number JSON cannot carry" in at(response.get_json()["errors"]["json"], where)[0]
    assert [r["id"] for r in client.get("/runs?limit=200").get_json()["items"]] == before


@pytest.mark.parametrize(("depth", "code"), [(100, 422), (1_000, 400), (100_000, 400)])
def test_json_nested_beyond_reason_is_a_json_error_not_a_500(client, depth, code):
    # given a plan whose inputs nest ``depth`` levels deep: past NOFX's limit of 64, or past
    # what Python's JSON decoder can recurse through
    body = ('{"plan": {"goal": "g", "steps": [{"name": "s", "tool": "echo", "inputs": '
            + '{"a": ' * depth + "1" + "}" * depth + "}]}}")
    response = client.post("/runs", data=body, content_type="application/json")
    # then it is a JSON error that says so, not a 500
    assert response.status_code == code, response.get_data(as_text=True)[:300]
    assert response.mimetype == "application/json"
    assert "nested" in response.get_data(as_text=True)


def test_an_integer_too_long_for_python_to_read_is_a_400(client):
    body = ('{"plan": {"goal": "g", "steps": [{"name": "s", "tool": "echo", "inputs": '
            '{"n": ' + "9" * 5000 + "}}]}}")
    response = client.post("/runs", data=body, content_type="application/json")
    assert response.status_code == 400 and response.mimetype == "application/json"
    assert "cannot be read" in response.get_json()["message"]


def test_a_body_of_nothing_but_nesting_is_a_400(client):
    response = client.post("/runs", data="[" * 100_000, content_type="application/json")
    assert response.status_code == 400 and "nested" in response.get_json()["message"]


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_cursor_at_the_edge_of_time_is_a_422(client, when):
    import base64

    cursor = base64.urlsafe_b64encode(
        f"{when}|3f0f6bd4-4a55-4c38-9b1c-1b6f7f1f2a10".encode()).decode().rstrip("=")
    response = client.get(f"/runs?cursor={cursor}")
    assert response.status_code == 422 and response.get_json()["message"] == "invalid cursor"


@pytest.mark.parametrize(("path", "field"), [
    ("/runs?limit=201", "limit"),
    ("/runs?limit=0", "limit"),
    ("/runs/00000000-0000-0000-0000-000000000000/events?limit=1001", "limit"),
    ("/runs?limt=5", "limt"),
    ("/runs/00000000-0000-0000-0000-000000000000/events?after=9223372036854775808", "after"),
])
def test_page_sizes_beyond_the_limit_and_unknown_parameters_are_a_422(client, path, field):
    response = client.get(path)
    assert response.status_code == 422
    assert field in response.get_json()["errors"]["query"]


def walk(client: Any, until: set[str], **query: Any) -> list[dict[str, Any]]:
    """Runs from ``GET /runs``, page by page, until every id in ``until`` has been seen."""
    seen: list[dict[str, Any]] = []
    cursor: dict[str, str] = {}
    while True:
        page = client.get("/runs", query_string={**query, **cursor})
        assert page.status_code == 200
        seen += page.get_json()["items"]
        if until <= {r["id"] for r in seen}:
            return seen
        assert page.get_json()["next_cursor"], "ran out of pages before seeing every run"
        cursor = {"cursor": page.get_json()["next_cursor"]}


def key(run: dict[str, Any]) -> tuple[datetime, str]:
    return datetime.fromisoformat(run["created_at"]), run["id"]


def test_pages_follow_each_other_newest_first_with_nothing_missed_or_repeated(client):
    # given seven runs made one after another
    made = [client.post("/runs", json=plan(step("a", "echo"))).get_json()["id"] for _ in range(7)]

    # when the runs are read three to a page
    listed = walk(client, set(made), limit=3)

    # then the pages are newest first, with no run twice, and ours in reverse order
    assert [key(r) for r in listed] == sorted((key(r) for r in listed), reverse=True)
    assert len({r["id"] for r in listed}) == len(listed)
    assert [r["id"] for r in listed if r["id"] in made] == made[::-1]
    assert all("steps" not in r and "artifacts" not in r for r in listed)


def test_the_status_filter_pages_through_runs_of_that_status_only(client):
    # given five runs that will not end by themselves, two of them cancelled
    made = [client.post("/runs", json=plan(step("nap", "sleep", seconds=60))).get_json()["id"]
            for _ in range(5)]
    try:
        for run_id in made[:2]:
            assert client.post(f"/runs/{run_id}/cancel").status_code == 200

        # when the cancelled runs are read one to a page
        listed = walk(client, set(made[:2]), status="cancelled", limit=1)

        # then every one listed is cancelled, ours among them and the others not
        assert {r["status"] for r in listed} == {"cancelled"}
        assert not set(made[2:]) & {r["id"] for r in listed}
    finally:
        for run_id in made[2:]:
            client.post(f"/runs/{run_id}/cancel")


def test_the_documented_example_cursor_is_one_this_api_understands(client):
    assert decode_cursor(EXAMPLE_CURSOR) is not None
    assert client.get("/runs", query_string={"cursor": EXAMPLE_CURSOR}).status_code == 200


@pytest.mark.parametrize(("budget", "page_size"), [(250_000, 3), (50_000, 1)],
                         ids=["three-fit", "one-run-past-the-budget"])
def test_a_page_ends_early_once_its_plans_pass_the_byte_budget(client, monkeypatch,
                                                                budget, page_size):
    # given four runs whose plans are ~100 kB each, and pages of about `budget` bytes
    import nofx.api.runs as api_runs

    settings = replace(get_settings(), page_max_bytes=budget)
    monkeypatch.setattr(api_runs, "get_settings", lambda: settings)
    made = [client.post("/runs", json=plan(step("a", "echo", text=f"{i}" * 100_000)))
            .get_json()["id"] for i in range(4)]

    # when the newest four are asked for on one page
    first = client.get("/runs", query_string={"limit": 4}).get_json()

    # then the page stops once its plans pass the budget, but always holds at least one run,
    # and the next page carries on from there with nothing missed or repeated
    assert [r["id"] for r in first["items"]] == made[::-1][:page_size]
    assert first["next_cursor"]
    listed = walk(client, set(made), limit=4)
    assert [r["id"] for r in listed if r["id"] in made] == made[::-1]
    assert len({r["id"] for r in listed}) == len(listed)
    assert {r["plan"]["steps"][0]["inputs"]["text"] for r in listed if r["id"] in made} == {
        f"{i}" * 100_000 for i in range(4)}


def test_a_page_within_the_budget_is_whole(client):
    # given the default budget (4 MiB) and three small runs
    made = [client.post("/runs", json=plan(step("a", "echo"))).get_json()["id"] for _ in range(3)]
    # then a page of three holds all three
    page = client.get("/runs", query_string={"limit": 3}).get_json()
    assert [r["id"] for r in page["items"]] == made[::-1]


def test_runs_list_in_the_cli_walks_on_past_a_page_cut_short(app, client, monkeypatch):
    # given four runs of ~100 kB plans, pages of about 150 kB, and the CLI on this app
    import httpx
    from click.testing import CliRunner

    import nofx.api.runs as api_runs
    from nofx import cli
    from nofx import client as client_module

    settings = replace(get_settings(), page_max_bytes=150_000)
    monkeypatch.setattr(api_runs, "get_settings", lambda: settings)
    made = [client.post("/runs", json=plan(step("a", "echo", text="x" * 100_000),
                                           goal=f"run {i}")).get_json()["id"]
            for i in range(4)]

    real = client_module.Client

    def local(*_: Any, **__: Any) -> client_module.Client:
        made_client = real(base_url="http://127.0.0.1", token="")
        made_client.http = httpx.Client(base_url="http://127.0.0.1",
                                        transport=httpx.WSGITransport(app=app))
        return made_client

    monkeypatch.setattr(client_module, "Client", local)

    # when four runs are listed, though each page holds two
    result = CliRunner().invoke(cli.main, ["runs", "list", "--limit", "4"])

    # then all four are shown, newest first, once each
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.output.splitlines()] == made[::-1]


def test_the_page_budget_counts_bytes_as_the_answer_writes_them(client, monkeypatch):
    # given runs whose plans are 20,000 emoji each: 20,000 characters stored, but 240 kB
    # in an answer (each is written as two \\u escapes, 12 bytes), and pages of ~300 kB
    import nofx.api.runs as api_runs

    settings = replace(get_settings(), page_max_bytes=300_000)
    monkeypatch.setattr(api_runs, "get_settings", lambda: settings)
    made = [client.post("/runs", json=plan(step("a", "echo", text="\U0001F600" * 20_000)))
            .get_json()["id"] for _ in range(4)]

    # then a page holds two of them (the second starts at 240 kB), not all four
    page = client.get("/runs", query_string={"limit": 4})
    assert [r["id"] for r in page.get_json()["items"]] == made[::-1][:2]
    assert len(page.get_data()) < 2 * 300_000


def test_the_page_budget_counts_whole_floats_as_postgres_gives_them_back(client, monkeypatch):
    # given plans of 3,000 numbers written 1e+300 (21 kB sent), which jsonb keeps as numeric
    # and gives back written out (301 digits each: ~900 kB in an answer), pages of ~1 MB
    import nofx.api.runs as api_runs

    settings = replace(get_settings(), page_max_bytes=1_000_000)
    monkeypatch.setattr(api_runs, "get_settings", lambda: settings)
    made = [client.post("/runs", json=plan(step("a", "echo", n=[1e300] * 3000)))
            .get_json()["id"] for _ in range(4)]

    # then a page holds two, as its bytes say, not all four
    page = client.get("/runs", query_string={"limit": 4})
    assert [r["id"] for r in page.get_json()["items"]] == made[::-1][:2]
    assert len(page.get_data()) < 2 * 1_000_000
