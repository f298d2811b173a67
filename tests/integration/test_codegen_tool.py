"""The codegen tool against a loopback server speaking the Messages API, via the real SDK."""

from __future__ import annotations

import pytest

from nofx.errors import PermanentToolError, RetryableToolError
from nofx.llm.anthropic import AnthropicLLM
from nofx.llm.base import Completion
from nofx.tools.base import ToolContext
from nofx.tools.codegen import CodegenTool
from tests.support.fake_anthropic import Reply
from tests.support.runs import token


def context(usage: list[Completion]) -> ToolContext:
    return ToolContext(run_id="r", step_id="s", attempt=1, llm_client=AnthropicLLM(timeout_s=5),
                       default_model="claude-sonnet-4-5", default_max_tokens=256,
                       on_usage=usage.append)


def run_codegen(inputs: dict, usage: list[Completion]):
    tool = CodegenTool()
    return tool.run(tool.validate(inputs), context(usage))


def test_the_models_text_becomes_the_artifact_and_usage_is_reported(fake_llm):
    marker = token()
    fake_llm.script(marker, [Reply.ok("# Title\n\nBody.\n", input_tokens=7, output_tokens=9)])
    usage: list[Completion] = []

    result = run_codegen({"prompt": f"readme {marker}", "topic": "Docs",
                          "filename": "GUIDE.md"}, usage)

    [artifact] = result.artifacts
    assert artifact.name == "GUIDE.md" and artifact.data == b"# Title\n\nBody.\n"
    assert artifact.content_type == "text/markdown"
    assert [(u.input_tokens, u.output_tokens, u.provider) for u in usage] == [(7, 9, "anthropic")]
    assert result.outputs["chars"] == len("# Title\n\nBody.\n")
    [call] = fake_llm.calls(marker)
    assert "GUIDE.md" in call["body"]["system"] and "Docs" in call["body"]["system"]


@pytest.mark.parametrize(("reply", "error"), [
    (Reply.error(429), RetryableToolError),
    (Reply.error(529), RetryableToolError),
    (Reply.error(500), RetryableToolError),
    (Reply.error(501), RetryableToolError),
    (Reply.error(520), RetryableToolError),
    (Reply.malformed(), RetryableToolError),
    (Reply.ok(""), RetryableToolError),
    (Reply.error(400), PermanentToolError),
    (Reply.error(401), PermanentToolError),
    (Reply.error(403), PermanentToolError),
], ids=["429", "529", "500", "501", "520 (a proxy's)", "malformed", "empty text", "400", "401",
        "403"])
def test_each_kind_of_llm_failure_is_classified(fake_llm, reply, error):
    marker = token()
    fake_llm.script(marker, [reply])
    usage: list[Completion] = []
    with pytest.raises(error) as caught:
        run_codegen({"prompt": marker}, usage)
    assert type(caught.value) is error
    assert usage == []
    assert len(fake_llm.calls(marker)) == 1  # the SDK itself never retried


def test_an_unreachable_api_is_a_retryable_error(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    with pytest.raises(RetryableToolError, match="unreachable"):
        run_codegen({"prompt": "x"}, [])


@pytest.mark.parametrize(("headers", "wait"), [
    ({"retry-after": "7"}, 7.0),
    ({"retry-after-ms": "1500", "retry-after": "2"}, 1.5),
    ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
    ({}, None),
], ids=["seconds", "milliseconds first", "an HTTP date", "none"])
def test_the_wait_a_rate_limit_asks_for_comes_with_the_error(fake_llm, headers, wait):
    marker = token()
    fake_llm.script(marker, [Reply(status=429, headers=headers)])
    with pytest.raises(RetryableToolError) as caught:
        run_codegen({"prompt": marker}, [])
    assert caught.value.retry_after_s == wait


def test_a_long_answer_gets_the_time_its_length_needs_not_the_short_default(fake_llm):
    # given a model that takes 2 s to answer, and a 1 s request timeout, but an answer of up
    # to 120 tokens, which the SDK's pace (~36 tokens/s) gives 3.4 s
    marker = token()
    fake_llm.script(marker, [Reply(text="# Slow\n", delay_s=2.0)])
    tool = CodegenTool()
    ctx = ToolContext(run_id="r", step_id="s", attempt=1, llm_client=AnthropicLLM(timeout_s=1),
                      default_model="claude-sonnet-4-5", default_max_tokens=120,
                      on_usage=lambda c: None)
    # then the answer arrives
    assert tool.run(tool.validate({"prompt": marker}), ctx).artifacts[0].data == b"# Slow\n"
    # and a short answer keeps the configured timeout
    assert AnthropicLLM(timeout_s=60).timeout_for(256) == 60
    assert AnthropicLLM(timeout_s=60).timeout_for(8192) == pytest.approx(230.4)


def test_an_answer_cut_short_by_max_tokens_says_so(fake_llm):
    marker = token()
    fake_llm.script(marker, [Reply(text="# Half a fi", stop_reason="max_tokens"),
                             Reply(text="# Whole\n")])
    cut = run_codegen({"prompt": marker}, [])
    whole = run_codegen({"prompt": marker}, [])
    assert (cut.outputs["truncated"], cut.outputs["stop_reason"]) == (True, "max_tokens")
    assert (whole.outputs["truncated"], whole.outputs["stop_reason"]) == (False, "end_turn")
