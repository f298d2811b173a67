"""The API's contract as marshmallow schemas: what comes in, what goes out."""

from __future__ import annotations

from typing import Any

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from nofx.errors import InvalidInputs
from nofx.tools import get_tool, registry

STEP_NAME = r"^[A-Za-z0-9_.-]{1,100}$"
MAX_STEPS = 100

SEED_PLAN = {
    "plan": {
        "goal": "Generate test documentation",
        "steps": [{
            "name": "generate_hello_world",
            "tool": "codegen",
            "inputs": {
                "prompt": "Write a simple Hello World README.md file",
                "topic": "Test Documentation",
            },
        }],
    }
}


class StepSpecSchema(Schema):
    class Meta:
        unknown = RAISE

    name = fields.String(
        required=True,
        validate=validate.Regexp(STEP_NAME, error="1-100 characters from A-Z a-z 0-9 _ . -"),
        metadata={"example": "generate_hello_world"},
    )
    tool = fields.String(required=True, validate=validate.Length(min=1, max=100),
                         metadata={"description": "a registered tool: codegen, echo, sleep, ..."})
    inputs = fields.Dict(keys=fields.String(), load_default=dict,
                         metadata={"description": "validated by the tool"})
    timeout_s = fields.Float(validate=validate.Range(min=0.5, max=86_400),
                             metadata={"description": "hard time limit in seconds"})
    max_attempts = fields.Integer(validate=validate.Range(min=1, max=10))


class PlanSchema(Schema):
    class Meta:
        unknown = RAISE

    goal = fields.String(required=True, validate=validate.Length(min=1, max=10_000))
    steps = fields.List(
        fields.Nested(StepSpecSchema), required=True,
        validate=validate.Length(min=1, max=MAX_STEPS, error="a plan has 1 to 100 steps"),
    )

    @validates_schema
    def _check_steps(self, data: dict[str, Any], **_: Any) -> None:
        errors: dict[str, Any] = {}
        seen: set[str] = set()
        for i, step in enumerate(data.get("steps", [])):
            problem = _step_problem(step, seen)
            if problem:
                errors[str(i)] = problem
        if errors:
            raise ValidationError({"steps": errors})

    @post_load
    def _normalise_inputs(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        for step in data["steps"]:
            step["inputs"] = get_tool(step["tool"]).validate(step["inputs"])  # type: ignore[union-attr]
        return data


def _step_problem(step: dict[str, Any], seen: set[str]) -> dict[str, Any] | None:
    if step["name"] in seen:
        return {"name": [f"duplicate step name {step['name']!r}"]}
    seen.add(step["name"])
    tool = get_tool(step["tool"])
    if tool is None:
        known = ", ".join(sorted(registry()))
        return {"tool": [f"unknown tool {step['tool']!r}; known tools: {known}"]}
    try:
        tool.validate(step.get("inputs") or {})
    except InvalidInputs as exc:
        return {"inputs": exc.errors}
    return None


class RunCreateSchema(Schema):
    class Meta:
        unknown = RAISE
        example = SEED_PLAN

    plan = fields.Nested(PlanSchema, required=True)


class StepSchema(Schema):
    id = fields.String()
    run_id = fields.String()
    index = fields.Integer()
    name = fields.String()
    tool = fields.String()
    status = fields.String(metadata={"enum": ["queued", "running", "succeeded", "failed",
                                              "timed_out", "cancelled"]})
    inputs = fields.Dict()
    outputs = fields.Dict(allow_none=True)
    attempt = fields.Integer()
    max_attempts = fields.Integer()
    timeout_s = fields.Float()
    started_at = fields.DateTime(allow_none=True)
    ended_at = fields.DateTime(allow_none=True)
    heartbeat_at = fields.DateTime(allow_none=True)
    error = fields.Dict(allow_none=True, metadata={"description": '{"type", "message"} or null'})


class ArtifactSchema(Schema):
    id = fields.String()
    run_id = fields.String()
    step_id = fields.String()
    name = fields.String()
    content_type = fields.String()
    size = fields.Integer()
    sha256 = fields.String()
    created_at = fields.DateTime()
    url = fields.Function(lambda a: f"/artifacts/{a['id']}/content",
                          metadata={"description": "where the bytes are served"})


class RunSummarySchema(Schema):
    id = fields.String()
    status = fields.String(metadata={"enum": ["queued", "running", "succeeded", "failed",
                                              "cancelled"]})
    goal = fields.String()
    plan = fields.Dict()
    created_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    ended_at = fields.DateTime(allow_none=True)


class RunSchema(RunSummarySchema):
    steps = fields.List(fields.Nested(StepSchema))
    artifacts = fields.List(fields.Nested(ArtifactSchema))


class RunPageSchema(Schema):
    items = fields.List(fields.Nested(RunSummarySchema))
    next_cursor = fields.String(allow_none=True)


class RunListArgsSchema(Schema):
    status = fields.String(validate=validate.OneOf(
        ["queued", "running", "succeeded", "failed", "cancelled"]))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    cursor = fields.String(validate=validate.Length(max=200))


class EventSchema(Schema):
    id = fields.Integer()
    run_id = fields.String()
    step_id = fields.String(allow_none=True)
    type = fields.String()
    payload = fields.Dict()
    created_at = fields.DateTime()


class EventPageSchema(Schema):
    items = fields.List(fields.Nested(EventSchema))


class EventArgsSchema(Schema):
    after = fields.Integer(load_default=0, validate=validate.Range(min=0))
    limit = fields.Integer(load_default=1000, validate=validate.Range(min=1, max=1000))


class ArtifactPageSchema(Schema):
    items = fields.List(fields.Nested(ArtifactSchema))


class HealthSchema(Schema):
    status = fields.String()


class DetailedHealthSchema(Schema):
    status = fields.String()
    checks = fields.Dict(keys=fields.String(), values=fields.Dict())


class StuckStepSchema(StepSchema):
    age_s = fields.Float()
    reason = fields.String()


class StuckStepPageSchema(Schema):
    items = fields.List(fields.Nested(StuckStepSchema))
