"""The fleet-wide figures behind the API's ``/metrics``, read from the database at scrape time.

Every API replica reads the same rows, so every replica reports the same numbers. The
running-step figures read only the partial index of running steps.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from nofx import status
from nofx.config import get_settings
from nofx.db.engine import transaction
from nofx.db.models import components, counters, runs, steps
from nofx.domain import RunStatus, StepStatus
from nofx.services import reaper


class FleetCollector(Collector):
    """prometheus-client collector: one database read per scrape."""

    def describe(self) -> list[Any]:
        # Registering must not query the database (the API may start before it is up).
        return []

    def collect(self) -> Iterator[Any]:
        settings = get_settings()
        at = status.now()
        with transaction() as conn:
            run_counts = conn.execute(
                select(runs.c.status, func.count()).group_by(runs.c.status)).all()
            step_counts = conn.execute(
                select(steps.c.tool, steps.c.status, func.count())
                .group_by(steps.c.tool, steps.c.status)).all()
            running = conn.execute(
                select(steps.c.tool, func.count(), func.min(steps.c.started_at))
                .where(steps.c.status == StepStatus.RUNNING).group_by(steps.c.tool)).all()
            reaped = conn.execute(
                select(counters.c.labels, counters.c.value)
                .where(counters.c.name == "steps_reaped")).all()
            workers_seen = conn.execute(
                select(func.max(components.c.seen_at)).where(components.c.kind == "reaper")
            ).scalar()
        yield _runs(run_counts)
        yield _steps(step_counts)
        yield from _running(running, at)
        yield _gauge("nofx_steps_stuck", "Running steps the reaper would act on now.",
                     len(reaper.stuck_steps(settings, at)))
        yield _reaped(reaped)
        yield _gauge("nofx_reaper_last_run_timestamp_seconds",
                     "When the reaper last finished a tick (Unix time; 0 if never).",
                     workers_seen.timestamp() if workers_seen else 0.0)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _runs(rows: Any) -> CounterMetricFamily:
    family = CounterMetricFamily("nofx_runs", "Runs by current status.", labels=["status"])
    found = {row[0]: row[1] for row in rows}
    for run_status in RunStatus:
        family.add_metric([run_status.value], found.get(run_status.value, 0))
    return family


def _steps(rows: Any) -> CounterMetricFamily:
    family = CounterMetricFamily("nofx_steps", "Steps by tool and current status.",
                                 labels=["tool", "status"])
    for tool, step_status, count in rows:
        family.add_metric([tool, step_status], count)
    return family


def _running(rows: Any, at: Any) -> Iterator[GaugeMetricFamily]:
    count = GaugeMetricFamily("nofx_steps_running", "Steps running now, by tool.", labels=["tool"])
    oldest = GaugeMetricFamily("nofx_step_running_oldest_age_seconds",
                               "Age of the oldest running step, by tool.", labels=["tool"])
    for tool, n, started in rows:
        count.add_metric([tool], n)
        oldest.add_metric([tool], (at - started).total_seconds() if started else 0.0)
    yield count
    yield oldest


def _reaped(rows: Any) -> CounterMetricFamily:
    family = CounterMetricFamily("nofx_steps_reaped", "Reaper actions, by reason and action.",
                                 labels=["reason", "action"])
    for labels, value in rows:
        parts = dict(part.split("=", 1) for part in labels.split(","))
        family.add_metric([parts.get("reason", ""), parts.get("action", "")], value)
    return family
