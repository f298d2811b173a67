"""An LLM that needs no network: it says plainly that it is offline."""

from __future__ import annotations

from collections.abc import Callable

from nofx.llm.base import Completion

NOTICE = (
    "NOFX is running with its offline LLM: no request left this machine. "
    "Set ANTHROPIC_API_KEY (or NOFX_LLM_PROVIDER=anthropic) to ask Claude."
)


class OfflineLLM:
    """Answers every prompt with a short, clearly-labelled placeholder document."""

    provider = "offline"

    def complete(
        self, prompt: str, *, model: str, max_tokens: int, system: str | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> Completion:
        """Return a deterministic offline answer that quotes the prompt (at once: there is
        no progress to report)."""
        text = f"# Offline answer\n\n> {NOTICE}\n\nThe prompt was:\n\n> {prompt.strip()}\n"
        return Completion(
            text=text,
            provider=self.provider,
            model="offline",
            input_tokens=len(prompt.split()),
            output_tokens=len(text.split()),
            stop_reason="end_turn",
        )
