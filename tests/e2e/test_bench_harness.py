"""The benchmark harness still runs (tiny sizes; CI asserts shapes, never timings)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.procs import ROOT

EXPECTED = {
    "chain": {"nofx_s", "bare_s", "ratio"},
    "throughput": {"10x1", "2x5"},
    "api": {"clients_1", "clients_4"},
    "scale": {"steps_100", "steps_300"},
    "memory": {"after_5_runs", "after_10_runs"},
}


def test_every_benchmark_scenario_runs_and_writes_its_figures(tmp_path, services):
    done = subprocess.run([sys.executable, "-m", "bench", "all", "--tiny", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for scenario, keys in EXPECTED.items():
        result = json.loads((tmp_path / f"{scenario}-tiny.json").read_text())
        assert result["scenario"] == scenario and result["machine"]["cpus"]
        assert keys <= set(result["figures"]), result["figures"]
    chain = json.loads((tmp_path / "chain-tiny.json").read_text())["figures"]
    assert chain["nofx_s"] > 0 and chain["bare_s"] > 0
    scale = json.loads((tmp_path / "scale-tiny.json").read_text())["figures"]
    assert set(scale["steps_300"]["explain"]) == {"get_run", "list_runs", "reaper_running",
                                                  "metrics_running"}
