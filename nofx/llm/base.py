"""The LLM port and the price table that turns tokens into dollars."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Completion:
    """One model answer and what it cost."""

    text: str
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    stop_reason: str | None = None


class LLM(Protocol):
    """What a tool asks of a language model."""

    provider: str

    def complete(
        self, prompt: str, *, model: str, max_tokens: int, system: str | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> Completion:
        """The model's answer to ``prompt``. A provider that receives its answer in parts
        calls ``on_progress`` with the characters received so far, as they arrive."""
        ...


def cost_usd(
    prices: Mapping[str, tuple[float, float]], model: str, input_tokens: int, output_tokens: int
) -> float | None:
    """Dollars for a call, from the longest matching model prefix; ``None`` if unpriced."""
    matches = [name for name in prices if model.startswith(name)]
    if not matches:
        return None
    per_in, per_out = prices[max(matches, key=len)]
    return round((input_tokens * per_in + output_tokens * per_out) / 1_000_000, 8)
