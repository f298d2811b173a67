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

    def check(self) -> None:
        """Raise if the store does not answer."""


def artifact_key(run_id: str, step_id: str, name: str) -> str:
    """Where a step's artifact lives: ``runs/{run}/steps/{step}/{name}``."""
    return f"runs/{run_id}/steps/{step_id}/{name}"


def describe(key: str, data: bytes) -> StoredObject:
    """The size and checksum of ``data`` stored under ``key``."""
    return StoredObject(key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest())
