"""A step's two Celery time limits: the soft one ends it ``timed_out``; the hard one kills."""

from __future__ import annotations

import pytest

from nofx.services.dispatch import MIN_LIMIT_GAP_S, time_limits


@pytest.mark.parametrize(("timeout_s", "soft", "hard"), [
    (0.5, 0.45, 3.45),   # short: the hard limit waits for the soft one to be seen
    (5, 4.5, 7.5),
    (20, 18, 21),
    (60, 54, 60),        # long enough: the hard limit is timeout_s
    (600, 570, 600),     # at most 30 s between them
    (86_400, 86_370, 86_400),
])
def test_the_soft_limit_comes_first_and_the_hard_one_late_enough_to_find_it_alone(
        timeout_s, soft, hard):
    limits = time_limits(timeout_s)
    assert limits["soft_time_limit"] == pytest.approx(soft)
    assert limits["time_limit"] == pytest.approx(hard)
    assert limits["time_limit"] - limits["soft_time_limit"] >= MIN_LIMIT_GAP_S - 1e-9
