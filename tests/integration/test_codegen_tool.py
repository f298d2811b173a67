"""The codegen tool against a loopback server speaking the Messages API, via the real SDK."""

from __future__ import annotations

import pytest

from nofx.errors import PermanentToolError, RetryableToolError
from nofx.llm.anthropic import AnthropicLLM
from nofx.llm.base import Completion
from nofx.tools.base import ToolContext
from nofx.tools.codegen import CodegenTool
from tests.support.fake_anthropic import Reply
from tests.support.limits import soft_time_limit_in
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


@pytest.mark.parametrize(("reply", "error", "says"), [
    (Reply.error(408), RetryableToolError, "Anthropic API 408: scripted failure"),
    (Reply.error(409), RetryableToolError, "Anthropic API 409: scripted failure"),
    (Reply.error(429), RetryableToolError, "Anthropic API 429: scripted failure"),
    (Reply.error(529), RetryableToolError, "Anthropic API 529: scripted failure"),
    (Reply.error(500), RetryableToolError, "Anthropic API 500: scripted failure"),
    (Reply.error(501), RetryableToolError, "Anthropic API 501: scripted failure"),
    (Reply.error(520), RetryableToolError, "Anthropic API 520: scripted failure"),
    (Reply.malformed(), RetryableToolError, "Anthropic API answered malformed data: JSONDecodeError"),
    (Reply.ok(""), RetryableToolError, "Anthropic API answered with no text content"),
    (Reply(text="abc", chunks=3, stream_error="overloaded_error"), RetryableToolError,
     "Anthropic API overloaded_error mid-answer: scripted failure mid-answer"),
    (Reply(text="abc", chunks=3, stream_error="api_error"), RetryableToolError,
     "Anthropic API api_error mid-answer"),
    (Reply(text="abc", chunks=3, cut_after=1), RetryableToolError,
     "Anthropic API's answer ended before it was complete (1 characters received"),
    (Reply.error(400), PermanentToolError, "Anthropic API 400: scripted failure"),
    (Reply.error(401), PermanentToolError, "Anthropic API 401: scripted failure"),
    (Reply.error(403), PermanentToolError, "Anthropic API 403: scripted failure"),
    (Reply(text="abc", chunks=3, stream_error="invalid_request_error"), PermanentToolError,
     "Anthropic API invalid_request_error mid-answer"),
], ids=["408", "409", "429", "529", "500", "501", "520 (a proxy's)", "malformed", "empty text",
        "overloaded mid-answer", "api error mid-answer", "cut off mid-answer", "400", "401",
        "403", "invalid request mid-answer"])
def test_each_kind_of_llm_failure_is_classified(fake_llm, reply, error, says):
    marker = token()
    fake_llm.script(marker, [reply])
    usage: list[Completion] = []
    with pytest.raises(error) as caught:
        run_codegen({"prompt": marker}, usage)
    assert type(caught.value) is error
    assert str(caught.value).startswith(says)
    assert usage == []
    assert len(fake_llm.calls(marker)) == 1  # the SDK itself never retried


def test_an_unreachable_api_is_a_retryable_error(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    with pytest.raises(RetryableToolError, match="unreachable"):
        run_codegen({"prompt": "x"}, [])


@pytest.mark.parametrize(("status", "headers", "wait"), [
    (429, {"retry-after": "7"}, 7.0),
    (429, {"retry-after-ms": "1500", "retry-after": "2"}, 1.5),
    (529, {"retry-after": "3"}, 3.0),
    (429, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
    (429, {}, None),
], ids=["seconds", "milliseconds first", "overloaded", "an HTTP date", "none"])
def test_the_wait_a_rate_limit_asks_for_comes_with_the_error(fake_llm, status, headers, wait):
    marker = token()
    fake_llm.script(marker, [Reply(status=status, headers=headers)])
    with pytest.raises(RetryableToolError) as caught:
        run_codegen({"prompt": marker}, [])
    assert caught.value.retry_after_s == wait


def test_a_long_answer_streams_in_past_a_timeout_shorter_than_the_whole(fake_llm):
    # given a 1 s timeout, and an answer that arrives in 5 parts over 1.6 s
    marker = token()
    text = "# Slow\n" + "x" * 93
    fake_llm.script(marker, [Reply(text=text, chunks=5, chunk_delay_s=0.4)])
    progress: list[dict] = []
    tool = CodegenTool()
    ctx = ToolContext(run_id="r", step_id="s", attempt=1, llm_client=AnthropicLLM(timeout_s=1),
                      default_model="claude-sonnet-4-5", default_max_tokens=120,
                      on_progress=progress.append)
    # when the tool asks for it
    result = tool.run(tool.validate({"prompt": marker}), ctx)
    # then the whole answer arrives: the timeout is the longest silence, not the whole call
    assert result.artifacts[0].data == text.encode()
    [call] = fake_llm.calls(marker)
    assert call["body"]["stream"] is True
    # and the tool heard each part arrive
    assert progress == [{"llm_chars": n} for n in (20, 40, 60, 80, 100)]


def test_an_answer_that_goes_silent_longer_than_the_timeout_is_a_retryable_error(fake_llm):
    marker = token()
    fake_llm.script(marker, [Reply(text="ab", chunks=2, chunk_delay_s=3.0)])
    ctx = ToolContext(run_id="r", step_id="s", attempt=1,
                      llm_client=AnthropicLLM(timeout_s=0.5),
                      default_model="claude-sonnet-4-5", default_max_tokens=64)
    tool = CodegenTool()
    with pytest.raises(RetryableToolError, match="timed out"):
        tool.run(tool.validate({"prompt": marker}), ctx)


def test_an_answer_cut_short_by_max_tokens_says_so(fake_llm):
    marker = token()
    fake_llm.script(marker, [Reply(text="# Half a fi", stop_reason="max_tokens"),
                             Reply(text="# Whole\n")])
    cut = run_codegen({"prompt": marker}, [])
    whole = run_codegen({"prompt": marker}, [])
    assert (cut.outputs["truncated"], cut.outputs["stop_reason"]) == (True, "max_tokens")
    assert (whole.outputs["truncated"], whole.outputs["stop_reason"]) == (False, "end_turn")


def test_a_time_limit_while_the_answer_streams_in_comes_out_as_itself(fake_llm):
    # given an answer whose next part is slow, and the step's soft time limit firing while
    # the SDK waits for it (the SDK wraps whatever is raised there as a connection error)
    from celery.exceptions import SoftTimeLimitExceeded

    marker = token()
    fake_llm.script(marker, [Reply(text="abcdef", chunks=3, chunk_delay_s=2.0)])
    # then the step sees its time limit, to end timed out, not a network error to retry
    with pytest.raises(SoftTimeLimitExceeded), soft_time_limit_in(0.5):
        run_codegen({"prompt": marker}, [])


def test_a_failing_progress_callback_is_its_own_error_not_the_apis(fake_llm):
    marker = token()
    fake_llm.script(marker, [Reply(text="abcdef", chunks=3)])

    def broken(progress: dict) -> None:
        raise TypeError("a bug in whoever keeps the progress")

    tool = CodegenTool()
    ctx = ToolContext(run_id="r", step_id="s", attempt=1, llm_client=AnthropicLLM(timeout_s=5),
                      default_model="claude-sonnet-4-5", default_max_tokens=64,
                      on_progress=broken)
    with pytest.raises(TypeError, match="a bug in whoever keeps the progress"):
        tool.run(tool.validate({"prompt": marker}), ctx)
