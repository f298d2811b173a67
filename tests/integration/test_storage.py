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


def _refusing_head_bucket(store):
    """The store's client as a least-privilege policy (objects only) leaves it: HeadBucket
    is refused, object reads and writes are allowed."""
    from minio.error import S3Error

    def refused(*_args, **_kwargs):
        raise S3Error(None, "AccessDenied", "Access Denied", f"/{store.bucket}", "req", "host",
                      bucket_name=store.bucket)

    store.client.bucket_exists = refused
    return store


def test_a_store_that_refuses_bucket_checks_still_takes_artifacts_and_counts_as_up(services):
    # given the configured bucket (made by an earlier put), reached with objects-only rights
    store = adapters.build_storage(get_settings())
    store.put("tests/warm-up", b"x", "text/plain")
    _refusing_head_bucket(store)

    # then artifacts are stored and read back, and the health check sees an answering store
    stored = store.put(artifact_key("r", "s", 1, "least.md"), b"privilege", "text/markdown")
    assert store.get(stored.key) == b"privilege"
    store.check()


def test_a_bucket_that_does_not_exist_yet_is_made_by_the_first_put(services):
    settings = replace(get_settings(), storage_url=f"s3://nofx-fresh-{time.time_ns()}")
    store = adapters.build_storage(settings)
    stored = store.put(artifact_key("r", "s", 1, "first.md"), b"made", "text/markdown")
    assert store.get(stored.key) == b"made"


@pytest.mark.parametrize(("endpoint", "secure", "https"), [
    ("http://{host}", True, False),     # the scheme says plain HTTP, whatever SECURE says
    ("https://{host}", False, True),
    ("{host}", False, False),           # no scheme: NOFX_S3_SECURE decides
], ids=["http scheme", "https scheme", "no scheme"])
def test_an_endpoints_scheme_says_which_protocol_to_speak(services, endpoint, secure, https):
    host = get_settings().s3_endpoint.split("://")[-1]
    settings = replace(get_settings(), s3_endpoint=endpoint.format(host=host), s3_secure=secure)
    store = adapters.build_storage(settings)
    assert store.client._base_url.is_https is https
    if not https:  # moto speaks plain HTTP: the store works
        stored = store.put(artifact_key("r", "s", 1, "scheme.md"), b"http", "text/markdown")
        assert store.get(stored.key) == b"http"
