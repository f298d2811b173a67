"""The storage port: put bytes under a key, get them back, say whether the store answers."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class StoredObject:
    """Where bytes went and what they were."""

    key: str
    size: int
    sha256: str


class Storage(Protocol):
    """What NOFX asks of an artifact store."""

    def put(self, key: str, data: bytes, content_type: str) -> StoredObject: ...

    def get(self, key: str) -> bytes: ...

    def remove_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with ``prefix``; how many there were."""
        ...

    def check(self) -> None:
        """Raise if the store does not answer."""


def artifact_key(run_id: str, step_id: str, attempt: int, name: str) -> str:
    """Where an attempt's artifact lives: ``runs/{run}/steps/{step}/{attempt}/{name}``.

    Per attempt: an attempt that lost its step (reaped while it still ran) stores its bytes
    before it learns so, and must not overwrite those of the attempt that won, whose size
    and checksum are recorded.
    """
    return f"runs/{run_id}/steps/{step_id}/{attempt}/{name}"


def describe(key: str, data: bytes) -> StoredObject:
    """The size and checksum of ``data`` stored under ``key``."""
    return StoredObject(key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest())
