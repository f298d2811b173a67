"""Test session setup: real Postgres, Redis (or RabbitMQ), an S3 server and a fake Claude.

Each session gets its own Postgres database, Celery queue and S3 bucket, so sessions and
tests never collide. The environment is set in ``pytest_configure``, before any test module
imports NOFX, so the in-process Celery app and every child process see the same settings.

Real workers run as subprocesses (prefork: time limits and SIGKILL need real processes),
which is why the classic ``celery_worker`` fixture is not used here; pytest-celery 1.x's
fixtures need Docker, which this machine does not have.
"""

from __future__ import annotations

import os
import signal
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_anthropic import FakeAnthropic
from tests.support.procs import Proc, free_port, start_beat, start_worker

SESSION = uuid.uuid4().hex[:10]
PG_SERVER = os.environ.get("NOFX_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("NOFX_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("NOFX_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
DATABASE = f"nofx_test_{SESSION}"
PORTS: dict[str, int] = {}


def pytest_configure(config: pytest.Config) -> None:
    # A suite started as a background job of a non-interactive shell inherits SIGINT
    # ignored, and so would every process it starts: `nofx dev` (rightly, as Python does)
    # keeps ignoring it, and the tests that stop it with Ctrl-C would wait in vain. With a
    # handler here, children start with the default disposition again.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    data_dir = Path(tempfile.mkdtemp(prefix=f"nofx-test-{SESSION}-"))
    PORTS.update(s3=free_port(), llm=free_port(), metrics=free_port())
    os.environ.update({
        "NOFX_DATA_DIR": str(data_dir),
        "NOFX_DATABASE_URL": f"{PG_SERVER}/{DATABASE}",
        "NOFX_BROKER_URL": REDIS_URL,
        "NOFX_QUEUE": f"nofx-test-{SESSION}",
        "NOFX_STORAGE_URL": f"s3://nofx-test-{SESSION}/artifacts",
        "NOFX_S3_ENDPOINT": f"127.0.0.1:{PORTS['s3']}",
        "NOFX_S3_ACCESS_KEY": "testing",
        "NOFX_S3_SECRET_KEY": "testing-secret",
        "NOFX_S3_SECURE": "false",
        "NOFX_S3_REGION": "us-east-1",
        "NOFX_LLM_PROVIDER": "anthropic",
        "ANTHROPIC_API_KEY": "sk-ant-test-" + uuid.uuid4().hex,
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{PORTS['llm']}",
        "NOFX_HEARTBEAT_S": "0.5",
        "NOFX_STUCK_AFTER_S": "3",
        "NOFX_REAP_EVERY_S": "1",
        "NOFX_HARD_LIMIT_GRACE_S": "2",
        "NOFX_RETRY_BACKOFF_S": "0.2",
        "NOFX_RETRY_BACKOFF_MAX_S": "1",
        "NOFX_WORKER_METRICS_PORT": str(PORTS["metrics"]),
        "NOFX_LOG_FORMAT": "json",
        "PROMETHEUS_MULTIPROC_DIR": str(data_dir / "metrics"),
    })
    (data_dir / "metrics").mkdir()
    from nofx.config import reset_settings

    reset_settings()


@pytest.hookimpl(trylast=True)  # after the session's fixtures (the processes) are torn down
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A session that passed removes its data directory (process logs, metrics files,
    schedules); one that failed keeps it, and says where, for the logs."""
    import shutil

    data_dir = Path(os.environ["NOFX_DATA_DIR"])
    if exitstatus == 0:
        shutil.rmtree(data_dir, ignore_errors=True)
    else:
        print(f"\nthe session's process logs are in {data_dir / 'logs'}")


def pytest_unconfigure(config: pytest.Config) -> None:
    """Kill any process a test left running, then drop what the session's queues left in
    Redis (every test queue is named after ``NOFX_QUEUE``): kombu's binding sets, leftover
    messages, and the unacknowledged deliveries of workers the tests killed, which kombu
    would otherwise put back into those queues a day later. A test run should not leave
    processes or keys behind on a shared machine."""
    import json

    import redis

    from tests.support.procs import kill_leftovers

    kill_leftovers()

    prefix = f"nofx-test-{SESSION}"
    try:
        store = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        stale = list(store.scan_iter(match=f"*{prefix}*", count=1000))
        if stale:
            store.delete(*stale)
        for tag, delivery in store.hscan_iter("unacked"):
            try:
                routing_key = str(json.loads(delivery)[2])
            except (ValueError, IndexError, TypeError):
                continue  # not a kombu delivery: not ours to judge
            if routing_key.startswith(prefix):
                store.hdel("unacked", tag)
                store.zrem("unacked_index", tag)
    except redis.RedisError:
        pass  # Redis is down: nothing to tidy, and the run's verdict is already in


@pytest.fixture(scope="session")
def logs_dir() -> Path:
    path = Path(os.environ["NOFX_DATA_DIR"]) / "logs"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def database() -> Iterator[str]:
    """A fresh Postgres database for this session, migrated with Alembic; dropped after."""
    from sqlalchemy import create_engine, text

    from nofx.db.engine import dispose_engines
    from nofx.db.migrate import upgrade

    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{DATABASE}"'))
    url = os.environ["NOFX_DATABASE_URL"]
    upgrade(url)
    yield url
    dispose_engines()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeAnthropic]:
    """A Messages API server on loopback that the real SDK talks to."""
    server = FakeAnthropic(port=PORTS["llm"]).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's standalone S3 server on loopback; NOFX reaches it through the minio SDK."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=PORTS["s3"], verbose=False)
    server.start()
    yield f"127.0.0.1:{PORTS['s3']}"
    server.stop()


@pytest.fixture(scope="session")
def services(database: str, fake_llm: FakeAnthropic, s3_server: str) -> dict[str, Any]:
    """Everything a NOFX process needs, up and answering."""
    return {"database": database, "llm": fake_llm, "s3": s3_server}


@pytest.fixture(scope="session")
def stack_env(services: dict[str, Any]) -> dict[str, str]:
    """The environment for NOFX child processes."""
    return dict(os.environ)


@pytest.fixture(scope="session")
def worker(stack_env: dict[str, str], logs_dir: Path) -> Iterator[Proc]:
    """One prefork worker (concurrency 2) for the session."""
    proc = start_worker(f"worker-{SESSION}", stack_env, logs_dir)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def beat(stack_env: dict[str, str], logs_dir: Path) -> Iterator[Proc]:
    """Celery beat running the reaper every NOFX_REAP_EVERY_S."""
    proc = start_beat(f"beat-{SESSION}", stack_env, logs_dir)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def app(services: dict[str, Any]) -> Any:
    """The Flask app, in this process, on the session's real services."""
    from nofx.api import create_app

    return create_app({"TESTING": True})


@pytest.fixture()
def client(app: Any) -> Any:
    return app.test_client()
