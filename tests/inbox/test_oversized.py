"""Oversized postings against the really served inbox: refused early, in Increff's shape, with flat memory."""

from __future__ import annotations

import gc
import json
import socket
import time

import psutil
import pytest

from omni_erp.inbox import InboxSettings, build_standalone_app
from omni_erp.inbox.app import MAX_BODY_BYTES
from omni_erp.ledger import Ledger
from omni_erp.sandbox.serve import serve_in_thread
from tests.inbox.conftest import API_KEY

HEADERS = f"POST /omni/postings HTTP/1.1\r\nHost: inbox\r\nX-Api-Key: {API_KEY}\r\nContent-Type: application/json\r\n"
CHUNK = 64 * 1024
CHUNK_FRAME = f"{CHUNK:x}\r\n".encode() + b"x" * CHUNK + b"\r\n"


def _response(sock: socket.socket) -> tuple[int, dict]:
    """Read one HTTP response (uvicorn always sends Content-Length) and return its status and JSON body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += _recv(sock)
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += _recv(sock)
    return int(head.split(b" ", 2)[1]), json.loads(body)


def _recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("the inbox closed the connection before answering")
    return chunk


def post_declared_oversized(port: int) -> tuple[int, dict]:
    """Announce 5 MiB but send only 1 KiB: an answer at all proves the body was not waited for."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"{HEADERS}Content-Length: {5 * MAX_BODY_BYTES}\r\n\r\n".encode() + b"{" + b" " * 1023)
        return _response(sock)


def post_streamed_oversized(port: int) -> tuple[int, dict]:
    """Stream just over the limit without a Content-Length (chunked), as a client that does not know the size."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"{HEADERS}Transfer-Encoding: chunked\r\n\r\n".encode())
        for _ in range(MAX_BODY_BYTES // CHUNK + 1):
            sock.sendall(CHUNK_FRAME)
        sock.sendall(b"0\r\n\r\n")
        return _response(sock)


@pytest.fixture()
def served_inbox(sqlite_ledger_url):
    app = build_standalone_app(InboxSettings(api_key=API_KEY, ledger_url=sqlite_ledger_url))
    with serve_in_thread(app) as server:
        yield int(server.url.rsplit(":", 1)[1]), Ledger(sqlite_ledger_url)


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def test_a_declared_oversized_body_is_refused_before_it_is_sent(served_inbox):
    port, ledger = served_inbox
    started = time.monotonic()

    status, body = post_declared_oversized(port)

    assert (status, body) == (413, {"hasError": True, "errorMessage": f"posting larger than {MAX_BODY_BYTES} bytes"})
    assert time.monotonic() - started < 5  # the other 5 MiB were never sent, so nothing was read or waited for
    assert ledger.postings() == []
    [dead] = ledger.dead_letters("inbox")
    assert dead["payload"] is None and "larger than" in dead["reason"]


def test_memory_stays_flat_under_hundreds_of_oversized_bodies(served_inbox):
    port, ledger = served_inbox
    send = [post_declared_oversized, post_streamed_oversized]
    for n in range(20):  # warm up: threads, buffers, the ledger's engine
        send[n % 2](port)
    before = _rss()

    answers = [send[n % 2](port) for n in range(300)]

    growth_mib = (_rss() - before) / 2**20
    assert {status for status, _ in answers} == {413}
    assert all(body["hasError"] is True and "larger than" in body["errorMessage"] for _, body in answers)
    # 150 streamed bodies of 1 MiB each: any body held after its answer would show as 100+ MiB.
    assert growth_mib < 16, f"RSS grew by {growth_mib:.1f} MiB over 300 oversized postings"
    assert ledger.postings() == []
    assert len(ledger.dead_letters("inbox")) == 2  # identical rejections are recorded once (the ledger dedupes them)
