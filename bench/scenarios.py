"""The benchmark scenarios. Each returns a dict of figures; medians over repeats."""

from __future__ import annotations

import http.client
import json
import multiprocessing
import platform
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import redis as redis_lib
from celery import chain

from bench.harness import REDIS_URL, Bench, cpu_used, median, percentile
from tests.support.procs import Proc, wait_until

TERMINAL = ("succeeded", "failed", "cancelled")


def _plan(steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"plan": {"goal": "bench", "steps": steps}}


def _sleep_steps(n: int, seconds: float) -> list[dict[str, Any]]:
    return [{"name": f"s{i}", "tool": "sleep", "inputs": {"seconds": seconds}} for i in range(n)]


def _echo_steps(n: int) -> list[dict[str, Any]]:
    return [{"name": f"e{i}", "tool": "echo", "inputs": {"i": i}} for i in range(n)]


def _runs_ended(bench: Bench) -> int:
    """How many runs have ended so far, from NOFX's durable counters."""
    labels = [f"status={status}" for status in TERMINAL]
    rows = bench.sql("SELECT coalesce(sum(value), 0) FROM counters WHERE name = 'runs' "
                     "AND labels = ANY(:labels)", labels=labels)
    return int(rows[0][0])


def _last_end(bench: Bench, ids: list[str]) -> float | None:
    """When the last of ``ids`` ended (epoch seconds), once all of them have."""
    row = bench.sql("SELECT count(*) FILTER (WHERE status = ANY(:ended)), "
                    "extract(epoch FROM max(ended_at)) FROM runs WHERE id = ANY(:ids)",
                    ended=list(TERMINAL), ids=ids)[0]
    return float(row[1]) if row[0] == len(ids) else None


def _pause(queue: str, worker: Proc) -> Callable[[], None]:
    """Stop ``worker`` consuming ``queue`` (``celery control cancel_consumer``); returns the
    call that makes it consume again."""
    from bench.bare import app  # any app on the same broker reaches any worker

    node = f"{worker.name}@{platform.node()}"
    app.control.cancel_consumer(queue, destination=[node], reply=True, timeout=5)
    return partial(app.control.add_consumer, queue, destination=[node], reply=True, timeout=5)


# -- 1. chain latency ----------------------------------------------------------------------


def chain_latency(bench: Bench, repeat: int = 5, steps: int = 40, ms: float = 10) -> dict:
    """One run of ``steps`` sequential sleeps beside a bare Celery chain of the same, and
    beside a bare chain whose tasks also write their start and end durably (the floor)."""
    from bench.bare import durable_sleep, mark, sleep

    http = bench.http()
    bench.nofx_worker()
    bench.bare_worker()
    store = redis_lib.Redis.from_url(REDIS_URL)

    def nofx_once() -> float:
        started = time.time()
        run_id = http.post("/runs", json=_plan(_sleep_steps(steps, ms / 1000))).json()["id"]
        ended = wait_until(lambda: _last_end(bench, [run_id]), timeout=300, interval=0.02,
                           what="the NOFX chain")
        return float(ended) - started  # type: ignore[arg-type]

    def bare_once(durable: bool = False) -> float:
        key = f"bench:{uuid.uuid4().hex}"
        started = time.time()
        queue = bench.env["BARE_QUEUE"]
        task = durable_sleep if durable else sleep
        links = [task.si(ms / 1000).set(queue=queue) for _ in range(steps)]
        chain(*links, mark.si(key).set(queue=queue)).apply_async()
        ended = wait_until(lambda: store.get(key), timeout=300, interval=0.01, what="bare chain")
        store.delete(key)
        return float(ended) - started  # type: ignore[arg-type]

    nofx_once(), bare_once(), bare_once(durable=True)  # warm up all three
    nofx, bare, durable = [], [], []
    for _ in range(repeat):  # interleaved, so all see the same machine
        nofx.append(nofx_once())
        bare.append(bare_once())
        durable.append(bare_once(durable=True))
    return {
        "steps": steps, "step_ms": ms, "repeat": repeat,
        "nofx_s": median(nofx), "bare_s": median(bare),
        "ratio": round(median(nofx) / median(bare), 3),
        "nofx_all_s": [round(v, 4) for v in nofx], "bare_all_s": [round(v, 4) for v in bare],
        "nofx_overhead_per_step_ms": round((median(nofx) - median(bare)) / steps * 1000, 2),
        # Not the target's baseline: bare tasks that also commit two one-row INSERTs each
        # (start, end), the least any durable record of each step costs.
        "bare_durable_s": median(durable),
        "ratio_to_bare_durable": round(median(nofx) / median(durable), 3),
        "bare_durable_all_s": [round(v, 4) for v in durable],
    }


# -- 2. throughput -------------------------------------------------------------------------


def throughput(bench: Bench, runs: int = 1000, steps_per_run: int = 1, repeat: int = 3,
               clients: int = 8) -> dict:
    """Worker throughput: ``runs`` runs of ``steps_per_run`` echo steps beside as many bare
    no-op tasks, each drained from a full queue by a worker of the same concurrency.

    Both are measured the same way: the worker stops consuming its queue, the work is queued
    (NOFX: ``POST /runs`` by ``clients`` concurrent clients; bare: ``apply_async``), the
    worker resumes consuming, and the clock runs from then to the last step's end. Submission
    is timed too (``nofx_submit_runs_per_s``) but kept out of the worker's rate, as bare
    Celery's publishing is; the API scenario measures it under load. The CPU time each side's
    worker, Postgres backends and Redis used during the drain is reported a step
    (``*_cpu_ms_per_step``): whether a side is bound by CPU or by waiting shows there.
    Runs of several steps are also set beside bare chains of as many tasks, plain and
    durable (each task committing two one-row INSERTs): the floors a chained run stands on.
    """
    from bench.bare import durable_noop, noop

    http = bench.http()
    nofx_worker, bare_worker = bench.nofx_worker(), bench.bare_worker()
    store = redis_lib.Redis.from_url(REDIS_URL)
    total = runs * steps_per_run

    def nofx_once() -> tuple[float, float]:
        body = _plan(_echo_steps(steps_per_run))
        resume = _pause(bench.env["NOFX_QUEUE"], nofx_worker)
        started = time.time()
        with ThreadPoolExecutor(clients) as pool:
            ids = list(pool.map(lambda _: http.post("/runs", json=body).json()["id"], range(runs)))
        submitted = time.time() - started
        ended_before = _runs_ended(bench)  # before resuming: none of these can have ended
        cpu_before = bench.cpu_seconds("nofx-worker")
        draining = time.time()
        resume()

        # Polled cheaply (a few counter rows, as /metrics reads them): a poll is CPU taken
        # from the worker on a saturated machine, and the bare side's poll is one Redis GET.
        wait_until(lambda: _runs_ended(bench) >= ended_before + runs, timeout=1800,
                   interval=0.2, what="all NOFX runs")
        ended = wait_until(lambda: _last_end(bench, ids), timeout=60, interval=0.2,
                           what="all NOFX runs, by id")
        nofx_cpu.append(_cpu_per_step(cpu_before, bench.cpu_seconds("nofx-worker"), total))
        return total / (float(ended) - draining), runs / submitted  # type: ignore[arg-type]

    def bare_once(chained: bool = False, durable: bool = False) -> float:
        key = f"bench:{uuid.uuid4().hex}"
        queue = bench.env["BARE_QUEUE"]
        resume = _pause(queue, bare_worker)
        if chained:  # as NOFX sends them: a chain a run, each task sending the next
            task = durable_noop if durable else noop
            for _ in range(runs):
                chain(*[task.si(key).set(queue=queue)
                        for _ in range(steps_per_run)]).apply_async()
        else:
            for _ in range(total):
                (durable_noop if durable else noop).apply_async((key,), queue=queue)
        cpu_before = bench.cpu_seconds("bare-worker")
        draining = time.time()
        resume()
        wait_until(lambda: int(store.get(key) or 0) >= total, timeout=1800, interval=0.01,
                   what="all bare tasks")
        elapsed = time.time() - draining
        readings = {(False, False): bare_cpu, (False, True): durable_cpu,
                    (True, False): chained_cpu, (True, True): durable_chained_cpu}
        readings[chained, durable].append(
            _cpu_per_step(cpu_before, bench.cpu_seconds("bare-worker"), total))
        store.delete(key)
        return total / elapsed

    nofx, bare, chained, durable, durable_chained, submit = [], [], [], [], [], []
    nofx_cpu: list[dict[str, float]] = []
    bare_cpu: list[dict[str, float]] = []
    durable_cpu: list[dict[str, float]] = []
    chained_cpu: list[dict[str, float]] = []
    durable_chained_cpu: list[dict[str, float]] = []
    for _ in range(repeat):
        rate, submit_rate = nofx_once()
        nofx.append(rate)
        submit.append(submit_rate)
        bare.append(bare_once())
        durable.append(bare_once(durable=True))
        if steps_per_run > 1:
            chained.append(bare_once(chained=True))
            durable_chained.append(bare_once(chained=True, durable=True))
    figures = {
        "runs": runs, "steps_per_run": steps_per_run, "steps": total, "repeat": repeat,
        "submit_clients": clients,
        "nofx_steps_per_s": round(median(nofx), 1), "bare_tasks_per_s": round(median(bare), 1),
        "ratio": round(median(nofx) / median(bare), 3),
        "nofx_submit_runs_per_s": round(median(submit), 1),
        "nofx_all": [round(v, 1) for v in nofx], "bare_all": [round(v, 1) for v in bare],
        # Where the CPU went while draining (ms a step, medians): how much each side spends,
        # and where, beside how fast it goes (a drain can be bound by latency, not CPU).
        "nofx_cpu_ms_per_step": _median_each(nofx_cpu),
        "bare_cpu_ms_per_step": _median_each(bare_cpu),
        # Not the target's baseline: bare tasks that also commit two one-row INSERTs each
        # (start, end), the least any durable record of each step costs.
        "bare_durable_tasks_per_s": round(median(durable), 1),
        "ratio_to_bare_durable": round(median(nofx) / median(durable), 3),
        "bare_durable_all": [round(v, 1) for v in durable],
        "bare_durable_cpu_ms_per_step": _median_each(durable_cpu),
    }
    if chained:  # not the target's baseline: how much of the gap is Celery's chaining
        figures.update({
            "bare_chained_tasks_per_s": round(median(chained), 1),
            "ratio_to_bare_chains": round(median(nofx) / median(chained), 3),
            "bare_chained_all": [round(v, 1) for v in chained],
            "bare_chained_cpu_ms_per_step": _median_each(chained_cpu),
            # the floor for multi-step runs: bare chains whose tasks each commit two INSERTs
            "bare_durable_chained_tasks_per_s": round(median(durable_chained), 1),
            "ratio_to_bare_durable_chains": round(median(nofx) / median(durable_chained), 3),
            "bare_durable_chained_all": [round(v, 1) for v in durable_chained],
            "bare_durable_chained_cpu_ms_per_step": _median_each(durable_chained_cpu),
        })
    return figures


def _cpu_per_step(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]],
                  steps: int) -> dict[str, float]:
    """ms of CPU a step by group, their total, and how many processes each group had."""
    used = cpu_used(before, after)
    per_step = {name: seconds * 1000 / steps for name, (seconds, _) in used.items()}
    return {**per_step, "total": sum(per_step.values()),
            **{f"{name}_processes": float(n) for name, (_, n) in used.items()}}


def _median_each(readings: list[dict[str, float]]) -> dict[str, float]:
    return {name: round(median([r[name] for r in readings]), 3) for name in readings[0]}


# -- 3. API latency ------------------------------------------------------------------------


def api_latency(bench: Bench, levels: tuple[int, ...] = (1, 8, 32), requests: int = 400,
                repeat: int = 3) -> dict:
    """``POST /runs`` and ``GET /runs/{id}`` latency at several concurrent clients.

    The API runs under gunicorn (2 workers). The NOFX worker is up but not consuming its
    queue, so the two cores serve the API, Postgres, Redis and the clients only (workers are
    other machines in production); ``clients_8_worker_draining`` is 8 clients again with the
    worker running the submitted runs on the same two cores. Percentiles are medians over
    ``repeat`` rounds of ``requests`` requests.
    """
    bench.api(workers=2)
    worker = bench.nofx_worker()
    body = _plan(_echo_steps(1))
    results: dict[str, Any] = {"requests_per_level": requests, "repeat": repeat,
                               "gunicorn_workers": 2}

    def measure(clients: int) -> dict[str, float]:
        rounds = [_timed_requests(bench, clients, requests, body) for _ in range(repeat)]
        return {f"{method}_p{pct}_ms": median([percentile(r[i], pct) for r in rounds])
                for i, method in enumerate(("post", "get")) for pct in (50, 99)}

    resume = _pause(bench.env["NOFX_QUEUE"], worker)
    _timed_requests(bench, 2, 40, body)  # warm both gunicorn workers and their pools
    for level in levels:
        results[f"clients_{level}"] = measure(level)
    resume()
    results["clients_8_worker_draining"] = measure(8)
    return results


def _timed_requests(bench: Bench, clients: int, requests: int, body: dict) -> tuple[list, list]:
    """``clients`` concurrent clients, each its own process with one keep-alive connection,
    each sending ``POST /runs`` then ``GET /runs/{id}`` in a loop: every latency, in ms.

    Processes and the standard library's ``http.client``, so that the load generator (on
    the same two cores) adds as little as it can and its clients do not queue behind one
    another on a GIL: what is measured is the API's latency, not the client's. Each client
    opens its connection with one unmeasured request, then all start together: the
    figures are for ``clients`` clients at work, not for the burst of them connecting.
    """
    global _START
    per_client = max(1, requests // clients)
    payload = json.dumps(body).encode()
    context = multiprocessing.get_context("fork")
    _START = context.Barrier(clients)  # inherited by the forked clients
    with context.Pool(clients) as pool:
        results = pool.starmap(_client_loop, [(bench.url, payload, per_client)] * clients)
    return ([ms for post, _ in results for ms in post], [ms for _, get in results for ms in get])


_START: Any = None


def _client_loop(url: str, payload: bytes, n: int) -> tuple[list[float], list[float]]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    headers = {"Content-Type": "application/json"}
    post: list[float] = []
    get: list[float] = []
    try:
        conn.request("POST", "/runs", payload, headers)  # connect, unmeasured
        conn.getresponse().read()
        _START.wait(timeout=60)
        for _ in range(n):
            t0 = time.perf_counter()
            conn.request("POST", "/runs", payload, headers)
            response = conn.getresponse()
            answer = response.read()
            post.append((time.perf_counter() - t0) * 1000)
            if response.status != 201:
                raise AssertionError(f"POST /runs answered {response.status}: {answer[:300]!r}")
            run_id = json.loads(answer)["id"]
            t0 = time.perf_counter()
            conn.request("GET", f"/runs/{run_id}")
            response = conn.getresponse()
            response.read()
            get.append((time.perf_counter() - t0) * 1000)
    finally:
        conn.close()
    return post, get


# -- 4. scale ------------------------------------------------------------------------------


def scale(bench: Bench, sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000),
          samples: int = 20) -> dict:
    """Query times with many finished steps in Postgres, and the index each query uses."""
    from nofx.services import reaper

    http = bench.http()
    results: dict[str, Any] = {"samples": samples}
    have = 0
    for size in sizes:
        _grow(bench, size - have)
        have = size
        run_id = bench.sql("SELECT id FROM runs ORDER BY created_at DESC LIMIT 1")[0][0]
        figures: dict[str, Any] = {
            "get_run_ms": _time_ms(partial(http.get, f"/runs/{run_id}"), samples),
            "list_runs_ms": _time_ms(lambda: http.get("/runs?limit=50"), samples),
            "metrics_ms": _time_ms(lambda: http.get("/metrics"), samples),
            "reaper_query_ms": _time_ms(lambda: _in_env(bench, reaper.stuck_steps), samples),
        }
        figures["explain"] = _explain(bench, run_id)
        results[f"steps_{size}"] = figures
    return results


def _grow(bench: Bench, steps: int) -> None:
    """Add finished runs of 10 steps each (and a few running steps), then ANALYZE."""
    runs = max(1, steps // 10)
    bench.sql(
        """
        WITH new AS (
          INSERT INTO runs (id, status, goal, plan, created_at, started_at, ended_at,
                            dispatched_at, updated_at)
          SELECT gen_random_uuid()::text, 'succeeded', 'scale', '{}'::jsonb,
                 now() - (g || ' seconds')::interval, now(), now(), now(), now()
          FROM generate_series(1, :runs) g
          RETURNING id)
        INSERT INTO steps (id, run_id, index, name, tool, status, inputs, outputs, attempt,
                           max_attempts, timeout_s, started_at, ended_at, updated_at)
        SELECT gen_random_uuid()::text, new.id, i, 's' || i,
               CASE WHEN i % 2 = 0 THEN 'echo' ELSE 'codegen' END, 'succeeded',
               '{}'::jsonb, '{}'::jsonb, 1, 3, 30, now(), now(), now()
        FROM new CROSS JOIN generate_series(0, 9) i
        """, runs=runs)
    bench.sql("ANALYZE")


def _time_ms(fn: Callable[[], Any], samples: int) -> float:
    fn()  # warm
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return median(times)


def _in_env(bench: Bench, fn: Callable[[], Any]) -> Any:
    """Call a NOFX function against the bench's database."""
    import os

    from nofx.config import reset_settings

    saved = os.environ.get("NOFX_DATABASE_URL")
    os.environ["NOFX_DATABASE_URL"] = bench.env["NOFX_DATABASE_URL"]
    reset_settings()
    try:
        return fn()
    finally:
        if saved is None:
            os.environ.pop("NOFX_DATABASE_URL", None)
        else:
            os.environ["NOFX_DATABASE_URL"] = saved
        reset_settings()


def _explain(bench: Bench, run_id: str) -> dict[str, str]:
    """Each query's scans (the plan's lines that read a table), to show which index serves it."""
    from sqlalchemy.dialects import postgresql

    from nofx.config import Settings
    from nofx.services.runs import _RUN_WITH_STEPS, list_runs_query

    def sql(statement: Any) -> str:
        return str(statement.compile(dialect=postgresql.dialect(),
                                     compile_kwargs={"literal_binds": True}))

    queries = {  # the statements GET /runs/{id} and GET /runs?limit=50 send, from the code
        "get_run": sql(_RUN_WITH_STEPS.params(run_id=run_id)),
        "list_runs": sql(list_runs_query(None, 50, None, Settings.page_max_bytes)),
        "reaper_running": "SELECT * FROM steps WHERE status = 'running' ORDER BY heartbeat_at",
        "metrics_running": "SELECT tool, count(*), min(started_at) FROM steps "
                           "WHERE status = 'running' GROUP BY tool",
    }
    plans = {}
    for name, statement in queries.items():
        rows = bench.sql(f"EXPLAIN {statement}")
        plans[name] = " | ".join(r[0].strip() for r in rows if "Scan" in r[0])
    return plans


# -- 6. round trips ------------------------------------------------------------------------


def round_trips(bench: Bench, calls: int = 55, idle_ms: float = 10.0) -> dict:
    """One statement's latency as a worker sends it (pooled autocommit connection, through the
    driver), back to back and after ``idle_ms`` of quiet: ``SELECT 1``, a one-row ``INSERT``
    (what the durable baseline commits twice a task), a step's claim and its success.

    The chain's steps write after a 10 ms sleep, so this shows what each of its round trips
    costs there, and how much of that is any commit rather than what NOFX records.
    """

    def measure() -> dict:
        from nofx import status
        from nofx.db.engine import fetch_one_by_driver

        run_rows = [_one_step_run(status) for _ in range(2 * calls)]
        figures: dict[str, dict[str, float]] = {}
        for mode, gap in (("back_to_back", 0.0), (f"after_{idle_ms:g}_ms_idle", idle_ms / 1000)):
            timings: dict[str, list[float]] = {"select_1": [], "insert_one_row": [],
                                               "claim": [], "success": []}
            for n in range(calls):
                run_id, step_id = run_rows.pop()
                claimed: list[Any] = []

                def claim() -> None:
                    with status.write_connection() as conn:
                        claimed.append(status.claim_step(conn, run_id, step_id, f"t{n}"))

                def succeed() -> None:
                    with status.write_connection() as conn:
                        assert status.succeed_step(conn, run_id, step_id, claimed[0].attempt,
                                                   {"n": n})

                def select_1() -> None:
                    with status.write_connection() as conn:
                        fetch_one_by_driver(conn, "SELECT 1", ())

                def insert_one_row() -> None:
                    with status.write_connection() as conn:
                        fetch_one_by_driver(conn, "INSERT INTO bare_transitions (task_id, what)"
                                                  " VALUES (%s, %s) RETURNING id", (step_id, "x"))

                for name, call in (("select_1", select_1), ("insert_one_row", insert_one_row),
                                   ("claim", claim), ("success", succeed)):
                    if gap:
                        time.sleep(gap)
                    started = time.perf_counter()
                    call()
                    timings[name].append(time.perf_counter() - started)
            figures[mode] = {f"{name}_us": round(median([t * 1e6 for t in v]))
                             for name, v in timings.items()}
        return figures

    return {"calls": calls, "idle_ms": idle_ms, **_in_env(bench, measure)}


def _one_step_run(status: Any) -> tuple[str, str]:
    """A queued one-step ``echo`` run written as the API writes one; its and its step's ids."""
    run_id, step_id = status.new_id(), status.new_id()
    step = {"id": step_id, "index": 0, "name": "e0", "tool": "echo", "inputs": {"n": 0},
            "max_attempts": 3, "timeout_s": 300.0}
    with status.write_connection() as conn:
        status.create_run(conn, run_id=run_id, goal="bench", plan=_plan([step])["plan"],
                          step_rows=[step])
    return run_id, step_id


# -- 5. memory -----------------------------------------------------------------------------


def memory(bench: Bench, checkpoints: tuple[int, ...] = (1_000, 10_000), clients: int = 8) -> dict:
    """API and worker resident memory after 1k and 10k runs."""
    http = bench.http()
    bench.nofx_worker()
    body = _plan(_echo_steps(1))
    results: dict[str, Any] = {}
    done = 0
    for checkpoint in checkpoints:
        with ThreadPoolExecutor(clients) as pool:
            ids = list(pool.map(lambda _: http.post("/runs", json=body).json()["id"],
                                range(checkpoint - done)))
        done = checkpoint
        wait_until(partial(_last_end, bench, ids), timeout=3600, interval=0.5,
                   what="runs to finish")
        results[f"after_{checkpoint}_runs"] = {"api_rss_mb": bench.rss_mb("api"),
                                               "worker_rss_mb": bench.rss_mb("nofx-worker")}
    return results
