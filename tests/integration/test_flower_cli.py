"""Flower and the ``celery`` CLI show NOFX's tasks by name, with their run, step and tool."""

from __future__ import annotations

import json
import re
import time
import uuid

import httpx

from tests.conftest import SESSION
from tests.support.ops import celery_cli, start_flower
from tests.support.procs import wait_until
from tests.support.runs import get_run, plan, step, submit

WORKER_NAME = f"worker-{SESSION}@"


def our_worker(replies: dict) -> dict:
    [reply] = [r for n, r in replies.items() if n.startswith(WORKER_NAME)]
    return reply


def inspect(stack_env, command: str, worker) -> dict:
    """``celery -A nofx.worker inspect COMMAND --json``, addressed to the session's worker."""
    node = re.search(rf"{WORKER_NAME}\S+? ready\.", worker.log()).group(0).removesuffix(" ready.")
    result = celery_cli(stack_env, "inspect", command, "--json", "-d", node, "-t", "5")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_flower_with_basic_auth_lists_a_step_task_with_its_run_step_and_tool(
        client, worker, stack_env, logs_dir):
    # given Flower on the session's broker, behind basic auth
    password = uuid.uuid4().hex
    flower, url = start_flower(f"flower-{SESSION}", stack_env, logs_dir, "ops", password)
    http = httpx.Client(base_url=url, auth=("ops", password), timeout=5)
    try:
        assert httpx.get(f"{url}/api/tasks", timeout=5).status_code == 401

        # when runs are submitted (again, until Flower's event receiver has caught one)
        def _seen() -> dict | None:
            run = submit(client, plan(step(f"shown-{uuid.uuid4().hex[:6]}", "echo", x=1)))
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                tasks = http.get("/api/tasks", params={"taskname": "nofx.run_step"}).json()
                # (seen by a worker too: the API's task-sent event alone names no worker)
                mine = [t for t in tasks.values()
                        if run["id"] in (t.get("args") or "") and t.get("worker")]
                if mine:
                    return {"run": run, "task": mine[0]}
                time.sleep(0.3)
            return None

        found = wait_until(_seen, timeout=40, interval=0, what="flower to list a nofx.run_step")

        # then the task is named, and its arguments say which run, step and tool
        task, run = found["task"], found["run"]
        assert task["name"] == "nofx.run_step"
        assert run["steps"][0]["id"] in task["args"]
        assert "'tool': 'echo'" in task["kwargs"]
        assert f"'step': '{run['steps'][0]['name']}'" in task["kwargs"]
        assert task["worker"].startswith(WORKER_NAME)
    finally:
        http.close()
        flower.stop()


def test_celery_inspect_registered_lists_the_nofx_tasks(worker, stack_env):
    registered = our_worker(inspect(stack_env, "registered", worker))

    assert {"nofx.run_step", "nofx.finish_run", "nofx.reap"} <= {
        entry.split()[0] for entry in registered}


def test_celery_inspect_active_shows_a_running_step_with_its_run_step_and_tool(
        client, worker, stack_env):
    # given a step that runs long enough for the CLI to start, however slow the host
    run = submit(client, plan(step("nap", "sleep", seconds=60)))
    wait_until(lambda: get_run(client, run["id"])["steps"][0]["status"] == "running",
               timeout=20, what="the step to start")

    active = our_worker(inspect(stack_env, "active", worker))

    [task] = [t for t in active if t["args"][0] == run["id"]]
    assert task["name"] == "nofx.run_step"
    assert task["args"] == [run["id"], run["steps"][0]["id"]]
    assert task["kwargs"] == {"tool": "sleep", "step": "nap", "index": 0}
    # (and the step ends before the next test: the session's worker is shared)
    assert client.post(f"/runs/{run['id']}/cancel").status_code == 200
    wait_until(lambda: "this attempt no longer holds it" in "\n".join(
        line for line in worker.log().splitlines() if task["id"] in line),
        timeout=20, what="the cancelled step to stop")


def test_the_reaper_runs_by_hand_with_celery_call(worker, stack_env):
    # when an operator sends the reaper task (the line in docs/operations.md)
    result = celery_cli(stack_env, "call", "nofx.reap")

    # then the session's worker runs it
    assert result.returncode == 0, result.stderr
    task_id = result.stdout.strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", task_id), result.stdout
    wait_until(lambda: f"Task nofx.reap[{task_id}] succeeded" in worker.log(), timeout=20,
               what="the worker to run the reaper")
