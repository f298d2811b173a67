"""A prefork child's soft time limit, in the test's own process."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def soft_time_limit_in(seconds: float) -> Iterator[None]:
    """Raise Celery's SoftTimeLimitExceeded from a signal handler ``seconds`` into the block,
    wherever the code then is (as a prefork child's soft time limit does)."""
    from celery.exceptions import SoftTimeLimitExceeded

    def _limit(signum: int, frame: object) -> None:
        raise SoftTimeLimitExceeded()

    previous = signal.signal(signal.SIGALRM, _limit)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
