"""Artifacts as files under one directory: the default, needing no server."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from nofx.errors import NotFound, StorageError
from nofx.storage.base import StoredObject, describe


class FileStorage:
    """Stores each artifact as a file; writes are atomic (temp file, then rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if ".." in key.split("/") or self.root not in path.parents:
            raise StorageError(f"artifact key escapes the store: {key!r}")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> StoredObject:
        """Write ``data`` under ``key``."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise StorageError(f"could not write artifact {key}: {exc}") from exc
        return describe(key, data)

    def get(self, key: str) -> bytes:
        """Read the bytes under ``key``."""
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"artifact bytes missing from the store: {key}") from exc
        except OSError as exc:
            raise StorageError(f"could not read artifact {key}: {exc}") from exc

    def remove_prefix(self, prefix: str) -> int:
        """Remove the files under the folder ``prefix`` names (``runs/{run_id}/``)."""
        folder = self._path(prefix.rstrip("/"))
        if not folder.is_dir():
            return 0
        removed = 0
        try:
            for path in sorted(folder.rglob("*"), reverse=True):  # files before their folders
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()
                else:
                    path.unlink()
                    removed += 1
            folder.rmdir()
        except OSError as exc:
            raise StorageError(f"could not remove artifacts under {prefix}: {exc}") from exc
        return removed

    def check(self) -> None:
        """Raise unless the directory exists (or can be made) and is writable."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"artifact directory is not writable: {self.root}")

    def path_of(self, key: str) -> Path:
        """The file behind ``key`` (for people: `nofx dev` prints it)."""
        return self._path(key)
