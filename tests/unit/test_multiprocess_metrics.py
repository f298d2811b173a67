"""Reading the pool's metric files survives a file caught before it was sized."""

from __future__ import annotations

import subprocess
import sys

from prometheus_client import CollectorRegistry, generate_latest

from nofx.observe import MultiProcessCollector


def test_an_empty_metrics_file_does_not_break_the_scrape(tmp_path):
    # given one process's real figures, and a file another process has created but not sized
    writer = (
        "from prometheus_client import Counter; "
        "Counter('nofx_demo', 'demo', ['k']).labels('a').inc(3)"
    )
    subprocess.run([sys.executable, "-c", writer], check=True,
                   env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": ""})
    (tmp_path / "counter_99999.db").touch()

    # when the directory is scraped
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    text = generate_latest(registry).decode()

    # then the real figures are there
    assert 'nofx_demo_total{k="a"} 3.0' in text
