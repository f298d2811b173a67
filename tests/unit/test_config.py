"""Settings from the environment: empty means the default, a bad value names its variable."""

from __future__ import annotations

import importlib

import pytest

from nofx.config import ConfigError, Settings, reset_settings


@pytest.mark.parametrize(("env", "field", "value"), [
    ({}, "api_workers", 2),
    ({"NOFX_API_WORKERS": ""}, "api_workers", 2),
    ({"NOFX_API_WORKERS": "4"}, "api_workers", 4),
    ({"NOFX_API_THREADS": " 32 "}, "api_threads", 32),
    ({}, "api_threads", 8),
    ({"NOFX_API_PORT": "9000"}, "api_port", 9000),
    ({"NOFX_HEARTBEAT_S": "0.5"}, "heartbeat_s", 0.5),
    ({}, "progress_every_s", 10.0),
    ({"NOFX_PROGRESS_EVERY_S": "0"}, "progress_every_s", 0.0),
    ({}, "sse_max_streams", 6),
    ({"NOFX_API_THREADS": "32"}, "sse_max_streams", 30),
    ({"NOFX_API_THREADS": "2"}, "sse_max_streams", 1),
    ({"NOFX_API_THREADS": "2", "NOFX_SSE_MAX_STREAMS": "2"}, "sse_max_streams", 2),
    ({}, "sse_max_s", 900.0),
    ({}, "llm_models", ()),
    ({"NOFX_LLM_MODELS": " claude-sonnet-4 , claude-haiku,"}, "llm_models",
     ("claude-sonnet-4", "claude-haiku")),
    ({}, "llm_max_tokens_limit", 64_000),
])
def test_a_setting_is_its_variable_or_the_default(env, field, value):
    assert getattr(Settings.from_env(env), field) == value


@pytest.mark.parametrize(("name", "raw", "says"), [
    ("NOFX_API_WORKERS", "2.5", "must be a whole number"),
    ("NOFX_API_WORKERS", "0", "must be at least 1"),
    ("NOFX_API_THREADS", "-8", "must be at least 1"),
    ("NOFX_API_THREADS", "many", "must be a whole number"),
    ("NOFX_MAX_ATTEMPTS", "0", "must be at least 1"),
    ("NOFX_LLM_MAX_TOKENS", "0", "must be at least 1"),
    ("NOFX_API_PORT", "80.8", "must be a whole number"),
    ("NOFX_MAX_BODY_BYTES", "-1", "must not be negative"),
    ("NOFX_HEARTBEAT_S", "soon", "must be a number"),
    ("NOFX_S3_TIMEOUT_S", "0", "must be more than 0"),
    ("NOFX_LLM_TIMEOUT_S", "0", "must be more than 0"),
    ("NOFX_PROGRESS_EVERY_S", "-1", "must not be negative"),
])
def test_a_bad_value_stops_the_process_naming_the_variable(name, raw, says):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: raw})
    assert str(caught.value) == f"{name} {says}, got {raw!r}"


@pytest.mark.parametrize(("env", "says"), [
    ({"NOFX_LLM_MODELS": "claude-haiku"},
     "NOFX_LLM_MODEL 'claude-sonnet-4-5' is not among NOFX_LLM_MODELS (claude-haiku)"),
    ({"NOFX_LLM_MAX_TOKENS_LIMIT": "1000"},
     "NOFX_LLM_MAX_TOKENS (2048) is above NOFX_LLM_MAX_TOKENS_LIMIT (1000)"),
])
def test_the_llm_defaults_must_pass_the_bounds_plans_are_held_to(env, says):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert str(caught.value) == says


def test_gunicorn_takes_its_processes_and_threads_from_the_settings(monkeypatch):
    import nofx.api.gunicorn_conf as conf

    monkeypatch.setenv("NOFX_API_WORKERS", "3")
    monkeypatch.setenv("NOFX_API_THREADS", "16")
    reset_settings()
    try:
        conf = importlib.reload(conf)
        assert (conf.workers, conf.threads) == (3, 16)

        monkeypatch.setenv("NOFX_API_WORKERS", "")
        monkeypatch.setenv("NOFX_API_THREADS", "2.5")
        reset_settings()
        with pytest.raises(ConfigError, match="NOFX_API_THREADS must be a whole number"):
            importlib.reload(conf)
    finally:
        monkeypatch.undo()
        reset_settings()
        importlib.reload(conf)


def test_a_retry_waits_at_least_what_the_service_asked_for_within_the_cap(monkeypatch):
    from nofx.errors import RetryableToolError
    from nofx.worker.tasks import run_step

    monkeypatch.setenv("NOFX_RETRY_BACKOFF_S", "2")
    monkeypatch.setenv("NOFX_RETRY_BACKOFF_MAX_S", "30")
    reset_settings()
    try:
        asked = RetryableToolError("429", retry_after_s=12)
        greedy = RetryableToolError("429", retry_after_s=3600)
        plain = RetryableToolError("500")
        for _ in range(50):
            assert run_step.backoff(1, asked) == 12
            assert run_step.backoff(1, greedy) == 30  # never past NOFX_RETRY_BACKOFF_MAX_S
            assert 1 <= run_step.backoff(1, plain) <= 2  # jitter over half to all of 2 s
            assert 4 <= run_step.backoff(3, plain) <= 8
    finally:
        monkeypatch.undo()
        reset_settings()


@pytest.mark.parametrize(("model", "dollars"), [
    ("claude-opus-4-5-20251101", 5.0 + 25.0),
    ("claude-opus-4-1-20250805", 15.0 + 75.0),
    ("claude-sonnet-4-5", 3.0 + 15.0),
    ("claude-haiku-4-5", 1.0 + 5.0),
    ("gpt-4o", None),
])
def test_a_call_is_priced_by_its_models_longest_known_prefix(model, dollars):
    from nofx.config import DEFAULT_PRICES
    from nofx.llm.base import cost_usd

    assert cost_usd(DEFAULT_PRICES, model, 1_000_000, 1_000_000) == dollars
