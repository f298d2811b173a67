"""User journeys over HTTP against running processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.support.fake_anthropic import Reply
from tests.support.procs import ROOT, free_port, start_api, wait_until
from tests.support.runs import TERMINAL, plan, seed_body, step, token


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a fresh machine: no NOFX, Anthropic or Prometheus settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NOFX_", "ANTHROPIC_", "PROMETHEUS_"))}
    return {**env, **extra}


def test_the_seed_journey_in_embedded_mode_needs_no_servers(tmp_path):
    # given a fresh directory and no configuration at all
    port = str(free_port())
    env = clean_env(NOFX_API_PORT=port)
    dev = subprocess.Popen([sys.executable, "-m", "nofx.cli", "dev"], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(dev.stdout), daemon=True).start()  # type: ignore[arg-type]
    try:
        wait_until(lambda: any("NOFX is up" in line for line in lines), timeout=90,
                   what=f"nofx dev to come up; output so far: {lines}")

        # when the seed's plan is submitted and waited for
        submit = subprocess.run(
            [sys.executable, "-m", "nofx.cli", "runs", "submit",
             str(ROOT / "examples" / "hello-readme.json"), "--wait", "--timeout", "60"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

        # then it succeeded, showed its progress, and the offline LLM said it was offline
        assert submit.returncode == 0, submit.stdout + submit.stderr
        out = submit.stdout
        for kind in ("run.started", "step.started", "llm.usage", "artifact.created",
                     "step.finished", "run.finished"):
            assert kind in out
        assert "offline/offline" in out
        assert "succeeded" in out and "artifact README.md" in out
        artifacts = list((tmp_path / ".nofx" / "artifacts").rglob("README.md"))
        assert len(artifacts) == 1
        assert "offline" in artifacts[0].read_text().lower()
        assert (tmp_path / ".nofx" / "nofx.db").exists()
    finally:
        os.killpg(dev.pid, signal.SIGINT)
        dev.wait(timeout=60)


def test_ten_runs_created_in_parallel_all_succeed_while_health_answers(stack_env, logs_dir, worker):
    api, url = start_api("api-stress", stack_env, logs_dir)
    health_failures: list[str] = []
    stop = threading.Event()

    def watch_health() -> None:
        with httpx.Client(base_url=url, timeout=2) as http:
            while not stop.is_set():
                try:
                    if http.get("/health").status_code != 200:
                        health_failures.append("status")
                except httpx.HTTPError as exc:
                    health_failures.append(repr(exc))
                time.sleep(0.05)

    watcher = threading.Thread(target=watch_health, daemon=True)
    watcher.start()
    try:
        with httpx.Client(base_url=url, timeout=30) as http, ThreadPoolExecutor(10) as pool:
            created = list(pool.map(lambda _: http.post("/runs", json=seed_body()), range(10)))
            assert [r.status_code for r in created] == [201] * 10
            ids = [r.json()["id"] for r in created]

            def all_done() -> list[dict]:
                found = [http.get(f"/runs/{i}").json() for i in ids]
                return found if all(r["status"] in TERMINAL for r in found) else []

            finished = wait_until(all_done, timeout=120, interval=0.5, what="10 runs")
        assert [r["status"] for r in finished] == ["succeeded"] * 10  # type: ignore[union-attr]
        assert all(len(r["artifacts"]) == 1 for r in finished)  # type: ignore[union-attr]
    finally:
        stop.set()
        watcher.join()
        api.stop()
    assert health_failures == []


def test_retry_wait_follows_the_resumed_run_to_its_end(stack_env, logs_dir, worker, fake_llm):
    # given a run whose codegen step failed (Claude refused the request once)
    marker = token()
    fake_llm.script(marker, [Reply.error(400)])
    api, url = start_api("api-retry", stack_env, logs_dir)
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            body = plan(step("write", "codegen", prompt=f"a readme {marker}"))
            run_id = http.post("/runs", json=body).json()["id"]
            wait_until(lambda: http.get(f"/runs/{run_id}").json()["status"] == "failed",
                       timeout=60, what="the first attempt to fail")

        # when it is retried from the command line and waited for
        retry = subprocess.run(
            [sys.executable, "-m", "nofx.cli", "runs", "--api-url", url, "retry", run_id,
             "--wait"], env=stack_env, capture_output=True, text=True, timeout=120)

        # then the wait lasted to the end of the second attempt, which succeeded: it did not
        # stop at the first attempt's run.finished, still in the run's log
        assert retry.returncode == 0, retry.stdout + retry.stderr
        out = retry.stdout
        assert out.count("run.finished") == 2, out
        assert "run.finished failed" in out and "run.resumed" in out
        assert out.rstrip().splitlines()[-2] == f"run {run_id} succeeded", out
        assert "artifact README.md" in out
    finally:
        api.stop()
