"""The README's quickstart runs exactly as written, in a fresh clone, on a clean machine.

The quickstart is two commands: `./scripts/dev` (run NOFX and watch the seed plan succeed)
and `./scripts/test` (the whole suite). The first is run here as written, in a clone of the
repository's committed HEAD with no NOFX, Anthropic or Prometheus variables, and stopped the
way its output says, with Ctrl-C (SIGINT to its process group). The second is what CI runs
(.ci/run); running it from inside the suite would recurse.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support.procs import ROOT, free_port

README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"
SETUP_AND_RUN_S = 420  # a clone installs its .venv first (pip's cache makes it a minute or so)
STOP_S = 60


def quickstart_blocks() -> list[str]:
    """The fenced bash blocks of the README's Quickstart section, in order."""
    section = README.read_text().split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.DOTALL)]


def clean_env(**extra: str) -> dict[str, str]:
    """A fresh shell's environment: no NOFX, Anthropic or Prometheus settings, no venv."""
    venv = str(ROOT / ".venv")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NOFX_", "ANTHROPIC_", "PROMETHEUS_", "PYTEST_"))
           and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(venv))
    return {**env, **extra}


class Output:
    """A child's output, line by line, read by a thread so a wait can time out."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, deadline: float) -> re.Match[str]:
        """The first line from now on that matches ``pattern``; fails at ``deadline``."""
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"the output ended before {pattern!r}:\n{self.tail()}")
            self.lines.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no {pattern!r} in time:\n{self.tail()}")

    def tail(self) -> str:
        return "\n".join(self.lines[-60:])


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _kill_what_runs_in(folder: Path) -> None:
    """SIGKILL leftovers of a failed run: processes whose working directory is in ``folder``."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and Path(os.readlink(proc / "cwd")).is_relative_to(folder):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def test_the_quickstart_is_the_dev_command_then_the_test_command() -> None:
    assert quickstart_blocks()[:2] == ["./scripts/dev", "./scripts/test"]


def test_ci_runs_the_quickstarts_test_command() -> None:
    commands = [shlex.split(line) for line in CI.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    test_command = shlex.split(quickstart_blocks()[1])
    runs = [c[1:] if c[0] == "exec" else c for c in commands]
    assert any(c[:len(test_command)] == test_command for c in runs), (
        f"{CI} does not run {test_command}: {runs}")


@pytest.mark.slow
@pytest.mark.timeout(SETUP_AND_RUN_S + STOP_S + 60)
def test_the_quickstarts_dev_command_runs_the_seed_plan_in_a_fresh_clone(tmp_path: Path) -> None:
    # given a fresh clone of the committed repository and a clean environment
    clone = tmp_path / "nofx"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    port = free_port()
    command = quickstart_blocks()[0]

    # when the quickstart's first command runs exactly as written
    proc = subprocess.Popen(["bash", "-c", command], cwd=clone, env=clean_env(NOFX_API_PORT=str(port)),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output = Output(proc)
    try:
        deadline = time.monotonic() + SETUP_AND_RUN_S
        output.wait_for(rf"^NOFX is up: API http://127\.0\.0\.1:{port}\b", deadline)
        run = output.wait_for(r"^run (\S+) succeeded$", deadline)
        artifact = output.wait_for(r"^\s+file: (.+)$", deadline)
        output.wait_for(r"^NOFX is running\. Ctrl-C stops it\.$", deadline)

        # then the seed plan succeeded and its README.md artifact is a file in the clone
        path = Path(artifact.group(1))
        assert path.name == "README.md" and run.group(1) in str(path)
        assert path.is_relative_to(clone / ".nofx") and path.read_text().strip()

        # and Ctrl-C stops it, and everything it started, cleanly
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(STOP_S) == 0, output.tail()
        assert _port_is_free(port), f"something still listens on :{port}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        _kill_what_runs_in(clone)
