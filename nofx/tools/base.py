"""What a tool is: validated inputs in, outputs and artifacts out. Nothing else.

Tools never touch status, events or Celery. They ask the LLM through their context, which
reports usage to whoever runs them, and they return artifacts as bytes for the executor
to store.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from marshmallow import Schema, ValidationError, fields, validate

from nofx.errors import InvalidInputs, PermanentToolError
from nofx.llm.base import LLM, Completion


class Whole(validate.Regexp):
    """:class:`marshmallow.validate.Regexp` over the whole value.

    ``Regexp`` uses ``re.match``, where ``$`` also matches before a final newline, so
    ``^[a-z]+$`` would let ``"name\\n"`` through. The pattern stays as written for the
    OpenAPI document (in ECMA-262, which OpenAPI patterns follow, ``$`` is the end).
    """

    def __call__(self, value: Any) -> Any:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


class JsonInteger(fields.Integer):
    """An integer as JSON writes one: ``3``, ``3.0`` or ``3e0``; never ``3.5`` (marshmallow's
    ``Integer`` would round it down, past any range check) nor the text ``"3"``."""

    def _validated(self, value: Any) -> Any:
        if isinstance(value, float) and not value.is_integer() or not _is_number(value):
            raise self.make_error("invalid")
        return super()._validated(value)


class JsonNumber(fields.Float):
    """A JSON number, never text: marshmallow's ``Float`` would read ``"0.1"`` too, which the
    API's document (``type: number``) does not allow."""

    def _validated(self, value: Any) -> Any:
        if not _is_number(value):
            raise self.make_error("invalid")
        return super()._validated(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: A MIME type (``type/subtype``, parameters allowed), printable ASCII only: it becomes the
#: ``Content-Type`` of the artifact's download.
CONTENT_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+([ \t]*;[\x20-\x7e]*)?")


@dataclass(frozen=True)
class Artifact:
    """A file a tool produced.

    Its name becomes the last part of its storage key and of its download's file name, so
    a tool (an installed plugin, say) cannot pick one that climbs out of its step's place
    (``..``), or a content type that would break the download's headers: either fails the
    step, saying why.
    """

    name: str
    data: bytes
    content_type: str = "application/octet-stream"

    def __post_init__(self) -> None:
        parts = self.name.split("/")
        if (not self.name or len(self.name) > 255 or not self.name.isprintable()
                or "\\" in self.name or any(p in ("", ".", "..") for p in parts)):
            raise PermanentToolError(
                f"the tool named an artifact {self.name!r}: an artifact name is 1 to 255 "
                "printable characters, without backslashes or empty, '.' or '..' parts")
        if not CONTENT_TYPE.fullmatch(self.content_type):
            raise PermanentToolError(
                f"the tool gave artifact {self.name!r} the content type {self.content_type!r}, "
                "which is not a MIME type (type/subtype)")


@dataclass
class ToolResult:
    """What a tool returns: JSON outputs and any artifacts."""

    outputs: dict[str, Any]
    artifacts: list[Artifact] = field(default_factory=list)


@dataclass
class ToolContext:
    """What a tool may use while it runs."""

    run_id: str
    step_id: str
    attempt: int
    llm_client: LLM
    default_model: str
    default_max_tokens: int
    on_usage: Callable[[Completion], None] = lambda completion: None
    #: Hears how far a long piece of work has got (``{"llm_chars": 5321}``); whoever runs
    #: the tool decides what to keep (``step.progress`` events, a few seconds apart).
    on_progress: Callable[[dict[str, Any]], None] = lambda progress: None

    def complete(
        self, prompt: str, *, model: str | None = None, max_tokens: int | None = None,
        system: str | None = None,
    ) -> Completion:
        """Ask the configured LLM; progress is reported as the answer arrives, and usage
        before the answer is returned."""
        completion = self.llm_client.complete(
            prompt,
            model=model or self.default_model,
            max_tokens=max_tokens or self.default_max_tokens,
            system=system,
            on_progress=lambda chars: self.on_progress({"llm_chars": chars}),
        )
        self.on_usage(completion)
        return completion


class Tool:
    """Base class for tools. Set ``name``, ``Inputs`` and implement :meth:`run`."""

    name: ClassVar[str]
    Inputs: ClassVar[type[Schema]]
    #: Hard limit for a step of this tool unless the plan sets ``timeout_s``.
    default_timeout_s: ClassVar[float] = 300.0

    def validate(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Inputs as the tool will see them, or :class:`InvalidInputs` field by field."""
        try:
            return self._schema().load(inputs)
        except ValidationError as exc:
            errors = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
            # Field by field in ``errors`` (a 422's body); in the message too, for a step
            # that fails on them at run time (``step.error`` keeps only the message).
            detail = "; ".join(
                f"{field}: {' '.join(map(str, said)) if isinstance(said, list) else said}"
                for field, said in errors.items())
            raise InvalidInputs(f"invalid inputs for tool {self.name!r}: {detail}",
                                errors=errors) from exc

    def _schema(self) -> Schema:
        # Building a marshmallow schema costs more than loading with it: build it once.
        schema = self.__dict__.get("_inputs_schema")
        if schema is None:
            schema = self.__dict__["_inputs_schema"] = self.Inputs()
        return schema

    def run(self, inputs: dict[str, Any], ctx: ToolContext) -> ToolResult:
        """Do the work."""
        raise NotImplementedError
