"""The benchmark harness still runs (tiny sizes; CI asserts shapes, never timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import ROOT

EXPECTED = {
    "chain": {"nofx_s", "bare_s", "ratio", "bare_durable_s", "ratio_to_bare_durable"},
    "throughput": {"10x1", "2x5"},
    "api": {"clients_1", "clients_4"},
    "scale": {"steps_100", "steps_300"},
    "memory": {"after_5_runs", "after_10_runs"},
    "roundtrips": {"back_to_back", "after_1_ms_idle"},
}


def test_every_benchmark_scenario_runs_and_writes_its_figures(tmp_path, services):
    done = subprocess.run([sys.executable, "-m", "bench", "all", "--tiny", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for scenario, keys in EXPECTED.items():
        result = json.loads((tmp_path / f"{scenario}-tiny.json").read_text())
        assert result["scenario"] == scenario and result["machine"]["cpus"]
        assert result["machine"]["python_loop_ms"] > 0  # the host's speed, taken each time
        assert keys <= set(result["figures"]), result["figures"]
    assert done.stdout.count("a 1M-iteration Python loop took") == len(EXPECTED)
    trips = json.loads((tmp_path / "roundtrips-tiny.json").read_text())["figures"]
    import redis

    from bench.harness import REDIS_URL

    # each bench leaves nothing behind in Redis either (its queues' names carry its id)
    ids = {json.loads(p.read_text()).get("bench_id") for p in tmp_path.glob("*-tiny.json")}
    assert None not in ids
    store = redis.Redis.from_url(REDIS_URL)
    assert not [k for i in ids for k in store.scan_iter(match=f"*{i}*")]
    # nor on disk: a bench that succeeded removes its directory (its processes' logs)
    import tempfile

    assert not [d for i in ids for d in Path(tempfile.gettempdir()).glob(f"nofx-bench-{i}-*")]
    assert set(trips["after_1_ms_idle"]) == {"select_1_us", "insert_one_row_us", "claim_us",
                                             "success_us"}
    chain = json.loads((tmp_path / "chain-tiny.json").read_text())["figures"]
    assert chain["nofx_s"] > 0 and chain["bare_s"] > 0
    drained = json.loads((tmp_path / "throughput-tiny.json").read_text())["figures"]["10x1"]
    assert drained["bare_durable_tasks_per_s"] > 0 and drained["ratio_to_bare_durable"] > 0
    # multi-step runs are also set beside bare chains, plain and durable (the floor of a chain
    # whose every task records its start and end)
    chained = json.loads((tmp_path / "throughput-tiny.json").read_text())["figures"]["2x5"]
    for key in ("bare_chained_tasks_per_s", "ratio_to_bare_chains",
                "bare_durable_chained_tasks_per_s", "ratio_to_bare_durable_chains"):
        assert chained[key] > 0, (key, chained)
    assert "bare_durable_chained_tasks_per_s" not in drained  # one-step runs are not chains
    groups = ("worker_main", "worker_pool", "postgres_backends", "redis")
    for side in ("nofx_cpu_ms_per_step", "bare_cpu_ms_per_step"):
        cpu = drained[side]
        assert set(cpu) == {*groups, "total", *(f"{g}_processes" for g in groups)}, cpu
        # (amounts: shapes only, CPU time is counted in 10 ms ticks and a tiny drain may
        # take one; which processes were found: exactly)
        assert min(cpu[g] for g in groups) >= 0
        assert cpu["total"] == pytest.approx(sum(cpu[g] for g in groups), abs=0.01)
        assert (cpu["worker_main_processes"], cpu["worker_pool_processes"]) == (1, 2), cpu
        assert cpu["redis_processes"] >= 1, cpu
    assert drained["nofx_cpu_ms_per_step"]["postgres_backends_processes"] >= 2  # pool + bench
    scale = json.loads((tmp_path / "scale-tiny.json").read_text())["figures"]
    assert set(scale["steps_300"]["explain"]) == {"get_run", "list_runs", "reaper_running",
                                                  "metrics_running"}


def test_nofx_bench_finds_the_checkout_from_any_directory(tmp_path):
    # The installed console script has no checkout on sys.path; `nofx bench` finds bench/
    # beside the package it was installed from (an editable install of this checkout).
    nofx = Path(sys.executable).parent / "nofx"
    done = subprocess.run([str(nofx), "bench", "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("usage: nofx bench"), done.stdout
    assert "throughput  1,000 one-step" in done.stdout  # the scenarios, as bench describes them


def test_several_invocations_are_summarised_as_medians_with_their_range(tmp_path, services):
    done = subprocess.run([sys.executable, "-m", "bench", "roundtrips", "--tiny",
                           "--invocations", "3", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = [json.loads((tmp_path / f"roundtrips-tiny-{i}.json").read_text()) for i in (1, 2, 3)]
    summary = json.loads((tmp_path / "roundtrips-tiny-summary.json").read_text())
    assert summary["invocations"] == 3
    claims = sorted(r["figures"]["back_to_back"]["claim_us"] for r in runs)
    # each numeric figure: the median of the invocations, and the lowest and highest
    assert summary["figures"]["back_to_back.claim_us"] == {
        "median": claims[1], "min": claims[0], "max": claims[2], "all": [
            r["figures"]["back_to_back"]["claim_us"] for r in runs]}
    assert "back_to_back.claim_us" in done.stdout and "median" in done.stdout
    # and the host's speed reading of each invocation, in order
    loops = [r["machine"]["python_loop_ms"] for r in runs]
    assert summary["machine"]["python_loop_ms_all"] == loops
    assert f"a 1M-iteration Python loop took {loops} ms" in done.stdout


def test_a_failed_scenario_keeps_its_bench_logs_and_says_where(services, capsys):
    import re
    import shutil

    from bench.__main__ import run_one

    def broken(bench):
        raise RuntimeError("the scenario broke")

    with pytest.raises(RuntimeError, match="the scenario broke"):
        run_one("broken", broken, tiny=True)
    kept = re.search(r"logs are in (\S+)", capsys.readouterr().err)
    assert kept, "a failed bench should say where its logs are"
    assert Path(kept.group(1)).is_dir()
    shutil.rmtree(kept.group(1))
