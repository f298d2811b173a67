"""Builds the outside-world clients from settings, once per process, on first use."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from nofx.config import ConfigError, Settings, get_settings
from nofx.llm.base import LLM
from nofx.storage.base import Storage

_lock = threading.Lock()
_storage: Storage | None = None
_llm: LLM | None = None


def storage(settings: Settings | None = None) -> Storage:
    """The configured artifact store."""
    global _storage
    with _lock:
        if _storage is None:
            _storage = build_storage(settings or get_settings())
        return _storage


def llm(settings: Settings | None = None) -> LLM:
    """The configured LLM provider."""
    global _llm
    with _lock:
        if _llm is None:
            _llm = build_llm(settings or get_settings())
        return _llm


def reset() -> None:
    """Forget built clients (after settings change)."""
    global _storage, _llm
    with _lock:
        _storage = _llm = None


def build_storage(settings: Settings) -> Storage:
    """A storage adapter for ``NOFX_STORAGE_URL`` (``file:///path`` or ``s3://bucket/prefix``)."""
    url = urlparse(settings.storage_url)
    if url.scheme == "file":
        from nofx.storage.filesystem import FileStorage

        return FileStorage(Path(unquote(url.path)))
    if url.scheme == "s3":
        return _build_s3(settings, url.netloc, url.path)
    raise ConfigError(f"NOFX_STORAGE_URL must be file:// or s3://, got {settings.storage_url!r}")


def _build_s3(settings: Settings, bucket: str, prefix: str) -> Storage:
    from minio import Minio

    from nofx.storage.s3 import S3Storage

    if not bucket:
        raise ConfigError("NOFX_STORAGE_URL s3:// needs a bucket: s3://bucket[/prefix]")
    endpoint = settings.s3_endpoint or "s3.amazonaws.com"
    scheme, _, rest = endpoint.rpartition("://")
    # An endpoint written with its scheme says which protocol to speak: "http://minio:9000"
    # with NOFX_S3_SECURE left at its default (true) used to speak TLS to plain HTTP.
    secure = {"http": False, "https": True}.get(scheme.lower(), settings.s3_secure)
    endpoint = rest.rstrip("/")
    client = Minio(
        endpoint,
        access_key=settings.s3_access_key or None,
        secret_key=settings.s3_secret_key or None,
        secure=secure,
        region=settings.s3_region or None,
        http_client=s3_http_client(settings.s3_timeout_s),
    )
    return S3Storage(client, bucket, prefix)


def s3_http_client(timeout_s: float) -> Any:
    """minio's own HTTP client, with its timeouts bounded: by default it waits five minutes
    to connect and five to read, five times over, so a hung store outlasted a step's time
    limit (after Claude was paid) and held an API thread for as long. Retries stay (PUT and
    GET are idempotent), fewer; TLS is verified as minio verifies it."""
    import certifi
    import urllib3
    from urllib3.util import Retry, Timeout

    return urllib3.PoolManager(
        timeout=Timeout(connect=min(5.0, timeout_s), read=timeout_s),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )


def build_llm(settings: Settings) -> LLM:
    """The LLM provider named by ``NOFX_LLM_PROVIDER``."""
    if settings.llm_provider == "anthropic":
        from nofx.llm.anthropic import AnthropicLLM

        return AnthropicLLM(timeout_s=settings.llm_timeout_s)
    from nofx.llm.offline import OfflineLLM

    return OfflineLLM()
