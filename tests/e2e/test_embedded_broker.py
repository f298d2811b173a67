"""``nofx dev``'s embedded parts (a broker in folders, SQLite, files for artifacts) under the
prefork pool: what a real broker's event loop does for it, that pool checks once a second."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import httpx

from nofx.db.migrate import upgrade
from tests.support.procs import Proc, start_api, start_worker, wait_until
from tests.support.runs import TERMINAL, plan, step


def pool_stacks(worker: Proc) -> str:
    """Every pool process's threads' stacks (SIGUSR2: ``faulthandler``), from its log."""
    import psutil

    for child in psutil.Process(worker.pid).children(recursive=True):
        os.kill(child.pid, signal.SIGUSR2)
    time.sleep(1.0)
    return worker.log()[-20_000:]


def test_a_pool_process_writes_its_threads_stacks_to_the_log_on_sigusr2(stack_env, logs_dir):
    # given a worker (prefork)
    tag = f"{stack_env['NOFX_QUEUE']}-stacks-{uuid.uuid4().hex[:8]}"  # the session cleans up
    worker = start_worker(tag, dict(stack_env, NOFX_QUEUE=tag, NOFX_WORKER_METRICS_PORT="0"),
                          logs_dir)
    try:
        # when an operator sends SIGUSR2 to its pool processes
        log = pool_stacks(worker)
        # then each writes every thread's stack to the worker's log, and lives on
        assert "Current thread" in log or "Thread 0x" in log, log[-2000:]
        assert "billiard" in log
        assert worker.alive()
    finally:
        worker.stop()


def test_a_short_time_limit_ends_its_step_timed_out_and_the_worker_goes_on(
        stack_env, tmp_path: Path, logs_dir):
    # given NOFX on its embedded parts, as `nofx dev` runs it with no configuration
    tag = f"embedded-{uuid.uuid4().hex[:8]}"
    database = f"sqlite:///{tmp_path / 'nofx.db'}"
    upgrade(database)
    env = dict(stack_env, NOFX_DATA_DIR=str(tmp_path), NOFX_BROKER_URL="filesystem://",
               NOFX_DATABASE_URL=database, NOFX_STORAGE_URL=(tmp_path / "artifacts").as_uri(),
               NOFX_QUEUE=tag, NOFX_WORKER_METRICS_PORT="0")
    worker = start_worker(tag, env, logs_dir)
    api, url = start_api(f"{tag}-api", env, logs_dir, workers=1)
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            def finished(run_id: str) -> dict | None:
                run = http.get(f"/runs/{run_id}").json()
                return run if run["status"] in TERMINAL else None

            # when a step outlives a time limit of 1 s (the pool checks its limits once a
            # second: a soft limit just before the hard one would be found late, with it)
            nap = {**step("nap", "sleep", seconds=30), "timeout_s": 1, "max_attempts": 1}
            slow = http.post("/runs", json=plan(nap)).json()["id"]
            try:
                run = wait_until(lambda: finished(slow), timeout=30, what="the slow run to end")
            except AssertionError as exc:  # say where the pool is stuck, not only that it is
                raise AssertionError(f"{exc}\n{pool_stacks(worker)}") from None

            # then it ends timed out, as the soft limit says, not killed
            assert run["steps"][0]["status"] == "timed_out", run
            # and the worker goes on to the next run (a process killed by a hard limit in
            # this pool can take its queue's lock with it, and every later step waits)
            quick = http.post("/runs", json=plan(step("say", "echo", n=1))).json()["id"]
            assert wait_until(lambda: finished(quick), timeout=30,
                              what="the next run")["status"] == "succeeded"
    finally:
        api.stop()
        worker.stop()
