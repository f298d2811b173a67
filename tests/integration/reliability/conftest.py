"""Fixtures for crash tests: private stacks on Redis or RabbitMQ."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import AMQP_URL, REDIS_URL
from tests.support.stack import Stack

BROKERS = {"redis": REDIS_URL, "rabbitmq": AMQP_URL}


@pytest.fixture()
def make_stack(stack_env: dict[str, str], logs_dir: Path) -> Iterator[Callable[..., Stack]]:
    """Build private stacks; all are stopped when the test ends."""
    stacks: list[Stack] = []

    def _make(broker_url: str) -> Stack:
        stack = Stack(stack_env, logs_dir, broker_url)
        stacks.append(stack)
        return stack

    yield _make
    for stack in stacks:
        stack.stop()


@pytest.fixture(params=sorted(BROKERS), ids=sorted(BROKERS))
def broker_url(request: pytest.FixtureRequest) -> str:
    """Each crash test runs once on Redis and once on RabbitMQ."""
    return BROKERS[request.param]
