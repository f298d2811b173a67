"""Real NOFX processes for tests: Celery workers, beat and the API under gunicorn."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], object], timeout: float = 30.0, interval: float = 0.1,
               what: str = "condition") -> object:
    """Poll ``check`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # not ready yet
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f" (last error: {last_error!r})" if last_error else ""))


#: Every Proc started and not yet stopped: the session kills what is left (a process in its
#: own session outlives pytest, and a leftover beat would reap the shared database).
LIVE: list[Proc] = []


class Proc:
    """A child process in its own process group, with its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        LIVE.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the whole group (a worker and its pool children)."""
        if self.alive():
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL if it does not go."""
        if self.alive():
            self.kill(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.popen.wait()
        self._log.close()
        if self in LIVE:
            LIVE.remove(self)


def kill_leftovers() -> None:
    """SIGKILL every Proc still running, and its group (the end of a session)."""
    for proc in list(LIVE):
        try:
            os.killpg(proc.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.popen.wait()
        LIVE.remove(proc)


@contextmanager
def stopped_unless_ready(proc: Proc) -> Iterator[Proc]:
    """Stop ``proc`` if waiting for it to be ready fails, rather than leave it running."""
    try:
        yield proc
    except BaseException:
        proc.stop(timeout=5)
        raise


def start_worker(name: str, env: dict[str, str], log_dir: Path, concurrency: int = 2,
                 beat: bool = False, extra: list[str] | None = None) -> Proc:
    """A prefork worker consuming the test queue; returns once it answers a ping."""
    argv = [sys.executable, "-m", "celery", "-A", "nofx.worker", "worker", "--pool", "prefork",
            "-c", str(concurrency), "-l", "INFO", "-n", f"{name}@%h", "-Q", env["NOFX_QUEUE"],
            "--without-mingle", "--without-gossip", *(extra or [])]
    if beat:
        argv += ["-B", "-s", str(log_dir / f"{name}-beat-schedule")]
    proc = Proc(name, argv, env, log_dir)
    with stopped_unless_ready(proc):
        wait_until(lambda: _ready(proc), timeout=60, what=f"worker {name} to be ready")
    return proc


def _ready(proc: Proc) -> bool:
    if not proc.alive():
        raise AssertionError(f"worker {proc.name} exited:\n{proc.log()[-3000:]}")
    return " ready." in proc.log()


def start_beat(name: str, env: dict[str, str], log_dir: Path) -> Proc:
    """A beat process scheduling the reaper."""
    argv = [sys.executable, "-m", "celery", "-A", "nofx.worker", "beat", "-l", "INFO",
            "-s", str(log_dir / f"{name}-schedule")]
    proc = Proc(name, argv, env, log_dir)
    with stopped_unless_ready(proc):
        wait_until(lambda: proc.alive() and "beat: Starting" in proc.log(), timeout=30,
                   what=f"beat {name}")
    return proc


def start_api(name: str, env: dict[str, str], log_dir: Path, workers: int = 2) -> tuple[Proc, str]:
    """The API under gunicorn on a free port; returns the process and its base URL."""
    port = free_port()
    env = dict(env, NOFX_API_PORT=str(port), NOFX_API_HOST="127.0.0.1",
               NOFX_API_WORKERS=str(workers))
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:nofx.api.gunicorn_conf",
            "nofx.api:create_app()"]
    proc = Proc(name, argv, env, log_dir)
    url = f"http://127.0.0.1:{port}"
    with stopped_unless_ready(proc):
        wait_http(proc, f"{url}/health", what=f"api {name}")
    return proc, url


def wait_http(proc: Proc, url: str, what: str, timeout: float = 30) -> None:
    """Wait until ``url`` answers 200; fail with the process's log if it exits first."""
    def _up() -> bool:
        if not proc.alive():
            raise AssertionError(f"{what} exited:\n{proc.log()[-3000:]}")
        return httpx.get(url, timeout=1).status_code == 200

    wait_until(_up, timeout=timeout, what=what)
