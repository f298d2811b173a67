"""One JSON object per log line, carrying run_id, step_id, task_id and request_id when known.

No secret reaches a log line: the formatters mask anything shaped like an Anthropic key or a
bearer token, and the exact values of the secrets NOFX is configured with (API tokens, the
Anthropic key, the S3 secret key, database and broker passwords).
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from gunicorn import glogging

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("nofx_log")
CONTEXT_KEYS = ("run_id", "step_id", "task_id", "request_id")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
#: Anything that looks like a credential is masked before a line is written.
_SECRET = re.compile(r"(sk-ant-[A-Za-z0-9_\-]+|Bearer\s+[A-Za-z0-9._~+/=\-]+)")
_MASK = "[REDACTED]"
#: Exact secret values to mask, longest first; set by :func:`setup_logging`.
_known_secrets: tuple[str, ...] = ()


def bind(**values: Any) -> None:
    """Set (or, with ``None``, clear) context fields for log lines from this thread/task."""
    merged = {k: v for k, v in {**_context.get({}), **values}.items() if v is not None}
    _context.set(merged)


def redact(text: str) -> str:
    """Mask API keys, bearer tokens and the configured secrets."""
    for secret in _known_secrets:
        text = text.replace(secret, _MASK)
    return _SECRET.sub(lambda m: m.group(0)[:7] + _MASK, text)


def remember_secrets(values: Iterable[str | None]) -> None:
    """Mask these exact values (and their JSON-escaped forms) in every line from now on."""
    found = {v for v in values if v and len(v) >= 4}
    found |= {json.dumps(v)[1:-1] for v in found}
    global _known_secrets
    _known_secrets = tuple(sorted(found, key=len, reverse=True))


def configured_secrets() -> list[str | None]:
    """The secret values in NOFX's settings and environment."""
    from nofx.config import get_settings

    settings = get_settings()
    return [*settings.api_tokens, os.environ.get("ANTHROPIC_API_KEY"), settings.s3_secret_key,
            _password(settings.database_url), _password(settings.broker_url)]


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message, context, extras."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        line.update(_context.get({}))
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return redact(json.dumps(line, default=str))


class TextFormatter(logging.Formatter):
    """Lines for people at a terminal (``NOFX_LOG_FORMAT=text``): the same facts as a JSON
    line, as ``time L logger: message key=value ...`` (local time, to the millisecond)."""

    def format(self, record: logging.LogRecord) -> str:
        at = datetime.fromtimestamp(record.created).astimezone()
        fields = {**_context.get({}),
                  **{k: v for k, v in vars(record).items() if k not in _STANDARD}}
        pairs = " ".join(f"{k}={_text(v)}" for k, v in fields.items())
        message = record.getMessage().replace("\r", "\\r").replace("\n", "\\n")  # one line
        line = (f"{at:%Y-%m-%d %H:%M:%S}.{at.microsecond // 1000:03d} {record.levelname[0]} "
                f"{record.name}: {message} pid={record.process} {pairs}").rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


def _text(value: Any) -> str:
    """A field's value for a text line: as is, or as JSON when it has spaces or structure."""
    if isinstance(value, str) and value and not any(c.isspace() for c in value):
        return value
    return json.dumps(value, default=str, ensure_ascii=False)


def formatter(component: str) -> logging.Formatter:
    """The configured formatter (NOFX_LOG_FORMAT: json or text) for one kind of process."""
    from nofx.config import get_settings

    return JsonFormatter(component) if get_settings().log_format == "json" else TextFormatter()


def json_logs() -> bool:
    """True when log lines are JSON (the default)."""
    from nofx.config import get_settings

    return get_settings().log_format == "json"


def setup_logging(component: str) -> None:
    """Send every log line, NOFX's and its libraries', to stderr in the configured format."""
    from nofx.config import get_settings

    remember_secrets(configured_secrets())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(get_settings().log_level)
    logging.captureWarnings(True)  # warnings as log lines too, not bare text on stderr
    for noisy in ("urllib3", "httpx", "httpcore", "botocore", "anthropic._base_client"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class GunicornLogger(glogging.Logger):
    """gunicorn's own lines (master and workers) in NOFX's format, component ``api``."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        remember_secrets(configured_secrets())
        for logger in (self.error_log, self.access_log):
            for handler in logger.handlers:
                handler.setFormatter(formatter("api"))
