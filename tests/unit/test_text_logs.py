"""``NOFX_LOG_FORMAT=text``: the same facts as a JSON line, for people at a terminal."""

from __future__ import annotations

import logging
import os
import re

from nofx.logs import TextFormatter, bind


def line(message: str, **extra: object) -> str:
    record = logging.LogRecord("nofx.services.reaper", logging.WARNING, __file__, 1, message,
                               (), None)
    record.__dict__.update(extra)
    return TextFormatter().format(record)


def test_a_text_line_has_its_time_level_context_and_every_field(monkeypatch):
    bind(run_id="run-1", step_id="step-1")
    try:
        text = line("stuck step requeued", action="requeued", age_s=41.5,
                    reason="heartbeat lost", usage={"input_tokens": 3})
    finally:
        bind(run_id=None, step_id=None)
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} W nofx\.services\.reaper: "
                    r"stuck step requeued ", text), text
    for field in (f"pid={os.getpid()}", "run_id=run-1", "step_id=step-1", "action=requeued", "age_s=41.5",
                  'reason="heartbeat lost"', 'usage={"input_tokens": 3}'):
        assert field in text, (field, text)


def test_a_text_line_masks_secrets_and_stays_one_line():
    text = line("calling with sk-ant-abcdef0123456789\n  forged line", header="Bearer abc.def",
                error="two\nlines")
    assert "sk-ant-abcdef0123456789" not in text and "abc.def" not in text
    assert "\n" not in text and "\\n  forged line" in text and 'error="two\\nlines"' in text
