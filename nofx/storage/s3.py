"""Artifacts in S3 or MinIO through the minio SDK."""

from __future__ import annotations

import io
import threading

from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error
from urllib3.exceptions import HTTPError

from nofx.errors import NotFound, StorageError
from nofx.storage.base import StoredObject, describe


class S3Storage:
    """Stores each artifact as one object in ``bucket`` under ``prefix``; makes the bucket."""

    def __init__(self, client: Minio, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._lock = threading.Lock()

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _make_bucket(self) -> None:
        with self._lock:
            try:
                self.client.make_bucket(self.bucket)
            except S3Error as exc:
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def put(self, key: str, data: bytes, content_type: str) -> StoredObject:
        """Upload ``data`` under ``key``; the bucket is made the first time it is missing.

        No ``bucket_exists`` first: a least-privilege policy (objects only, the usual one
        in production) refuses HeadBucket, and every put would fail on it.
        """
        try:
            try:
                self._put(key, data, content_type)
            except S3Error as exc:
                if exc.code != "NoSuchBucket":
                    raise
                self._make_bucket()
                self._put(key, data, content_type)
        except (MinioException, HTTPError, OSError) as exc:
            raise StorageError(f"could not store artifact {key} in s3://{self.bucket}: {exc}") from exc
        return describe(key, data)

    def _put(self, key: str, data: bytes, content_type: str) -> None:
        self.client.put_object(
            self.bucket, self._key(key), io.BytesIO(data), len(data), content_type=content_type
        )

    def get(self, key: str) -> bytes:
        """Download the bytes under ``key``."""
        response = None
        try:
            response = self.client.get_object(self.bucket, self._key(key))
            return response.read()
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                raise NotFound(f"artifact bytes missing from the store: {key}") from exc
            raise StorageError(f"could not read artifact {key}: {exc}") from exc
        except (MinioException, HTTPError, OSError) as exc:
            raise StorageError(f"could not read artifact {key}: {exc}") from exc
        finally:
            if response is not None:
                response.close()
                response.release_conn()

    def remove_prefix(self, prefix: str) -> int:
        """Remove every object under ``prefix`` (listed, then deleted in batches of 1,000)."""
        try:
            names = [o.object_name for o in self.client.list_objects(
                self.bucket, prefix=self._key(prefix), recursive=True) if o.object_name]
            for start in range(0, len(names), 1000):
                failed = list(self.client.remove_objects(  # lazy: read it, or nothing happens
                    self.bucket, [DeleteObject(n) for n in names[start:start + 1000]]))
                if failed:
                    raise StorageError(f"could not remove {len(failed)} objects under "
                                       f"{prefix}: {failed[0]}")
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                return 0
            raise StorageError(f"could not remove artifacts under {prefix}: {exc}") from exc
        except (MinioException, HTTPError, OSError) as exc:
            raise StorageError(f"could not remove artifacts under {prefix}: {exc}") from exc
        return len(names)

    def check(self) -> None:
        """Raise unless the endpoint answers (the bucket may not exist yet). A refusal is
        an answer: a least-privilege policy allows objects, not HeadBucket."""
        try:
            self.client.bucket_exists(self.bucket)
        except S3Error as exc:
            if exc.code not in ("AccessDenied", "Forbidden"):
                raise
