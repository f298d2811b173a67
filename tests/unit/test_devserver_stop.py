"""``nofx dev`` stops every child it started: by themselves, after a timeout, or at once on a
second Ctrl-C; none is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import threading

import pytest

from nofx import devserver
from tests.support.procs import wait_until

STARTED: list[subprocess.Popen[bytes]] = []

#: A child that ignores SIGTERM and has a child of its own (as a worker has its pool).
STUBBORN = "trap '' TERM; sleep 60 & echo ready; wait"


def child(script: str) -> subprocess.Popen[bytes]:
    """``script`` in a session of its own (as ``nofx dev`` starts its children), once it
    has said ``ready`` (its traps set)."""
    proc = subprocess.Popen(["bash", "-c", script], start_new_session=True,
                            stdout=subprocess.PIPE)
    STARTED.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


def group_gone(proc: subprocess.Popen[bytes]) -> bool:
    """Whether nothing of ``proc``'s group is left (killed orphans are reaped promptly)."""
    def gone() -> bool:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        return False
    return bool(wait_until(gone, timeout=5, what="the group to go"))


def server(**children: subprocess.Popen[bytes]) -> devserver.DevServer:
    dev = devserver.DevServer.__new__(devserver.DevServer)
    dev.children = dict(children)
    return dev


def test_children_that_stop_by_themselves_are_waited_for(capsys):
    polite = child("trap 'exit 0' TERM; sleep 60 & echo ready; wait")
    server(api=polite).stop()
    assert polite.returncode == 0 and group_gone(polite)
    assert "NOFX stopped." in capsys.readouterr().err


def test_only_the_main_process_is_asked_to_stop_its_own_children_are_left_to_it(tmp_path):
    # given a child whose own child (as a worker's pool process) notes any SIGTERM it gets
    said = tmp_path / "said"
    main = child(f"(trap 'echo pool-got-term >> {said}; exit' TERM; sleep 60 & wait) & "
                 f"trap 'exit 0' TERM; sleep 0.2; echo ready; wait")
    server(worker=main).stop()
    # then the pool process was not signalled: stopping it is the main process's business
    assert not said.exists() or "pool-got-term" not in said.read_text()
    assert group_gone(main)


def test_a_child_that_will_not_stop_is_killed_with_its_own_children(monkeypatch):
    monkeypatch.setattr(devserver, "STOP_TIMEOUT_S", 1.0)
    stubborn = child(STUBBORN)
    server(worker=stubborn).stop()
    assert stubborn.returncode == -signal.SIGKILL and group_gone(stubborn)


def test_a_second_ctrl_c_kills_at_once_and_leaves_nothing(monkeypatch):
    monkeypatch.setattr(devserver, "STOP_TIMEOUT_S", 60.0)
    stubborn, polite = child(STUBBORN), child("sleep 60 & echo ready; wait")
    handler = signal.getsignal(signal.SIGINT)
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()

    server(worker=stubborn, api=polite).stop()  # returns, not KeyboardInterrupt

    assert all(group_gone(p) for p in (stubborn, polite))
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl-C means what it meant again


@pytest.fixture(autouse=True)
def _no_strays():
    yield
    # nothing this module started may outlive it, whatever a failing test left
    for proc in STARTED:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    STARTED.clear()
