"""Claude through the official Anthropic SDK.

The SDK's own retries are off (``max_retries=0``): a failed call surfaces at once as a
retryable or permanent tool error, and the step task owns the retry policy, so every retry
is visible as a ``step.retrying`` event and retries never multiply (SDK x Celery).
"""

from __future__ import annotations

import json
import math
from typing import Any

import anthropic

from nofx.errors import PermanentToolError, RetryableToolError
from nofx.llm.base import Completion

#: Retryable besides every 5xx (529 "overloaded" included).
RETRYABLE_STATUSES = {408, 409, 429}
#: The pace ``timeout_for`` assumes a long answer is written at: the SDK's own assumption
#: for non-streaming requests (an hour for 128k output tokens, ~36 a second).
OUTPUT_TOKENS_PER_S = 128_000 / 3600


class AnthropicLLM:
    """Asks Claude via ``messages.create``; reads key and base URL as the SDK does."""

    provider = "anthropic"

    def __init__(self, timeout_s: float, api_key: str | None = None) -> None:
        # The SDK reads ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL itself.
        self.timeout_s = timeout_s
        self.client = anthropic.Anthropic(api_key=api_key, timeout=timeout_s, max_retries=0)

    def timeout_for(self, max_tokens: int) -> float:
        """The request's timeout: ``NOFX_LLM_TIMEOUT_S``, or longer when ``max_tokens`` could
        take longer to write. A non-streaming answer sends nothing until it is complete, so a
        fixed 60 s would cut every answer of a few thousand tokens, attempt after attempt
        (the SDK's own default scales the same way; passing a timeout turns that off). The
        step's time limit still bounds the whole."""
        return max(self.timeout_s, max_tokens / OUTPUT_TOKENS_PER_S)

    def complete(
        self, prompt: str, *, model: str, max_tokens: int, system: str | None = None
    ) -> Completion:
        """One Messages API call; errors come back as retryable or permanent tool errors."""
        try:
            message = self.client.messages.create(
                model=model,
                max_tokens=max_tokens,
                messages=[{"role": "user", "content": prompt}],
                system=system if system else anthropic.omit,
                timeout=self.timeout_for(max_tokens),
            )
        except anthropic.APIStatusError as exc:
            raise _status_error(exc) from exc
        except (anthropic.APIConnectionError, anthropic.APITimeoutError) as exc:
            raise RetryableToolError(f"Anthropic API unreachable: {exc}") from exc
        except (anthropic.APIResponseValidationError, json.JSONDecodeError) as exc:
            # The SDK lets a truncated or non-JSON body surface as a bare JSONDecodeError.
            raise RetryableToolError(f"Anthropic API answered malformed data: {exc}") from exc
        return _completion(message, model)


def _status_error(exc: anthropic.APIStatusError) -> Exception:
    message = f"Anthropic API {exc.status_code}: {_error_message(exc)}"
    if exc.status_code in RETRYABLE_STATUSES or exc.status_code >= 500:
        return RetryableToolError(message, retry_after_s=retry_after_s(exc.response))
    return PermanentToolError(message)


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
