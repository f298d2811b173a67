"""The artifact store through the minio SDK against moto's S3 server, as against MinIO."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import replace

import pytest

from nofx import adapters
from nofx.config import get_settings
from nofx.errors import StorageError
from nofx.storage.base import artifact_key


def test_each_attempt_keeps_its_own_bytes(services):
    # given two attempts of one step that both wrote README.md (the first was reaped while
    # it still ran, and stored its bytes before it learnt so)
    store = adapters.storage()
    first = store.put(artifact_key("r", "s", 1, "README.md"), b"from attempt 1", "text/markdown")
    second = store.put(artifact_key("r", "s", 2, "README.md"), b"from attempt 2", "text/markdown")

    # then neither overwrote the other: what was recorded for each is what is served
    assert first.key != second.key
    assert store.get(first.key) == b"from attempt 1"
    assert store.get(second.key) == b"from attempt 2"


@pytest.fixture()
def silent_server():
    """A TCP server that accepts connections and never answers (a hung S3 endpoint)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def test_a_store_that_never_answers_fails_the_put_in_seconds_not_minutes(services, silent_server):
    settings = replace(get_settings(), s3_endpoint=silent_server, s3_timeout_s=0.5,
                       storage_url="s3://nofx-hung")
    store = adapters.build_storage(settings)

    started = time.monotonic()
    with pytest.raises(StorageError):
        store.put("runs/r/steps/s/1/README.md", b"x", "text/markdown")
    # three tries of 0.5 s and a little backoff, not minio's five times five minutes
    assert time.monotonic() - started < 20
