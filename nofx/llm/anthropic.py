"""Claude through the official Anthropic SDK.

The SDK's own retries are off (``max_retries=0``): a failed call surfaces at once as a
retryable or permanent tool error, and the step task owns the retry policy, so every retry
is visible as a ``step.retrying`` event and retries never multiply (SDK x Celery).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import anthropic
from celery.exceptions import SoftTimeLimitExceeded

from nofx.errors import PermanentToolError, RetryableToolError
from nofx.llm.base import Completion

#: Retryable besides every 5xx (529 "overloaded" included).
RETRYABLE_STATUSES = {408, 409, 429}
#: An ``error`` event in the middle of a streamed answer comes after a 200: its type says
#: what went wrong. These are the client's own fault and will fail again; any other type
#: (``overloaded_error``, ``api_error``...) is the service's, and worth another attempt.
PERMANENT_ERROR_TYPES = {"invalid_request_error", "authentication_error", "permission_error",
                         "not_found_error", "request_too_large", "billing_error"}


class AnthropicLLM:
    """Asks Claude via the streaming Messages API; reads key and base URL as the SDK does.

    The answer is streamed, as Anthropic recommends for anything long: the timeout is then
    the longest silence allowed (the API sends text, or a ``ping``, every few seconds),
    however long the whole answer takes; the step's time limit bounds the whole. A
    non-streaming call sends nothing until its answer is complete, so its timeout would
    have to cover the longest answer ``max_tokens`` allows, and an idle connection that
    long is one a proxy or NAT may drop. Streaming also lets the step report progress.
    """

    provider = "anthropic"

    def __init__(self, timeout_s: float, api_key: str | None = None) -> None:
        # The SDK reads ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL itself.
        self.timeout_s = timeout_s
        self.client = anthropic.Anthropic(api_key=api_key, timeout=timeout_s, max_retries=0)

    def complete(
        self, prompt: str, *, model: str, max_tokens: int, system: str | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> Completion:
        """One streamed Messages API call; ``on_progress`` hears the characters received so
        far as they arrive. Errors come back as retryable or permanent tool errors; a time
        limit (``SoftTimeLimitExceeded``) and anything ``on_progress`` raises, as themselves."""
        message, chars, failed = None, 0, None
        try:
            with self.client.messages.stream(
                model=model,
                max_tokens=max_tokens,
                messages=[{"role": "user", "content": prompt}],
                system=system if system else anthropic.omit,
            ) as stream:
                for event in stream:
                    if event.type == "text":
                        chars += len(event.text)
                        if on_progress is not None:
                            try:
                                on_progress(chars)
                            except Exception as exc:  # ours, not the API's: not classified
                                failed = exc
                                break
                    elif event.type == "message_stop":
                        message = event.message
        except (anthropic.AnthropicError, ValueError, LookupError, TypeError, AttributeError,
                RuntimeError) as exc:
            interrupted = _interruption(exc)
            if interrupted is not None:
                raise interrupted from None
            raise self._tool_error(exc) from exc
        if failed is not None:
            raise failed
        if message is None:
            raise RetryableToolError("Anthropic API's answer ended before it was complete "
                                     f"({chars} characters received, no message_stop)")
        return _completion(message, model)

    def _tool_error(self, exc: Exception) -> Exception:
        """What an error of the SDK's, or of the stream it read, means for the step."""
        if isinstance(exc, anthropic.APIStatusError):
            return _status_error(exc)
        if isinstance(exc, anthropic.APITimeoutError):  # (a kind of APIConnectionError)
            return RetryableToolError(f"Anthropic API timed out: nothing received for "
                                      f"{self.timeout_s:g}s")
        if isinstance(exc, anthropic.APIConnectionError):
            return RetryableToolError(f"Anthropic API unreachable: {exc}")
        # A body that is not the event stream the SDK expects (bad JSON is a ValueError;
        # events out of order fail the SDK's accumulation in other ways).
        return RetryableToolError(f"Anthropic API answered malformed data: {exc!r}")


def _interruption(exc: BaseException) -> SoftTimeLimitExceeded | None:
    """The step's time limit, if that is what ``exc`` is, or wraps: the SDK turns anything
    raised while it reads (the limit's signal arrives there, mostly) into a connection
    error, and a time limit must end the step ``timed_out``, not be retried as a network
    failure."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, SoftTimeLimitExceeded):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _status_error(exc: anthropic.APIStatusError) -> Exception:
    if exc.status_code < 400:  # an ``error`` event after the stream had started
        kind = _error_type(exc) or "error"
        message = f"Anthropic API {kind} mid-answer: {_error_message(exc)}"
        if kind in PERMANENT_ERROR_TYPES:
            return PermanentToolError(message)
        return RetryableToolError(message)
    message = f"Anthropic API {exc.status_code}: {_error_message(exc)}"
    if exc.status_code in RETRYABLE_STATUSES or exc.status_code >= 500:
        return RetryableToolError(message, retry_after_s=retry_after_s(exc.response))
    return PermanentToolError(message)


def _error_type(exc: anthropic.APIStatusError) -> str | None:
    body = exc.body
    error = body.get("error") if isinstance(body, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    return str(kind) if kind else None


def retry_after_s(response: Any) -> float | None:
    """The wait a 429/529 asks for: ``retry-after-ms`` or ``retry-after`` (seconds; an
    HTTP date is not worth parsing here), or ``None``."""
    headers = getattr(response, "headers", None) or {}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        try:
            value = float(raw) * scale if raw is not None else math.nan
        except (TypeError, ValueError):
            continue
        if value >= 0 and math.isfinite(value):
            return value
    return None


def _error_message(exc: anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return exc.message


def _completion(message: Any, requested_model: str) -> Completion:
    try:
        blocks = message.content
        text = "".join(b.text for b in blocks if getattr(b, "type", None) == "text")
        usage = message.usage
        input_tokens, output_tokens = int(usage.input_tokens), int(usage.output_tokens)
    except (AttributeError, TypeError, ValueError) as exc:
        raise RetryableToolError(f"Anthropic API answered malformed data: {exc}") from exc
    if not text:
        raise RetryableToolError("Anthropic API answered with no text content")
    return Completion(
        text=text,
        provider="anthropic",
        model=getattr(message, "model", None) or requested_model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        stop_reason=getattr(message, "stop_reason", None),
    )
