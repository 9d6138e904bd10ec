"""A real S3 for the tests: moto's server on a loopback port, plus a flaky proxy and IAM users.

Fixtures:
- `s3_server` (session): starts `python -m moto.server`, sets fake AWS credentials and region,
  yields the endpoint URL.
- `s3_client`: a plain boto3 client for that server, to put fixtures in place.
- `s3_bucket`: a fresh, empty bucket's name.
- `flaky_s3`: `flaky_s3(["503", "drop", "cut"])` → a FlakyProxy in front of the server whose
  first connections fail that way (then it passes everything through).
- `restricted_s3_user`: `restricted_s3_user(policy)` → (access key id, secret) of a new IAM user
  holding only `policy`, and turns on moto's IAM enforcement until the test ends (so the fake
  default credentials stop working: put fixtures in place first; several users are fine).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import boto3
import pytest

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_server(timeout_s: float = 60) -> Iterator[str]:
    """Run `python -m moto.server` on a free loopback port; yield its endpoint URL once it answers.
    (Also used by bench/data_path.py.)"""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                               "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"moto server exited with code {server.returncode}")
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto server at {endpoint} did not answer within "
                                       f"{timeout_s} s") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server():
    with pytest.MonkeyPatch.context() as env:
        for name, value in FAKE_CREDENTIALS.items():
            env.setenv(name, value)
        env.delenv("AWS_PROFILE", raising=False)
        with moto_server() as endpoint:
            yield endpoint


@pytest.fixture
def s3_client(s3_server):
    return boto3.client("s3", endpoint_url=s3_server)


@pytest.fixture
def s3_bucket(s3_client) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


class FlakyProxy:
    """A loopback TCP proxy in front of the S3 server. Connection k (from 0) fails as
    `failures[k]` says: "503" answers 503 Service Unavailable, "drop" closes without answering,
    "cut" forwards the request and then sends only half of the response, "pass" (and every
    connection after the list) passes through. moto closes each connection after one response,
    so connection k carries request k. `connections` counts the connections made."""

    def __init__(self, upstream: str, failures: list[str]):
        self.upstream = upstream.removeprefix("http://").split(":")
        self.failures = list(failures)
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                return
            with self._lock:
                mode = self.failures[self.connections] if self.connections < len(
                    self.failures) else "pass"
                self.connections += 1
            threading.Thread(target=self._handle, args=(conn, mode), daemon=True).start()

    def _connect_upstream(self) -> socket.socket:
        host, port = self.upstream
        return socket.create_connection((host, int(port)))

    def _handle(self, conn: socket.socket, mode: str) -> None:
        with conn:
            if mode == "pass":
                with self._connect_upstream() as upstream:
                    back = threading.Thread(target=_pipe, args=(upstream, conn), daemon=True)
                    back.start()
                    _pipe(conn, upstream)
                    back.join()
                return
            request = _read_until(conn, b"\r\n\r\n")
            if mode == "503":
                conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
            elif mode == "cut":
                with self._connect_upstream() as upstream:
                    upstream.sendall(request)
                    response = _read_until(upstream, b"\r\n\r\n")
                    head, _, body = response.partition(b"\r\n\r\n")
                    conn.sendall(head + b"\r\n\r\n" + body[:len(body) // 2])
            # "drop": close without a word


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        data += chunk
    return data


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(1 << 16):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


@pytest.fixture
def flaky_s3(s3_server):
    proxies: list[FlakyProxy] = []

    def make(failures: list[str]) -> FlakyProxy:
        proxies.append(FlakyProxy(s3_server, failures))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()


def set_auth(endpoint: str, after_actions: str) -> None:
    """moto's switch: enforce IAM after this many more requests ("inf": never)."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth",
                                     data=after_actions.encode(), method="POST",
                                     headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10):
        pass


@pytest.fixture
def restricted_s3_user(s3_server):
    iam = boto3.client("iam", endpoint_url=s3_server)

    def make(policy: dict) -> tuple[str, str]:
        set_auth(s3_server, "inf")  # a second user is created with the unchecked credentials
        user = f"user-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="only", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        set_auth(s3_server, "0")
        return key["AccessKeyId"], key["SecretAccessKey"]

    yield make
    set_auth(s3_server, "inf")
