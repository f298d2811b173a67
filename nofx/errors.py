"""NOFX's errors: one shallow tree. Each class knows its HTTP status; edges catch them."""

from __future__ import annotations

from typing import Any


class NofxError(Exception):
    """Base of every error NOFX raises on purpose."""

    http_status = 500

    def __init__(self, message: str, *, errors: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors


class NotFound(NofxError):
    """The named run, step or artifact does not exist."""

    http_status = 404


class Conflict(NofxError):
    """The request is valid but does not fit the resource's current state."""

    http_status = 409


class ToolError(NofxError):
    """A tool could not do its work. Subclasses say whether trying again may help."""

    retryable = False

    def as_dict(self) -> dict[str, str]:
        """The shape stored in ``step.error`` and in events."""
        return {"type": type(self).__name__, "message": self.message}


class RetryableToolError(ToolError):
    """A passing failure: rate limits, overload, timeouts, connection errors, 5xx.

    ``retry_after_s``: how long the other side asked us to wait (``Retry-After``), if it did.
    """

    retryable = True

    def __init__(self, message: str, *, errors: dict[str, Any] | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message, errors=errors)
        self.retry_after_s = retry_after_s


class PermanentToolError(ToolError):
    """A failure that will repeat: bad request, auth, invalid inputs."""


class InvalidInputs(PermanentToolError):
    """A tool's inputs do not fit its schema; ``errors`` is field by field."""


class StorageError(RetryableToolError):
    """The artifact store did not take or give back bytes."""

    http_status = 503


class Busy(NofxError):
    """This server is at a limit for now (open event streams): ``503`` with ``Retry-After``."""

    http_status = 503
    retry_after_s = 5


class StepLost(NofxError):
    """The step is no longer ours to run: finished, cancelled, or reaped meanwhile."""
