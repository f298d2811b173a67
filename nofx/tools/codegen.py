"""``codegen``: asks the LLM for a file and stores the answer as one artifact."""

from __future__ import annotations

import mimetypes
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates

from nofx.config import get_settings
from nofx.tools.base import Artifact, JsonInteger, Tool, ToolContext, ToolResult, Whole

SAFE_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$"
mimetypes.add_type("text/markdown", ".md")


class CodegenInputs(Schema):
    prompt = fields.String(required=True, validate=validate.Length(min=1, max=100_000))
    topic = fields.String(load_default=None, validate=validate.Length(max=1_000))
    filename = fields.String(
        load_default="README.md",
        validate=Whole(SAFE_NAME, error="a plain file name: letters, digits, _ . -"),
    )
    model = fields.String(load_default=None, validate=validate.Length(min=1, max=200))
    max_tokens = JsonInteger(load_default=None, validate=validate.Range(min=1, max=64_000))

    # What a plan may spend is the operator's to bound (NOFX_LLM_MODELS,
    # NOFX_LLM_MAX_TOKENS_LIMIT): a plan past the bounds is refused when it is submitted,
    # field by field, and a step already queued when the bounds tightened fails, saying so.
    @validates("model")
    def _allowed_model(self, value: str | None, **_: Any) -> None:
        allowed = get_settings().llm_models
        if value is not None and allowed and not any(value.startswith(m) for m in allowed):
            raise ValidationError(f"model {value!r} is not allowed here; allowed: "
                                  f"{', '.join(allowed)} (NOFX_LLM_MODELS)")

    @validates("max_tokens")
    def _within_limit(self, value: int | None, **_: Any) -> None:
        limit = get_settings().llm_max_tokens_limit
        if value is not None and value > limit:
            raise ValidationError(f"at most {limit} here (NOFX_LLM_MAX_TOKENS_LIMIT)")


class CodegenTool(Tool):
    name = "codegen"
    Inputs = CodegenInputs
    default_timeout_s = 300.0

    def run(self, inputs: dict[str, Any], ctx: ToolContext) -> ToolResult:
        """Ask for the file; the answer's text becomes the artifact ``filename``."""
        completion = ctx.complete(
            inputs["prompt"],
            model=inputs["model"],
            max_tokens=inputs["max_tokens"],
            system=_system_prompt(inputs["topic"], inputs["filename"]),
        )
        filename = inputs["filename"]
        content_type = mimetypes.guess_type(filename)[0] or "text/plain"
        artifact = Artifact(filename, completion.text.encode("utf-8"), content_type)
        return ToolResult(
            outputs={
                "artifact": filename,
                "provider": completion.provider,
                "model": completion.model,
                "chars": len(completion.text),
                "stop_reason": completion.stop_reason,
                # The model ran out of max_tokens mid-file: the artifact is cut short.
                "truncated": completion.stop_reason == "max_tokens",
                "preview": completion.text[:200],
            },
            artifacts=[artifact],
        )


def _system_prompt(topic: str | None, filename: str) -> str:
    about = f" about {topic}" if topic else ""
    return (
        f"You write the file {filename}{about}. Answer with the file's content only, "
        "with no preamble and no surrounding code fence."
    )
