"""``echo``: outputs its inputs. For trying NOFX out and for tests."""

from __future__ import annotations

from typing import Any

from marshmallow import INCLUDE, Schema

from nofx.tools.base import Tool, ToolContext, ToolResult


class EchoInputs(Schema):
    class Meta:
        unknown = INCLUDE


class EchoTool(Tool):
    name = "echo"
    Inputs = EchoInputs
    default_timeout_s = 30.0

    def run(self, inputs: dict[str, Any], ctx: ToolContext) -> ToolResult:
        """Return the inputs unchanged."""
        return ToolResult(outputs=dict(inputs))
