"""Plan validation, as a table: what is accepted, and where each problem is reported."""

from __future__ import annotations

from typing import Any

import pytest
from marshmallow import ValidationError

from nofx.api.schemas import RunCreateSchema


def body(*steps: dict[str, Any], goal: str = "a goal") -> dict[str, Any]:
    return {"plan": {"goal": goal, "steps": list(steps)}}


def codegen(name: str = "gen", **inputs: Any) -> dict[str, Any]:
    return {"name": name, "tool": "codegen", "inputs": {"prompt": "hi", **inputs}}


def load(data: Any) -> dict[str, Any]:
    return RunCreateSchema().load(data)


def errors_of(data: Any) -> dict[str, Any]:
    with pytest.raises(ValidationError) as caught:
        load(data)
    return caught.value.messages  # type: ignore[return-value]


def test_the_seed_plan_is_accepted_with_defaults_filled_in():
    loaded = load(body({"name": "generate_hello_world", "tool": "codegen",
                        "inputs": {"prompt": "Write a simple Hello World README.md file",
                                   "topic": "Test Documentation"}}))
    [step] = loaded["plan"]["steps"]
    assert step["inputs"]["filename"] == "README.md"
    assert step["inputs"]["topic"] == "Test Documentation"


@pytest.mark.parametrize(
    ("data", "where"),
    [
        pytest.param(body(), ("plan", "steps"), id="no steps"),
        pytest.param(body(codegen(), goal=""), ("plan", "goal"), id="empty goal"),
        pytest.param({"plan": {"steps": [codegen()]}}, ("plan", "goal"), id="missing goal"),
        pytest.param(body(codegen("a"), codegen("a")), ("plan", "steps", "1", "name"),
                     id="duplicate names"),
        pytest.param(body({"name": "x", "tool": "teleport"}), ("plan", "steps", "0", "tool"),
                     id="unknown tool"),
        pytest.param(body({"name": "x", "tool": "codegen", "inputs": {"prompt": 5}}),
                     ("plan", "steps", "0", "inputs", "prompt"), id="prompt not a string"),
        pytest.param(body({"name": "x", "tool": "codegen", "inputs": {}}),
                     ("plan", "steps", "0", "inputs", "prompt"), id="prompt missing"),
        pytest.param(body({"name": "x", "tool": "sleep", "inputs": {"seconds": "soon"}}),
                     ("plan", "steps", "0", "inputs", "seconds"), id="seconds not a number"),
        pytest.param(body({"name": "x", "tool": "sleep", "inputs": {"seconds": -1}}),
                     ("plan", "steps", "0", "inputs", "seconds"), id="negative seconds"),
        pytest.param(body(*[codegen(f"s{i}") for i in range(101)]), ("plan", "steps"),
                     id="too many steps"),
        pytest.param(body(codegen(), goal="g" * 10_001), ("plan", "goal"), id="oversize goal"),
        pytest.param(body(codegen("n" * 101)), ("plan", "steps", "0", "name"), id="oversize name"),
        pytest.param(body(codegen("bad name!")), ("plan", "steps", "0", "name"),
                     id="name with spaces"),
        pytest.param(body(codegen(prompt="p" * 100_001)), ("plan", "steps", "0", "inputs", "prompt"),
                     id="oversize prompt"),
        pytest.param(body(codegen(filename="../etc/passwd")),
                     ("plan", "steps", "0", "inputs", "filename"), id="path as filename"),
        pytest.param(body(codegen("gen\n")), ("plan", "steps", "0", "name"),
                     id="name ending in a newline"),
        pytest.param(body(codegen(filename="README.md\n")),
                     ("plan", "steps", "0", "inputs", "filename"), id="filename ending in a newline"),
        pytest.param(body({**codegen(), "max_attempts": 11}), ("plan", "steps", "0", "max_attempts"),
                     id="too many attempts"),
        pytest.param(body({**codegen(), "timeout_s": 0}), ("plan", "steps", "0", "timeout_s"),
                     id="zero timeout"),
        pytest.param(body({**codegen(), "inputs": []}), ("plan", "steps", "0", "inputs"),
                     id="inputs not an object"),
        pytest.param(body({**codegen(), "colour": "red"}), ("plan", "steps", "0", "colour"),
                     id="unknown step field"),
        pytest.param({"plan": {"goal": "g", "steps": [codegen()]}, "extra": 1}, ("extra",),
                     id="unknown top-level field"),
        pytest.param({"goal": "g", "steps": [codegen()]}, ("plan",), id="plan not wrapped"),
        pytest.param({"plan": {"goal": "g", "steps": "all of them"}}, ("plan", "steps"),
                     id="steps not a list"),
        # Numbers are JSON numbers, and integers whole: nothing is rounded or read from text.
        pytest.param(body({**codegen(), "max_attempts": 1.9}),
                     ("plan", "steps", "0", "max_attempts"), id="fractional attempts"),
        pytest.param(body({**codegen(), "max_attempts": 10.5}),
                     ("plan", "steps", "0", "max_attempts"), id="attempts rounding into range"),
        pytest.param(body({**codegen(), "max_attempts": "3"}),
                     ("plan", "steps", "0", "max_attempts"), id="attempts as text"),
        pytest.param(body({**codegen(), "max_attempts": True}),
                     ("plan", "steps", "0", "max_attempts"), id="attempts as a boolean"),
        pytest.param(body({**codegen(), "timeout_s": "5"}), ("plan", "steps", "0", "timeout_s"),
                     id="timeout as text"),
        pytest.param(body({"name": "x", "tool": "sleep", "inputs": {"seconds": "0.1"}}),
                     ("plan", "steps", "0", "inputs", "seconds"), id="seconds as text"),
        pytest.param(body(codegen(max_tokens=100.7)),
                     ("plan", "steps", "0", "inputs", "max_tokens"), id="fractional max_tokens"),
        pytest.param(body(codegen(max_tokens="100")),
                     ("plan", "steps", "0", "inputs", "max_tokens"), id="max_tokens as text"),
    ],
)
def test_a_bad_plan_is_refused_with_the_field_that_is_wrong(data, where):
    errors = errors_of(data)
    node: Any = errors
    for key in where:
        assert isinstance(node, dict) and (key in node or int(key) in node if key.isdigit()
                                           else key in node), f"{where} not in {errors}"
        node = node[key] if key in node else node[int(key)]
    assert node


@pytest.mark.parametrize("value", [3, 3.0, 1e1], ids=["int", "whole float", "exponent"])
def test_a_whole_number_of_attempts_is_accepted_however_it_is_written(value):
    [step] = load(body({**codegen(), "max_attempts": value}))["plan"]["steps"]
    assert step["max_attempts"] == value


def test_every_problem_in_a_plan_is_reported_at_once():
    errors = errors_of(body({"name": "x", "tool": "teleport"},
                            {"name": "y", "tool": "sleep", "inputs": {}}))
    steps = errors["plan"]["steps"]
    assert set(steps) == {"0", "1"}


@pytest.fixture()
def bounds(monkeypatch):
    """Spending bounds set for one test (the cached settings follow them)."""
    from nofx.config import reset_settings

    def set_bounds(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        reset_settings()

    yield set_bounds
    monkeypatch.undo()
    reset_settings()


def test_with_no_bounds_set_any_model_and_up_to_64000_tokens_are_accepted():
    load(body(codegen(model="claude-opus-4-1", max_tokens=64_000)))


def test_a_model_the_operator_has_not_allowed_is_refused_naming_the_allowed_ones(bounds):
    bounds(NOFX_LLM_MODELS="claude-sonnet-4, claude-haiku")
    load(body(codegen(model="claude-sonnet-4-5"), codegen("b", model="claude-haiku-4-5")))
    errors = errors_of(body(codegen(model="claude-opus-4-1")))
    [message] = errors["plan"]["steps"]["0"]["inputs"]["model"]
    assert "'claude-opus-4-1' is not allowed" in message
    assert "claude-sonnet-4, claude-haiku" in message


def test_max_tokens_past_the_operators_limit_is_refused(bounds):
    bounds(NOFX_LLM_MAX_TOKENS_LIMIT="4096")
    load(body(codegen(max_tokens=4096)))
    errors = errors_of(body(codegen(max_tokens=4097)))
    assert errors["plan"]["steps"]["0"]["inputs"]["max_tokens"] == [
        "at most 4096 here (NOFX_LLM_MAX_TOKENS_LIMIT)"]
