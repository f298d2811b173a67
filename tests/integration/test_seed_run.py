"""The seed's run, end to end on real parts: Postgres, Redis, a prefork worker, S3, Claude's API."""

from __future__ import annotations

import hashlib
import os

from tests.support.fake_anthropic import Reply
from tests.support.procs import wait_until
from tests.support.runs import (
    event_types,
    plan,
    quiet,
    seed_body,
    step,
    submit,
    token,
    wait_finished,
)


def test_the_seed_plan_succeeds_with_its_artifact_and_every_event_in_order(
    client, worker, fake_llm
):
    # given the seed's exact plan, and a model that answers with a README (scripted once no
    # earlier test's run is left that could ask the same prompt first)
    wait_until(quiet, timeout=60, what="earlier tests' runs to finish")
    body = seed_body()
    readme = "# Hello World\n\nThis is a simple Hello World README.\n"
    fake_llm.script("Write a simple Hello World README.md file",
                    [Reply.ok(readme, input_tokens=21, output_tokens=13)])

    # when it is submitted and runs
    run = submit(client, body)
    finished = wait_finished(client, run["id"])

    # then the run and its step succeeded, with outputs
    assert finished["status"] == "succeeded"
    [only] = finished["steps"]
    assert only["status"] == "succeeded"
    assert only["outputs"]["artifact"] == "README.md"
    assert only["outputs"]["provider"] == "anthropic"
    assert only["error"] is None
    # one artifact whose bytes are what the model returned, served by the API
    [artifact] = finished["artifacts"]
    assert artifact["name"] == "README.md" and artifact["content_type"] == "text/markdown"
    content = client.get(artifact["url"])
    assert content.status_code == 200
    assert content.data.decode() == readme
    assert content.mimetype == "text/markdown"
    assert artifact["size"] == len(readme.encode())
    assert artifact["sha256"] == hashlib.sha256(readme.encode()).hexdigest()
    # and the events came in exactly this order
    assert event_types(client, run["id"]) == [
        "run.created", "run.started", "step.started", "llm.usage",
        "artifact.created", "step.finished", "run.finished",
    ]


def test_llm_usage_carries_the_servers_token_counts_and_a_cost(client, worker, fake_llm):
    marker = token()
    fake_llm.script(marker, [Reply.ok("text", input_tokens=1000, output_tokens=2000)])
    run = submit(client, plan(step("gen", "codegen", prompt=f"write {marker}",
                                   model="claude-sonnet-4-5")))
    wait_finished(client, run["id"])

    usage = [e for e in client.get(f"/runs/{run['id']}/events").get_json()["items"]
             if e["type"] == "llm.usage"]
    assert [u["payload"]["input_tokens"] for u in usage] == [1000]
    assert usage[0]["payload"]["output_tokens"] == 2000
    assert usage[0]["payload"]["provider"] == "anthropic"
    # claude-sonnet-4*: $3 in, $15 out per million tokens
    assert usage[0]["payload"]["cost_usd"] == 0.003 + 0.03
    # and the SDK sent our key and the model we asked for
    [call] = fake_llm.calls(marker)
    assert call["body"]["model"] == "claude-sonnet-4-5"
    sent_key = call["headers"].get("x-api-key") or call["headers"]["authorization"].split()[-1]
    assert sent_key == os.environ["ANTHROPIC_API_KEY"]
