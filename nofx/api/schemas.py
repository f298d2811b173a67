"""The API's contract as marshmallow schemas: what comes in, what goes out."""

from __future__ import annotations

import base64
import math
import re
from functools import cache
from http import HTTPStatus
from typing import Any

from flask_smorest.error_handler import ErrorSchema
from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    pre_load,
    validate,
    validates_schema,
)

from nofx.errors import InvalidInputs
from nofx.tools import JsonInteger, JsonNumber, Tool, Whole, get_tool, registry

STEP_NAME = r"^[A-Za-z0-9_.-]{1,100}$"
MAX_STEPS = 100
#: Printable ASCII, no space at either end (HTTP strips it), 1-200 characters.
IDEMPOTENCY_KEY = r"^[!-~]([ -~]{0,198}[!-~])?$"
#: Event ids are Postgres BIGINTs.
MAX_EVENT_ID = 2**63 - 1

# For the document's examples: a run id, and the cursor of a page ending at that run
# (as ``runs.encode_cursor`` makes it; a test checks it decodes).
_RUN_ID = "3f0f6bd4-4a55-4c38-9b1c-1b6f7f1f2a10"
EXAMPLE_CURSOR = base64.urlsafe_b64encode(
    f"2025-01-01T17:55:00.367000+00:00|{_RUN_ID}".encode()).decode().rstrip("=")

SEED_PLAN: dict[str, Any] = {
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
        validate=Whole(STEP_NAME, error="1-100 characters from A-Z a-z 0-9 _ . -"),
        metadata={"example": "generate_hello_world"},
    )
    tool = fields.String(required=True, validate=validate.Length(min=1, max=100),
                         metadata={"description": "a registered tool: codegen, echo, sleep, ..."})
    inputs = fields.Dict(keys=fields.String(), load_default=dict,
                         metadata={"description": "validated by the tool"})
    timeout_s = JsonNumber(validate=validate.Range(min=0.5, max=86_400),
                             metadata={"description": "hard time limit in seconds"})
    max_attempts = JsonInteger(validate=validate.Range(min=1, max=10))


class Steps(fields.List):
    """A plan's steps: loaded as StepSpec, documented as one step schema per tool."""


@cache
def tool_step_schema(name: str, tool: Tool) -> type[Schema]:
    """A StepSpec whose ``tool`` is ``name`` and whose ``inputs`` are that tool's (docs only)."""
    words = re.split(r"[^A-Za-z0-9]+", name)
    return type("".join(w.capitalize() for w in words) + "StepSchema", (StepSpecSchema,), {
        "__doc__": f"A step that runs the {name} tool.",
        "tool": fields.String(required=True, validate=validate.OneOf([name])),
        "inputs": fields.Nested(tool.Inputs, required=_needs_inputs(tool),
                                metadata={"description": f"the inputs of {name}"}),
    })


def _needs_inputs(tool: Tool) -> bool:
    return any(field.required for field in tool.Inputs().fields.values())


def steps_one_of_tools(converter: Any, field: fields.Field, **_: Any) -> dict[str, Any]:
    """apispec attribute function: the items of :class:`Steps` are one schema per tool.

    JSON Schema can then say which inputs each tool takes, so the document accepts what
    the API accepts (a plain StepSpec would allow any tool with any inputs).
    """
    if not isinstance(field, Steps):
        return {}
    refs = {name: converter.resolve_nested_schema(tool_step_schema(name, tool))
            for name, tool in sorted(registry().items())}
    return {"items": {
        "oneOf": list(refs.values()),
        "discriminator": {"propertyName": "tool",
                          "mapping": {name: ref["$ref"] for name, ref in refs.items()}},
    }}


class PlanSchema(Schema):
    class Meta:
        unknown = RAISE

    goal = fields.String(required=True, validate=validate.Length(min=1, max=10_000))
    steps = Steps(
        fields.Nested(StepSpecSchema), required=True,
        validate=validate.Length(min=1, max=MAX_STEPS, error="a plan has 1 to 100 steps"),
        # uniqueItems is weaker than the real rule (unique names) but is what JSON Schema has.
        metadata={"description": "run in order; step names are unique within the plan",
                  "uniqueItems": True},
    )

    @validates_schema
    def _check_steps(self, data: dict[str, Any], **_: Any) -> None:
        # One pass per step: each tool validates its inputs once, and a step that passes
        # keeps the tool's normalised inputs (defaults filled in) for the run.
        errors: dict[str, Any] = {}
        seen: set[str] = set()
        for i, step in enumerate(data.get("steps", [])):
            problem = _step_problem(step, seen)
            if problem:
                errors[str(i)] = problem
        if errors:
            raise ValidationError({"steps": errors})


def _step_problem(step: dict[str, Any], seen: set[str]) -> dict[str, Any] | None:
    if step["name"] in seen:
        return {"name": [f"duplicate step name {step['name']!r}"]}
    seen.add(step["name"])
    tool = get_tool(step["tool"])
    if tool is None:
        known = ", ".join(sorted(registry()))
        return {"tool": [f"unknown tool {step['tool']!r}; known tools: {known}"]}
    try:
        step["inputs"] = tool.validate(step.get("inputs") or {})
    except InvalidInputs as exc:
        return {"inputs": exc.errors}
    return None


class RunCreateSchema(Schema):
    class Meta:
        unknown = RAISE
        example = SEED_PLAN

    plan = fields.Nested(PlanSchema, required=True)

    @pre_load
    def _storable_json(self, data: Any, **_: Any) -> Any:
        # JSON as Python reads it holds what NOFX cannot store or send back: text with a NUL
        # character ("\u0000": Postgres stores none) or a lone surrogate ("\ud800": UTF-8
        # has none), NaN and infinities (JSON has none; jsonb refuses them; "1e400" reads as
        # one), and nesting deep enough to exhaust a recursive encoder. Refuse them here,
        # saying where, rather than at INSERT time or when the run is read back.
        found = _unstorable(data)
        if found is not None:
            raise ValidationError(_nested(*found))
        return data


#: How deep a plan may nest (its tool inputs included): far beyond any tool's needs.
MAX_DEPTH = 64
_BAD_TEXT = "text with a NUL character (\\u0000) or an unpaired surrogate cannot be stored"
_BAD_NUMBER = "a number JSON cannot carry (NaN, an infinity, or beyond a double's range)"


def _unstorable(data: Any) -> tuple[tuple[str, ...], str] | None:
    """Where the first value NOFX could not store is (``("plan", "steps", "0", "inputs",
    "x")``; a bad key is reported at its object), and why."""
    stack: list[tuple[tuple[str, ...], Any, int]] = [((), data, 0)]
    while stack:
        path, value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return path, f"nested more than {MAX_DEPTH} levels deep"
        if isinstance(value, dict):
            for key, item in value.items():
                if not _storable(str(key)):
                    return path, f"a key: {_BAD_TEXT}"
                stack.append(((*path, str(key)), item, depth + 1))
        elif isinstance(value, list):
            stack.extend(((*path, str(i)), item, depth + 1) for i, item in enumerate(value))
        elif isinstance(value, str) and not _storable(value):
            return path, _BAD_TEXT
        elif isinstance(value, float) and not math.isfinite(value):
            return path, _BAD_NUMBER
    return None


def _nested(path: tuple[str, ...], why: str) -> dict[str, Any]:
    """``{"plan": {"steps": {"0": ... [why]}}}``: field errors shaped as marshmallow shapes
    every other one (``_schema`` for the body as a whole)."""
    errors: Any = [why]
    for key in reversed(path or ("_schema",)):
        errors = {key: errors}
    return errors


def _storable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
    attempt = fields.Integer(metadata={
        "description": "the step's latest attempt (0: none yet); numbers go on across resumes"})
    max_attempts = fields.Integer(metadata={
        "description": "the attempt number it may reach; a resume adds a fresh budget to the "
                       "attempts made so far"})
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
    status = fields.String(
        validate=validate.OneOf(["queued", "running", "succeeded", "failed", "cancelled"]),
        metadata={"description": "only runs with this status", "example": "failed"})
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200),
                           metadata={"description": "most runs a page holds; a page ends "
                                                    "early once its plans pass "
                                                    "NOFX_PAGE_MAX_BYTES", "example": 20})
    # Opaque: only a cursor this API made is valid, which ``format`` says and a pattern
    # could not; ``runs.decode_cursor`` refuses anything else with 422.
    cursor = fields.String(metadata={
        "format": "cursor", "description": "``next_cursor`` from the previous page (opaque)",
        "example": EXAMPLE_CURSOR})


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
    after = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_EVENT_ID),
                           metadata={"description": "only events with a greater id",
                                     "example": 41})
    limit = fields.Integer(load_default=1000, validate=validate.Range(min=1, max=1000),
                           metadata={"description": "events per page", "example": 100})


class StreamArgsSchema(Schema):
    after = fields.Integer(
        load_default=0, validate=validate.Range(min=0, max=MAX_EVENT_ID),
        metadata={"description": "start after this event id (Last-Event-ID wins when sent)",
                  "example": 41},
    )


class StreamHeadersSchema(Schema):
    last_event_id = fields.Integer(
        data_key="Last-Event-ID", validate=validate.Range(min=0, max=MAX_EVENT_ID),
        metadata={"description": "the last event id received; the stream resumes after it",
                  "example": 42},
    )


class IdempotencyHeadersSchema(Schema):
    idempotency_key = fields.String(
        data_key="Idempotency-Key",
        validate=Whole(IDEMPOTENCY_KEY, error="1-200 printable ASCII characters"),
        metadata={"description": "the same key with the same body returns the first run (200); "
                                 "with another body, 409",
                  "example": "7c1d3f9e-submit-readme"},
    )


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


# -- documentation: error shapes and examples ------------------------------------------------


def error_example(code: int, message: str) -> dict[str, Any]:
    """An error body as the API sends it."""
    return {"code": code, "status": HTTPStatus(code).phrase, "message": message}


def error_doc(code: int, message: str, description: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``blp.alt_response``: the error schema, with an example."""
    return {"schema": ErrorSchema, "description": description or message,
            "example": error_example(code, message)}


def run_id_param() -> dict[str, Any]:
    """The ``run_id`` path parameter, documented as the UUID it is."""
    return {"in": "path", "name": "run_id", "required": True,
            "description": "the run's id, as ``POST /runs`` gave it",
            "schema": {"type": "string", "format": "uuid"}, "example": _RUN_ID}


_STEP_ID = "9b2e7c55-0d7e-4a43-8f60-51a4f4a0c3d1"
_ARTIFACT_ID = "c01d9afd-6a7e-4f1b-9d38-2f0f3a1e8b42"
_SHA = "5d41402abc4b2a76b9719d911017c592" * 2

EXAMPLE_ARTIFACT: dict[str, Any] = {
    "id": _ARTIFACT_ID, "run_id": _RUN_ID, "step_id": _STEP_ID, "name": "README.md",
    "content_type": "text/markdown; charset=utf-8", "size": 220, "sha256": _SHA,
    "created_at": "2025-01-01T17:55:00.505000+00:00",
    "url": f"/artifacts/{_ARTIFACT_ID}/content",
}

EXAMPLE_RUN: dict[str, Any] = {
    "id": _RUN_ID, "status": "succeeded", "goal": SEED_PLAN["plan"]["goal"],
    "plan": SEED_PLAN["plan"], "created_at": "2025-01-01T17:55:00.367000+00:00",
    "started_at": "2025-01-01T17:55:00.485000+00:00",
    "ended_at": "2025-01-01T17:55:00.584000+00:00",
    "steps": [{
        "id": _STEP_ID, "run_id": _RUN_ID, "index": 0, "name": "generate_hello_world",
        "tool": "codegen", "status": "succeeded",
        "inputs": SEED_PLAN["plan"]["steps"][0]["inputs"],
        "outputs": {"artifact": "README.md", "chars": 212}, "attempt": 1, "max_attempts": 3,
        "timeout_s": 300.0, "started_at": "2025-01-01T17:55:00.485000+00:00",
        "ended_at": "2025-01-01T17:55:00.505000+00:00",
        "heartbeat_at": "2025-01-01T17:55:00.485000+00:00", "error": None,
    }],
    "artifacts": [EXAMPLE_ARTIFACT],
}

EXAMPLE_INVALID_PLAN = dict(
    error_example(422, "invalid request: 'errors' says what is wrong, field by field"),
    errors={"json": {"plan": {"steps": {"0": {
        "tool": ["unknown tool 'teleport'; known tools: codegen, echo, sleep"]}}}}},
)

EXAMPLE_QUEUED_RUN = dict(
    EXAMPLE_RUN, status="queued", started_at=None, ended_at=None, artifacts=[],
    steps=[dict(EXAMPLE_RUN["steps"][0], status="queued", outputs=None, attempt=0,
                started_at=None, ended_at=None, heartbeat_at=None)],
)

EXAMPLE_RUN_PAGE = {
    "items": [{k: v for k, v in EXAMPLE_RUN.items() if k not in ("steps", "artifacts")}],
    "next_cursor": EXAMPLE_CURSOR,
}

EXAMPLE_EVENT_PAGE = {"items": [
    {"id": 41, "run_id": _RUN_ID, "step_id": None, "type": "run.created",
     "payload": {"goal": SEED_PLAN["plan"]["goal"], "steps": 1},
     "created_at": "2025-01-01T17:55:00.367000+00:00"},
    {"id": 47, "run_id": _RUN_ID, "step_id": None, "type": "run.finished",
     "payload": {"status": "succeeded"}, "created_at": "2025-01-01T17:55:00.584000+00:00"},
]}

EXAMPLE_ARTIFACT_PAGE = {"items": [EXAMPLE_ARTIFACT]}

EXAMPLE_STREAM = (
    "retry: 2000\n\n"
    f'id: 41\ndata: {{"id":41,"run_id":"{_RUN_ID}","step_id":null,"type":"run.created",'
    '"payload":{"goal":"Generate test documentation","steps":1},'
    '"created_at":"2025-01-01T17:55:00.367000+00:00"}\n\n'
    ": keep-alive\n\n"
    f'id: 47\ndata: {{"id":47,"run_id":"{_RUN_ID}","step_id":null,"type":"run.finished",'
    '"payload":{"status":"succeeded"},"created_at":"2025-01-01T17:55:00.584000+00:00"}\n\n'
)
