"""The reaper does not queue behind steps: with every worker busy it still heals a stuck one."""

from __future__ import annotations

import signal

from tests.conftest import REDIS_URL
from tests.support.procs import wait_until
from tests.support.runs import plan, step

STUCK_AFTER_S = 3.0  # NOFX_STUCK_AFTER_S in the test environment


def test_a_step_left_by_a_dead_worker_is_reaped_while_every_live_worker_is_busy(make_stack):
    # given a stack whose one live worker is busy with a long step (its only process,
    # prefetch 1: it takes no other message until that step ends)
    stack = make_stack(REDIS_URL).start_api()
    stack.start_beat()
    victim = stack.start_worker("doomed")
    orphan = stack.submit(plan(step("wait", "sleep", seconds=120)))
    wait_until(lambda: stack.run(orphan["id"])["steps"][0]["status"] == "running", timeout=30,
               what="the first step to start")
    stack.start_worker("busy")
    busy = stack.submit(plan(step("wait", "sleep", seconds=120)))
    wait_until(lambda: stack.run(busy["id"])["steps"][0]["status"] == "running", timeout=30,
               what="the busy worker's step to start")

    # when the other worker dies mid-step
    victim.kill(signal.SIGKILL)

    try:
        # then the reaper finds its step silent and requeues it, though no worker is free
        # (it runs in beat, not in a worker's queue behind the steps)
        def reaped() -> list[dict]:
            return [e["payload"] for e in stack.events(orphan["id"])
                    if e["type"] == "step.reaped"]

        found = wait_until(reaped, timeout=STUCK_AFTER_S + 20, interval=0.5,
                           what="the dead worker's step to be reaped")
        assert found[0]["reason"] == "heartbeat_lost" and found[0]["action"] == "requeued"
        # and its health check stays green meanwhile
        detailed = stack.http.get("/health/detailed").json()
        assert detailed["checks"]["reaper"]["ok"], detailed["checks"]["reaper"]
    finally:  # free the busy worker (cancelling interrupts its sleep) before the stack stops
        for run in (orphan, busy):
            stack.http.post(f"/runs/{run['id']}/cancel")
