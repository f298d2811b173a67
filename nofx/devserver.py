"""``nofx dev``: the API, a prefork worker and beat on one machine, as child processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import click

from nofx.config import Settings, get_settings

READY_TIMEOUT_S = 60.0
#: How long Ctrl-C waits for the children to stop by themselves before killing them.
STOP_TIMEOUT_S = 20.0


def _signal(child: subprocess.Popen[bytes], sig: int, group: bool = False) -> None:
    """Signal the child, or with ``group`` its process group (its session: it and
    everything it started); one already gone is no error."""
    try:
        (os.killpg if group else os.kill)(child.pid, sig)
    except ProcessLookupError:
        pass

class DevServer:
    """Starts and watches the children; stops them all when one dies or on Ctrl-C."""

    def __init__(self, concurrency: int = 2) -> None:
        self.concurrency = concurrency
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.settings: Settings = get_settings()
        self.logs = self.settings.data_dir / "logs"

    def main(self, plan_path: Path | None, exit_after: bool) -> int:
        """Run until Ctrl-C (or, with ``exit_after``, until the submitted run ends)."""
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        try:
            self.start()
            if plan_path is not None:
                code = self.submit(plan_path)
                if exit_after:
                    return code
            click.echo("NOFX is running. Ctrl-C stops it.")
            return self.wait()
        except KeyboardInterrupt:
            return 0
        except click.ClickException as exc:
            exc.show()
            return 1
        finally:
            self.stop()

    def start(self) -> None:
        """Migrate the database, start the children, wait until the API and worker answer."""
        from nofx.db.migrate import upgrade

        self.logs.mkdir(parents=True, exist_ok=True)
        self._check_port()
        self._describe()
        upgrade()
        env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(self.settings.data_dir / "metrics"),
                   NOFX_DATA_DIR=str(self.settings.data_dir))
        from nofx.observe import prepare_multiprocess_dir

        os.environ["PROMETHEUS_MULTIPROC_DIR"] = env["PROMETHEUS_MULTIPROC_DIR"]
        prepare_multiprocess_dir()
        self._spawn("worker", [sys.executable, "-m", "celery", "-A", "nofx.worker", "worker",
                               "-B", "--pool", "prefork", "-c", str(self.concurrency),
                               "-l", "INFO", "-n", "nofx-dev@%h"], env)
        self._spawn("api", [sys.executable, "-m", "gunicorn", "-c", "python:nofx.api.gunicorn_conf",
                            "nofx.api:create_app()"], env)
        self._wait_ready()

    def _describe(self) -> None:
        s = self.settings
        llm = s.llm_provider if s.llm_provider != "offline" else (
            "offline (no ANTHROPIC_API_KEY: answers are placeholders, clearly marked)")
        click.echo(f"NOFX dev  data: {s.data_dir}")
        click.echo(f"  database: {s.database_url.split('@')[-1]}")
        click.echo(f"  broker:   {s.broker_url.split('@')[-1]}")
        click.echo(f"  storage:  {s.storage_url}")
        click.echo(f"  llm:      {llm}")
        click.echo(f"  logs:     {self.logs}/api.log, {self.logs}/worker.log")

    def _check_port(self) -> None:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.settings.api_host, self.settings.api_port))
            except OSError as exc:
                raise click.ClickException(
                    f"{self.settings.api_host}:{self.settings.api_port} is taken ({exc.strerror}); "
                    "set NOFX_API_PORT to another port") from exc

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log: IO[bytes] = open(self.logs / f"{name}.log", "ab")
        self.children[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                               start_new_session=True)

    def _wait_ready(self) -> None:
        from nofx.client import Client

        client, deadline = Client(), time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_children()
            try:
                checks = client.http.get("/health/detailed").json()["checks"]
                if checks["workers"]["ok"]:
                    click.echo(f"NOFX is up: API {client.base_url}  (docs {client.base_url}/docs)")
                    return
            except Exception:  # not up yet
                pass
            time.sleep(0.5)
        raise click.ClickException(f"NOFX did not come up within {READY_TIMEOUT_S:g}s; "
                                   f"see {self.logs}")

    def _check_children(self) -> None:
        for name, child in self.children.items():
            if child.poll() is not None:
                raise click.ClickException(
                    f"the {name} process exited with {child.returncode}; see {self.logs}/{name}.log")

    def submit(self, plan_path: Path) -> int:
        """Submit a plan, show its progress, then where its artifacts are."""
        import json

        from nofx import adapters
        from nofx.cli import watch
        from nofx.client import Client
        from nofx.storage.base import artifact_key
        from nofx.storage.filesystem import FileStorage

        client = Client()
        run = client.submit(json.loads(plan_path.read_text()))
        click.echo(f"submitted {plan_path} as run {run['id']}")
        code = watch(client, run["id"], timeout=300)
        store = adapters.storage()
        finished = client.run(run["id"])
        attempts = {step["id"]: step["attempt"] for step in finished["steps"]}
        for artifact in finished["artifacts"]:
            if isinstance(store, FileStorage):
                key = artifact_key(run["id"], artifact["step_id"],
                                   attempts[artifact["step_id"]], artifact["name"])
                click.echo(f"  file: {store.path_of(key)}")
        return code

    def wait(self) -> int:
        """Block until a child exits (an error) or Ctrl-C."""
        while True:
            for name, child in self.children.items():
                if child.poll() is not None:
                    click.echo(f"the {name} process exited with {child.returncode}; "
                               f"see {self.logs}/{name}.log", err=True)
                    return 1
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM every child (the worker finishes the steps it is running, the API the
        requests it is serving), SIGKILL whatever is left after ``STOP_TIMEOUT_S``, or at
        once on a second Ctrl-C. No child outlives ``nofx dev``."""
        running = {name: c for name, c in self.children.items() if c.poll() is None}
        if not running:
            return
        # A second Ctrl-C only cuts the wait short: raised in here, it would leave children.
        again = threading.Event()
        previous = signal.signal(signal.SIGINT, lambda *_: again.set())
        try:
            click.echo(f"stopping NOFX ({', '.join(running)}); Ctrl-C again stops it at once",
                       err=True)
            for child in running.values():
                # The main process only: it stops its own (the worker lets its pool finish
                # the running steps; gunicorn its workers the requests). Signalled too, the
                # pool processes would stop at once, mid-step.
                _signal(child, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while (time.monotonic() < deadline and not again.is_set()
                   and any(c.poll() is None for c in running.values())):
                time.sleep(0.1)
        finally:
            for child in running.values():
                _signal(child, signal.SIGKILL, group=True)  # pool processes too
                child.wait()
            signal.signal(signal.SIGINT, previous)
        click.echo("NOFX stopped.", err=True)
