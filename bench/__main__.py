"""``python -m bench SCENARIO [--tiny]``: run benchmarks, print a table, write JSON results.

Scenarios (each beside bare Celery where there is a bare equivalent, in the same run):
  chain       one run of 40 sequential 10 ms sleep steps, POST /runs -> run.finished,
              beside a bare Celery chain of 40 x 10 ms tasks (7 interleaved repeats)
  throughput  1,000 one-step and 100 ten-step echo runs drained from a full queue by one
              worker (concurrency 2), beside as many bare no-op tasks drained the same way
              (and, for ten-step runs, bare chains of ten no-op tasks, plain and durable);
              with the CPU each side used a step: worker main process, pool, Postgres
              backends, Redis
  api         POST /runs and GET /runs/{id} p50/p99 at 1, 8 and 32 clients (gunicorn,
              one process per client), and at 8 with the worker draining the runs
  scale       GET /runs/{id}, GET /runs?limit=50, /metrics and the reaper's query with
              10k, 100k and 1M finished steps in Postgres, with each query's EXPLAIN
  memory      API and worker resident memory after 1k and 10k runs
  roundtrips  one statement's latency as a worker sends it, back to back and after 10 ms
              idle: SELECT 1, a one-row INSERT, a step's claim, its success
  all         every one of them

chain and throughput also run a "durable" bare baseline: the same bare tasks, each
committing a one-row INSERT into Postgres before and after its work (the floor of any
durable record of a step's start and end); *_to_bare_durable is NOFX against it, and
ratio_to_bare_durable_chains against durable bare chains for ten-step runs.

--tiny runs each in seconds (CI runs it so the harness never rots; its figures mean
nothing). Needs Postgres and Redis (NOFX_BENCH_PG, NOFX_BENCH_REDIS_URL); see
docs/benchmarks.md for the machine the published figures come from.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import scenarios
from bench.harness import Bench, machine

RESULTS = Path(__file__).resolve().parent / "results"

FULL: dict[str, Callable[[Bench], dict]] = {
    "chain": lambda b: scenarios.chain_latency(b, repeat=7),
    "throughput": lambda b: {
        "1000x1": scenarios.throughput(b, runs=1000, steps_per_run=1, repeat=3),
        "100x10": scenarios.throughput(b, runs=100, steps_per_run=10, repeat=3),
    },
    "api": lambda b: scenarios.api_latency(b, requests=400),
    "scale": lambda b: scenarios.scale(b),
    "memory": lambda b: scenarios.memory(b),
    "roundtrips": lambda b: scenarios.round_trips(b),
}
TINY: dict[str, Callable[[Bench], dict]] = {
    "chain": lambda b: scenarios.chain_latency(b, repeat=1, steps=3),
    "throughput": lambda b: {
        "10x1": scenarios.throughput(b, runs=10, steps_per_run=1, repeat=1),
        "2x5": scenarios.throughput(b, runs=2, steps_per_run=5, repeat=1),
    },
    "api": lambda b: scenarios.api_latency(b, levels=(1, 4), requests=8, repeat=1),
    "scale": lambda b: scenarios.scale(b, sizes=(100, 300), samples=2),
    "memory": lambda b: scenarios.memory(b, checkpoints=(5, 10)),
    "roundtrips": lambda b: scenarios.round_trips(b, calls=3, idle_ms=1),
}


def main(argv: list[str] | None = None, prog: str = "python -m bench") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=[*FULL, "all"])
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke versions")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where JSON results go")
    parser.add_argument("--invocations", type=int, default=1, metavar="N",
                        help="run each scenario N times, each on a fresh bench, and summarise "
                             "every figure as the median of the N, with its range (this "
                             "machine's speed drifts; one invocation is not a measurement)")
    args = parser.parse_args(argv)
    if args.invocations < 1:
        parser.error("--invocations must be at least 1")
    table = TINY if args.tiny else FULL
    names = list(table) if args.scenario == "all" else [args.scenario]
    for name in names:
        if args.invocations == 1:
            result = run_one(name, table[name], tiny=args.tiny)
            path = write(args.out, name, result, tiny=args.tiny)
            print_table(name, result["figures"])
            print_machine(result["machine"])
            print(f"  -> {path}\n")
            continue
        results = []
        for i in range(1, args.invocations + 1):
            results.append(run_one(name, table[name], tiny=args.tiny))
            path = write(args.out, name, results[-1], tiny=args.tiny, suffix=f"-{i}")
            print(f"== {name}: invocation {i} of {args.invocations} -> {path}", flush=True)
        summary = summarise(results)
        path = write(args.out, name, summary, tiny=args.tiny, suffix="-summary")
        print(f"== {name}: median of {args.invocations} invocations [lowest - highest]")
        for key, each in summary["figures"].items():
            print(f"  {key:<44} {each['median']:<10} [{each['min']} - {each['max']}]")
        print_machine(summary["machine"])
        print(f"  -> {path}\n")
    return 0


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Every numeric figure of several invocations (nested keys joined by dots): the median,
    the lowest, the highest and each invocation's value, in order."""
    flat = [_numbers(r["figures"]) for r in results]
    figures = {}
    for key in flat[0]:
        values = [f[key] for f in flat if key in f]
        figures[key] = {"median": round(statistics.median(values), 4), "min": min(values),
                        "max": max(values), "all": values}
    host = dict(results[0]["machine"],
                python_loop_ms_all=[r["machine"].get("python_loop_ms") for r in results])
    return {"scenario": results[0]["scenario"], "tiny": results[0]["tiny"],
            "machine": host, "invocations": len(results),
            "started_at": results[0]["started_at"], "figures": figures}


def _numbers(figures: dict[str, Any], prefix: str = "") -> dict[str, float]:
    found: dict[str, float] = {}
    for key, value in figures.items():
        if isinstance(value, dict):
            found.update(_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[f"{prefix}{key}"] = value
    return found


def run_one(name: str, scenario: Callable[[Bench], dict], tiny: bool) -> dict[str, Any]:
    host = machine()  # before the scenario: its speed reading on a quiet machine
    bench = Bench()
    started = time.time()
    failed = True
    try:
        figures = scenario(bench)
        failed = False
    finally:
        bench.close(keep_logs=failed)  # a failed bench's logs are what explains it
    return {"scenario": name, "tiny": tiny, "machine": host, "bench_id": bench.id,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "duration_s": round(time.time() - started, 1), "figures": figures}


def write(out: Path, name: str, result: dict[str, Any], tiny: bool, suffix: str = "") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}{'-tiny' if tiny else ''}{suffix}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def print_machine(host: dict[str, Any]) -> None:
    loop = host.get("python_loop_ms_all") or host.get("python_loop_ms")
    print(f"  machine: {host['cpus']} x {host['cpu_model']}; a 1M-iteration Python loop "
          f"took {loop} ms (best of 5; lower is faster)")


def print_table(name: str, figures: dict[str, Any], prefix: str = "") -> None:
    if not prefix:
        print(f"== {name}")
    for key, value in figures.items():
        if isinstance(value, dict):
            print(f"  {prefix}{key}:")
            print_table(name, value, prefix + "  ")
        elif not isinstance(value, list):
            print(f"  {prefix}{key:<32} {value}")


if __name__ == "__main__":
    sys.exit(main())
