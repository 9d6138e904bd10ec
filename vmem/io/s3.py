"""`s3://` URLs through boto3: byte-range reads, listing, transfers, bounded retries, clear errors.

boto3's own retries are switched off so that the ones here are the only ones: `RETRIES` extra
tries with exponential backoff (from `BACKOFF_S`, jittered, capped at `MAX_BACKOFF_S`) on
throttling, 5xx, timeouts and dropped connections. Both can be set with the environment variables
VMEM_S3_RETRIES and VMEM_S3_BACKOFF_S, or by assigning the module attributes. Missing buckets or
keys and denied access become a VmemError naming the s3:// URL at once.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable
from typing import TypeVar

import boto3
import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from vmem.errors import VmemError
from vmem.io.atomic import atomic_path

RETRIES = int(os.environ.get("VMEM_S3_RETRIES", "8"))
BACKOFF_S = float(os.environ.get("VMEM_S3_BACKOFF_S", "0.25"))
MAX_BACKOFF_S = 30.0
CHUNK_BYTES = 8 << 20  # streaming read size for downloads

_URL = re.compile(r"^s3://(?P<bucket>[^/\s]+)(?:/(?P<key>.*))?$")
_MISSING = {"NoSuchBucket", "NoSuchKey", "NotFound", "404"}
_DENIED = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
           "AllAccessDisabled", "AccountProblem"}
_TRANSIENT = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
              "TooManyRequests", "RequestTimeout", "RequestTimeoutException", "InternalError",
              "ServiceUnavailable", "BadDigest"}
_DROPPED = (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError,
            IncompleteReadError, ResponseStreamingError)

_LOADER = botocore.loaders.create_loader()

T = TypeVar("T")


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/key` → ("bucket", "some/key"); the key may be empty."""
    match = _URL.match(str(url))
    if not match:
        raise VmemError(f"{url}: not an S3 URL (expected s3://bucket/key)")
    return match.group("bucket"), match.group("key") or ""


def s3_url(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def client(endpoint: str | None = None):
    """A boto3 S3 client for `endpoint` (default: $AWS_ENDPOINT_URL, else AWS itself)."""
    config = Config(retries={"mode": "standard", "total_max_attempts": 1},  # ours retry
                    connect_timeout=10, read_timeout=60, max_pool_connections=32)
    # A session of its own looks the credentials up now instead of reusing an earlier client's;
    # sharing the loader keeps it cheap (the service models are parsed once per process).
    session = botocore.session.Session()
    session.register_component("data_loader", _LOADER)
    url = endpoint or os.environ.get("AWS_ENDPOINT_URL")
    try:
        return boto3.session.Session(botocore_session=session).client(
            "s3", endpoint_url=url, config=config)
    except ValueError as err:  # botocore's "Invalid endpoint: ..."
        raise VmemError(f"--s3-endpoint {url}: not a usable endpoint URL ({err}); expected "
                        f"e.g. https://host:port") from None


def _retrying(url: str, action: Callable[[], T]) -> T:
    """Run `action`, retrying transient failures; turn every failure into a VmemError."""
    for attempt in range(RETRIES + 1):
        try:
            return action()
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in _MISSING or status == 404:
                what = "bucket" if code == "NoSuchBucket" else "object"
                raise VmemError(f"{url}: no such {what} ({code or status})") from None
            if code in _DENIED or status == 403:
                raise VmemError(f"{url}: access denied ({code or status}); check the "
                                f"credentials and the bucket policy") from None
            if not (code in _TRANSIENT or status >= 500 or status == 429) or attempt == RETRIES:
                raise VmemError(f"{url}: S3 request failed after {attempt + 1} tries: "
                                f"{code or status} {err}") from None
        except NoCredentialsError:
            raise VmemError(f"{url}: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
                            f"AWS_SECRET_ACCESS_KEY, or a profile)") from None
        except _DROPPED as err:
            if attempt == RETRIES:
                raise VmemError(f"{url}: S3 connection failed after {attempt + 1} tries: "
                                f"{err}") from None
        except BotoCoreError as err:  # e.g. a malformed endpoint URL: not worth retrying
            raise VmemError(f"{url}: {err}") from None
        time.sleep(min(MAX_BACKOFF_S, BACKOFF_S * 2**attempt) * random.uniform(0.5, 1.0))
    raise AssertionError("unreachable")


def get_range(client, bucket: str, key: str, start: int, stop: int) -> bytes:
    """Bytes [start, stop) of the object, in one ranged GET (a short body is retried)."""
    if stop <= start:
        return b""

    def get() -> bytes:
        body = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{stop - 1}")
        data = body["Body"].read()
        if len(data) != stop - start:
            raise IncompleteReadError(actual_bytes=len(data), expected_bytes=stop - start)
        return data

    return _retrying(s3_url(bucket, key), get)


def list_objects(client, bucket: str, prefix: str, *, recursive: bool = True) -> dict[str, int]:
    """Key → size of the objects under `prefix` (only its direct children if not recursive)."""
    sizes: dict[str, int] = {}
    token = None
    while True:
        kwargs = {"Bucket": bucket, "Prefix": prefix}
        if not recursive:
            kwargs["Delimiter"] = "/"
        if token:
            kwargs["ContinuationToken"] = token
        page = _retrying(s3_url(bucket, prefix), lambda kw=kwargs: client.list_objects_v2(**kw))
        sizes.update((obj["Key"], obj["Size"]) for obj in page.get("Contents", []))
        if not page.get("IsTruncated"):
            return sizes
        token = page["NextContinuationToken"]


def get_bytes(client, bucket: str, key: str) -> bytes:
    return _retrying(s3_url(bucket, key),
                     lambda: client.get_object(Bucket=bucket, Key=key)["Body"].read())


def put_bytes(client, bucket: str, key: str, data: bytes) -> None:
    _retrying(s3_url(bucket, key), lambda: client.put_object(Bucket=bucket, Key=key, Body=data))


def upload_file(client, path: str | os.PathLike, bucket: str, key: str) -> None:
    """Upload a local file in one PUT (S3 allows up to 5 GB; vmem's outputs are far smaller)."""

    def put() -> None:
        with open(path, "rb") as f:
            client.put_object(Bucket=bucket, Key=key, Body=f)

    _retrying(s3_url(bucket, key), put)


def download_file(client, bucket: str, key: str, path: str | os.PathLike) -> None:
    """Stream the object to `path`, which appears only once the download is complete."""

    def get() -> None:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            for chunk in body.iter_chunks(CHUNK_BYTES):
                f.write(chunk)

    _retrying(s3_url(bucket, key), get)


def delete_key(client, bucket: str, key: str) -> None:
    _retrying(s3_url(bucket, key), lambda: client.delete_object(Bucket=bucket, Key=key))
