"""The fleet-wide figures behind the API's ``/metrics``, read from the database at scrape time.

Every API replica reads the same rows, so every replica reports the same numbers (alert
rules take ``max()`` across replicas). ``nofx_runs_total`` and ``nofx_steps_total`` count
transitions into each status, kept by the transitions themselves (``nofx/db/counters.py``),
so a scrape reads a few dozen rows however many runs there have been; the running-step
figures read only the partial index of running steps.
Series are zero-filled for every known tool, status and reaper action, so ``increase()``
sees the first event of each kind.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Connection, func, select

from nofx import status
from nofx.config import get_settings
from nofx.db import counters
from nofx.db.engine import transaction
from nofx.db.models import components, steps
from nofx.domain import RunStatus, StepStatus
from nofx.services import reaper
from nofx.tools import registry as tool_registry

#: The reaper's (reason, action) pairs, shown at 0 until they first happen.
REAPER_ACTIONS = [
    (reaper.HEARTBEAT_LOST, "requeued"), (reaper.HEARTBEAT_LOST, "failed"),
    (reaper.HARD_LIMIT, "requeued"), (reaper.HARD_LIMIT, "failed"),
    (reaper.NEVER_STARTED, "redispatched"), ("never_dispatched", "redispatched"),
]


class FleetCollector(Collector):
    """prometheus-client collector: one database transaction per scrape."""

    def describe(self) -> list[Any]:
        # Registering must not query the database (the API may start before it is up).
        return []

    def collect(self) -> Iterator[Any]:
        settings = get_settings()
        at = status.now()
        with transaction() as conn:
            figures = _read(conn)
        tools = sorted(set(tool_registry()) | {row[0] for row in figures["steps"]})
        yield _runs(figures["runs"])
        yield _steps(figures["steps"], tools)
        yield from _running(figures["running"], tools, at)
        yield GaugeMetricFamily("nofx_steps_stuck", "Running steps the reaper would act on now.",
                                value=len(reaper.stuck_steps(settings, at)))
        yield _reaped(figures["reaped"])
        seen = figures["reaper_seen"]
        yield GaugeMetricFamily("nofx_reaper_last_run_timestamp_seconds",
                                "When the reaper last finished a tick (Unix time; 0 if never).",
                                value=seen.timestamp() if seen else 0.0)


def _read(conn: Connection) -> dict[str, Any]:
    return {
        "runs": [(counters.parse(labels).get("status", ""), total)
                 for labels, total in counters.totals(conn, "runs").items()],
        "steps": [(parts.get("tool", ""), parts.get("status", ""), total)
                  for labels, total in counters.totals(conn, "steps").items()
                  for parts in [counters.parse(labels)]],
        "running": conn.execute(select(steps.c.tool, func.count(), func.min(steps.c.started_at))
                                .where(steps.c.status == StepStatus.RUNNING)
                                .group_by(steps.c.tool)).all(),
        "reaped": list(counters.totals(conn, "steps_reaped").items()),
        "reaper_seen": conn.execute(select(func.max(components.c.seen_at))
                                    .where(components.c.kind == "reaper")).scalar(),
    }


def _runs(rows: Iterable[Any]) -> CounterMetricFamily:
    family = CounterMetricFamily("nofx_runs", "Runs that entered each status (queued: created).",
                                 labels=["status"])
    found = {row[0]: row[1] for row in rows}
    for run_status in RunStatus:
        family.add_metric([run_status.value], found.get(run_status.value, 0))
    return family


def _steps(rows: Iterable[Any], tools: list[str]) -> CounterMetricFamily:
    family = CounterMetricFamily("nofx_steps", "Steps that entered each status, by tool.",
                                 labels=["tool", "status"])
    found = {(tool, step_status): count for tool, step_status, count in rows}
    for tool in tools:
        for step_status in StepStatus:
            family.add_metric([tool, step_status.value], found.get((tool, step_status.value), 0))
    return family


def _running(rows: Iterable[Any], tools: list[str], at: datetime) -> Iterator[GaugeMetricFamily]:
    count = GaugeMetricFamily("nofx_steps_running", "Steps running now, by tool.", labels=["tool"])
    oldest = GaugeMetricFamily("nofx_step_running_oldest_age_seconds",
                               "Age of the oldest running step, by tool (0: none running).",
                               labels=["tool"])
    found = {tool: (n, started) for tool, n, started in rows}
    for tool in sorted(set(tools) | set(found)):
        n, started = found.get(tool, (0, None))
        count.add_metric([tool], n)
        oldest.add_metric([tool], max(0.0, (at - started).total_seconds()) if started else 0.0)
    yield count
    yield oldest


def _reaped(rows: Iterable[Any]) -> CounterMetricFamily:
    family = CounterMetricFamily("nofx_steps_reaped", "Reaper actions, by reason and action.",
                                 labels=["reason", "action"])
    found = {pair: 0 for pair in REAPER_ACTIONS}
    for labels, value in rows:
        parts = counters.parse(labels)
        found[(parts.get("reason", ""), parts.get("action", ""))] = value
    for (reason, action), value in found.items():
        family.add_metric([reason, action], value)
    return family
