"""``sleep``: waits, then says how long. For timing, time limits and crash tests."""

from __future__ import annotations

import time
from typing import Any

from marshmallow import Schema, validate

from nofx.tools.base import JsonNumber, Tool, ToolContext, ToolResult


class SleepInputs(Schema):
    seconds = JsonNumber(required=True, validate=validate.Range(min=0, max=86_400))


class SleepTool(Tool):
    name = "sleep"
    Inputs = SleepInputs
    default_timeout_s = 3600.0

    def run(self, inputs: dict[str, Any], ctx: ToolContext) -> ToolResult:
        """Sleep ``seconds``, then output ``{"slept": seconds}``."""
        time.sleep(inputs["seconds"])
        return ToolResult(outputs={"slept": inputs["seconds"]})
