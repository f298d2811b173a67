"""All of NOFX's configuration, read from the environment in one place.

Every setting has a default that works on a fresh machine with no servers: SQLite, a
filesystem broker and filesystem artifacts under ``NOFX_DATA_DIR``, and an offline LLM.
Setting the ``NOFX_*`` variables switches each part to the real service.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

N = TypeVar("N", int, float)

DEFAULT_MODEL = "claude-sonnet-4-5"

#: USD per million tokens (input, output), matched by longest model-name prefix.
#: Override or extend with ``NOFX_LLM_PRICES='{"model": [in, out]}'``.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "claude-opus-4": (15.0, 75.0),
    "claude-opus-4-5": (5.0, 25.0),  # Opus 4.5 costs a third of Opus 4 and 4.1
    "claude-sonnet-4": (3.0, 15.0),
    "claude-haiku-4": (1.0, 5.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-3-5-sonnet": (3.0, 15.0),
    "claude-3-5-haiku": (0.8, 4.0),
    "claude-3-haiku": (0.25, 1.25),
    "offline": (0.0, 0.0),
}


class ConfigError(ValueError):
    """A setting has a value NOFX cannot use."""


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    return _number(env, name, default, float, "a number")


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    value = _float(env, name, default)
    if value <= 0:
        raise ConfigError(f"{name} must be more than 0, got {env.get(name)!r}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    return _number(env, name, default, int, "a whole number", minimum)


def _number(env: Mapping[str, str], name: str, default: N, parse: Callable[[str], N],
            kind: str, minimum: int = 0) -> N:
    """``name``'s value read by ``parse``; ``default`` when unset or empty; else a
    :class:`ConfigError` naming the variable."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be {kind}, got {raw!r}") from exc
    if value < minimum:
        least = "must not be negative" if minimum == 0 else f"must be at least {minimum}"
        raise ConfigError(f"{name} {least}, got {raw!r}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _prices(env: Mapping[str, str]) -> dict[str, tuple[float, float]]:
    prices = dict(DEFAULT_PRICES)
    raw = env.get("NOFX_LLM_PRICES")
    if raw:
        try:
            extra = {k: (float(v[0]), float(v[1])) for k, v in json.loads(raw).items()}
        except (ValueError, TypeError, IndexError, AttributeError) as exc:
            raise ConfigError('NOFX_LLM_PRICES must look like {"model": [in, out]}') from exc
        prices.update(extra)
    return prices


@dataclass(frozen=True)
class Settings:
    """NOFX's settings; build with :func:`Settings.from_env`, read with :func:`get_settings`."""

    data_dir: Path
    database_url: str
    broker_url: str
    storage_url: str
    queue: str = "nofx"
    s3_endpoint: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_secure: bool = True
    s3_region: str = ""
    s3_timeout_s: float = 30.0
    llm_provider: str = "offline"
    llm_model: str = DEFAULT_MODEL
    llm_timeout_s: float = 60.0
    llm_max_tokens: int = 2048
    llm_models: tuple[str, ...] = ()
    llm_max_tokens_limit: int = 64_000
    llm_prices: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_tokens: tuple[str, ...] = ()
    api_allow_open: bool = False
    api_workers: int = 2
    api_threads: int = 8
    max_body_bytes: int = 1_048_576
    page_max_bytes: int = 4_194_304
    sse_poll_s: float = 0.5
    sse_keepalive_s: float = 15.0
    sse_max_s: float = 900.0
    sse_max_streams: int = 6
    heartbeat_s: float = 5.0
    progress_every_s: float = 10.0
    stuck_after_s: float = 30.0
    reap_every_s: float = 10.0
    hard_limit_grace_s: float = 30.0
    default_max_attempts: int = 3
    retry_backoff_s: float = 2.0
    retry_backoff_max_s: float = 300.0
    worker_metrics_port: int = 9546
    log_level: str = "INFO"
    log_format: str = "json"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from ``env`` (default: ``os.environ``)."""
        env = os.environ if env is None else env
        data_dir = Path(env.get("NOFX_DATA_DIR") or "./.nofx").resolve()
        threads = _int(env, "NOFX_API_THREADS", 8, minimum=1)
        return _within_own_bounds(cls(
            data_dir=data_dir,
            database_url=env.get("NOFX_DATABASE_URL") or f"sqlite:///{data_dir / 'nofx.db'}",
            broker_url=env.get("NOFX_BROKER_URL") or "filesystem://",
            storage_url=env.get("NOFX_STORAGE_URL") or (data_dir / "artifacts").as_uri(),
            queue=env.get("NOFX_QUEUE") or "nofx",
            s3_endpoint=env.get("NOFX_S3_ENDPOINT", ""),
            s3_access_key=env.get("NOFX_S3_ACCESS_KEY", ""),
            s3_secret_key=env.get("NOFX_S3_SECRET_KEY", ""),
            s3_secure=_bool(env, "NOFX_S3_SECURE", True),
            s3_region=env.get("NOFX_S3_REGION", ""),
            s3_timeout_s=_positive(env, "NOFX_S3_TIMEOUT_S", 30.0),
            llm_provider=_llm_provider(env),
            llm_model=env.get("NOFX_LLM_MODEL") or DEFAULT_MODEL,
            llm_timeout_s=_positive(env, "NOFX_LLM_TIMEOUT_S", 60.0),
            llm_max_tokens=_int(env, "NOFX_LLM_MAX_TOKENS", 2048, minimum=1),
            llm_models=tuple(m.strip() for m in (env.get("NOFX_LLM_MODELS") or "").split(",")
                             if m.strip()),
            llm_max_tokens_limit=_int(env, "NOFX_LLM_MAX_TOKENS_LIMIT", 64_000, minimum=1),
            llm_prices=_prices(env),
            api_host=env.get("NOFX_API_HOST") or "127.0.0.1",
            api_port=_int(env, "NOFX_API_PORT", 8000),
            api_tokens=tuple(t.strip() for t in env.get("NOFX_API_TOKEN", "").split(",") if t.strip()),
            api_allow_open=_bool(env, "NOFX_API_ALLOW_OPEN", False),
            api_workers=_int(env, "NOFX_API_WORKERS", 2, minimum=1),
            api_threads=threads,
            max_body_bytes=_int(env, "NOFX_MAX_BODY_BYTES", 1_048_576),
            page_max_bytes=_int(env, "NOFX_PAGE_MAX_BYTES", 4_194_304, minimum=1),
            sse_poll_s=_float(env, "NOFX_SSE_POLL_S", 0.5),
            sse_keepalive_s=_float(env, "NOFX_SSE_KEEPALIVE_S", 15.0),
            sse_max_s=_positive(env, "NOFX_SSE_MAX_S", 900.0),
            sse_max_streams=_int(env, "NOFX_SSE_MAX_STREAMS", max(1, threads - 2), minimum=1),
            heartbeat_s=_float(env, "NOFX_HEARTBEAT_S", 5.0),
            progress_every_s=_float(env, "NOFX_PROGRESS_EVERY_S", 10.0),
            stuck_after_s=_float(env, "NOFX_STUCK_AFTER_S", 30.0),
            reap_every_s=_float(env, "NOFX_REAP_EVERY_S", 10.0),
            hard_limit_grace_s=_float(env, "NOFX_HARD_LIMIT_GRACE_S", 30.0),
            default_max_attempts=_int(env, "NOFX_MAX_ATTEMPTS", 3, minimum=1),
            retry_backoff_s=_float(env, "NOFX_RETRY_BACKOFF_S", 2.0),
            retry_backoff_max_s=_float(env, "NOFX_RETRY_BACKOFF_MAX_S", 300.0),
            worker_metrics_port=_int(env, "NOFX_WORKER_METRICS_PORT", 9546),
            log_level=(env.get("NOFX_LOG_LEVEL") or "INFO").upper(),
            log_format=(env.get("NOFX_LOG_FORMAT") or "json").lower(),
        ))

    @property
    def is_embedded_broker(self) -> bool:
        """True when the broker is the serverless filesystem transport."""
        return self.broker_url.startswith("filesystem://")

    @property
    def broker_dir(self) -> Path:
        """Where the embedded broker keeps its messages."""
        return self.data_dir / "broker"


def _within_own_bounds(settings: Settings) -> Settings:
    """The defaults a step gets when it names no model or ``max_tokens`` must pass the
    bounds a plan's own values are held to (``NOFX_LLM_MODELS``, ``NOFX_LLM_MAX_TOKENS_LIMIT``)."""
    allowed = settings.llm_models
    if allowed and not any(settings.llm_model.startswith(m) for m in allowed):
        raise ConfigError(f"NOFX_LLM_MODEL {settings.llm_model!r} is not among NOFX_LLM_MODELS "
                          f"({', '.join(allowed)})")
    if settings.llm_max_tokens > settings.llm_max_tokens_limit:
        raise ConfigError(f"NOFX_LLM_MAX_TOKENS ({settings.llm_max_tokens}) is above "
                          f"NOFX_LLM_MAX_TOKENS_LIMIT ({settings.llm_max_tokens_limit})")
    return settings


def _llm_provider(env: Mapping[str, str]) -> str:
    provider = (env.get("NOFX_LLM_PROVIDER") or "").strip().lower()
    if not provider:
        return "anthropic" if env.get("ANTHROPIC_API_KEY") else "offline"
    if provider not in ("anthropic", "offline"):
        raise ConfigError(f"NOFX_LLM_PROVIDER must be 'anthropic' or 'offline', got {provider!r}")
    return provider


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings.from_env()


def reset_settings() -> None:
    """Forget cached settings (and the clients built from them); for tests and `nofx dev`."""
    get_settings.cache_clear()
    from nofx import adapters

    adapters.reset()
