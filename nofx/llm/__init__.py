"""LLM providers: Anthropic through its official SDK, and an offline stand-in."""

from nofx.llm.base import LLM, Completion, cost_usd

__all__ = ["LLM", "Completion", "cost_usd"]
