"""The words NOFX is built from: statuses and the transitions between them."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


RUN_ACTIVE = (RunStatus.QUEUED, RunStatus.RUNNING)
RUN_TERMINAL = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)
RUN_RESUMABLE = (RunStatus.FAILED, RunStatus.CANCELLED)
STEP_ACTIVE = (StepStatus.QUEUED, StepStatus.RUNNING)
STEP_TERMINAL = (
    StepStatus.SUCCEEDED,
    StepStatus.FAILED,
    StepStatus.TIMED_OUT,
    StepStatus.CANCELLED,
)

#: Every step transition NOFX makes, as (from, to). ``status.py`` enforces these.
STEP_TRANSITIONS: frozenset[tuple[StepStatus, StepStatus]] = frozenset(
    {
        (StepStatus.QUEUED, StepStatus.RUNNING),  # claimed by a worker
        (StepStatus.QUEUED, StepStatus.CANCELLED),  # run cancelled or an earlier step failed
        (StepStatus.RUNNING, StepStatus.SUCCEEDED),
        (StepStatus.RUNNING, StepStatus.FAILED),
        (StepStatus.RUNNING, StepStatus.TIMED_OUT),
        (StepStatus.RUNNING, StepStatus.CANCELLED),
        (StepStatus.RUNNING, StepStatus.QUEUED),  # retry later, or reaped and requeued
        (StepStatus.FAILED, StepStatus.QUEUED),  # run resumed
        (StepStatus.TIMED_OUT, StepStatus.QUEUED),
        (StepStatus.CANCELLED, StepStatus.QUEUED),
    }
)

RUN_TRANSITIONS: frozenset[tuple[RunStatus, RunStatus]] = frozenset(
    {
        (RunStatus.QUEUED, RunStatus.RUNNING),
        (RunStatus.QUEUED, RunStatus.CANCELLED),
        (RunStatus.QUEUED, RunStatus.FAILED),
        (RunStatus.RUNNING, RunStatus.SUCCEEDED),
        (RunStatus.RUNNING, RunStatus.FAILED),
        (RunStatus.RUNNING, RunStatus.CANCELLED),
        (RunStatus.FAILED, RunStatus.QUEUED),  # resumed
        (RunStatus.CANCELLED, RunStatus.QUEUED),
    }
)
