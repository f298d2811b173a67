"""The tool registry: built-in tools plus any installed under entry point group ``nofx.tools``."""

from __future__ import annotations

import logging
from functools import lru_cache
from importlib.metadata import entry_points

from nofx.tools.base import (
    Artifact,
    JsonInteger,
    JsonNumber,
    Tool,
    ToolContext,
    ToolResult,
    Whole,
)

log = logging.getLogger(__name__)

__all__ = ["Artifact", "JsonInteger", "JsonNumber", "Tool", "ToolContext", "ToolResult", "Whole",
           "get_tool", "registry"]


@lru_cache(maxsize=1)
def registry() -> dict[str, Tool]:
    """Every known tool by name; a plugin that fails to load is logged and left out."""
    from nofx.tools.codegen import CodegenTool
    from nofx.tools.echo import EchoTool
    from nofx.tools.sleep import SleepTool

    tools: dict[str, Tool] = {t.name: t() for t in (CodegenTool, EchoTool, SleepTool)}
    for ep in entry_points(group="nofx.tools"):
        if ep.name in tools:
            continue
        try:
            tools[ep.name] = ep.load()()
        except Exception:  # a broken plugin must not take NOFX down
            log.exception("could not load tool %r from %s", ep.name, ep.value)
    return tools


def get_tool(name: str) -> Tool | None:
    """The tool called ``name``, or ``None``."""
    return registry().get(name)
