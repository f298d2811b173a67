"""Artifact storage: a small port with a filesystem and an S3/MinIO adapter."""

from nofx.storage.base import Storage, StoredObject, artifact_key

__all__ = ["Storage", "StoredObject", "artifact_key"]
