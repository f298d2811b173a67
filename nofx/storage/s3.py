"""Artifacts in S3 or MinIO through the minio SDK."""

from __future__ import annotations

import io
import threading

from minio import Minio
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
        self._bucket_ready = False
        self._lock = threading.Lock()

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _ensure_bucket(self) -> None:
        with self._lock:
            if not self._bucket_ready:
                if not self.client.bucket_exists(self.bucket):
                    try:
                        self.client.make_bucket(self.bucket)
                    except S3Error as exc:
                        if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                            raise
                self._bucket_ready = True

    def put(self, key: str, data: bytes, content_type: str) -> StoredObject:
        """Upload ``data`` under ``key``."""
        try:
            self._ensure_bucket()
            self.client.put_object(
                self.bucket, self._key(key), io.BytesIO(data), len(data), content_type=content_type
            )
        except (MinioException, HTTPError, OSError) as exc:
            raise StorageError(f"could not store artifact {key} in s3://{self.bucket}: {exc}") from exc
        return describe(key, data)

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

    def check(self) -> None:
        """Raise unless the endpoint answers (the bucket may not exist yet)."""
        self.client.bucket_exists(self.bucket)
