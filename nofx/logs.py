"""One JSON object per log line, carrying run_id, step_id, task_id and request_id when known."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import datetime, timezone
from typing import Any

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("nofx_log", default={})
CONTEXT_KEYS = ("run_id", "step_id", "task_id", "request_id")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
#: Anything that looks like a credential is masked before a line is written.
_SECRET = re.compile(r"(sk-ant-[A-Za-z0-9_\-]+|Bearer\s+[A-Za-z0-9._~+/=\-]+)")


def bind(**values: Any) -> None:
    """Set (or, with ``None``, clear) context fields for log lines from this thread/task."""
    merged = {k: v for k, v in {**_context.get(), **values}.items() if v is not None}
    _context.set(merged)


def redact(text: str) -> str:
    """Mask API keys and bearer tokens."""
    return _SECRET.sub(lambda m: m.group(0)[:7] + "[REDACTED]", text)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message, context, extras."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_context.get())
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return redact(json.dumps(line, default=str))


class TextFormatter(logging.Formatter):
    """Human-friendly lines for a terminal (``NOFX_LOG_FORMAT=text``)."""

    def format(self, record: logging.LogRecord) -> str:
        ids = " ".join(f"{k}={v}" for k, v in _context.get().items())
        base = f"{record.levelname[0]} {record.name}: {record.getMessage()}"
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        return redact(f"{base} {ids}".rstrip())


def setup_logging(component: str) -> None:
    """Send every log line, NOFX's and its libraries', to stderr in the configured format."""
    from nofx.config import get_settings

    settings = get_settings()
    handler = logging.StreamHandler(sys.stderr)
    fmt = JsonFormatter(component) if settings.log_format == "json" else TextFormatter()
    handler.setFormatter(fmt)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    for noisy in ("urllib3", "httpx", "httpcore", "botocore", "anthropic._base_client"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
