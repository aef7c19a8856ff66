"""``POST /omni/postings`` skips FastAPI's routing and middleware (``InboxApp``); its answers must not change.

Every request here is sent twice to a really served standalone inbox: once on the direct path, once
with the direct path switched off, so FastAPI routes it to the same endpoint as before. Status, body
and headers (all but the date) must be the same, on a fresh ledger each, for every kind of answer.
"""

from __future__ import annotations

import json

import pytest
import requests

from omni_erp.inbox import InboxSettings, build_standalone_app
from omni_erp.ledger import Ledger
from omni_erp.ledger.engine import sqlite_url
from omni_erp.sandbox.serve import serve_in_thread
from tests.inbox.conftest import API_KEY, sample

JSON = {"Content-Type": "application/json"}
POSTING = sample("outward_order_create.json")
OTHER_CONTENT = {**POSTING, "orderItems": POSTING["orderItems"][:1]}

# (what, body, headers): sent in this order, so the same messageId comes again with equal or other content.
REQUESTS = [
    ("accepted", json.dumps(POSTING), {**JSON, "X-Api-Key": API_KEY}),
    ("duplicate", json.dumps(POSTING), {**JSON, "X-Api-Key": API_KEY}),
    ("conflict", json.dumps(OTHER_CONTENT), {**JSON, "X-Api-Key": API_KEY}),
    ("no key", json.dumps(POSTING), JSON),
    ("wrong key", json.dumps(POSTING), {**JSON, "X-Api-Key": "not-the-key"}),
    ("not JSON media type", json.dumps(POSTING), {"Content-Type": "text/plain", "X-Api-Key": API_KEY}),
    ("malformed", '{"messageId": ', {**JSON, "X-Api-Key": API_KEY}),
    ("duplicate key", '{"messageId": "1", "messageId": "2"}', {**JSON, "X-Api-Key": API_KEY}),
    ("invalid", json.dumps({**POSTING, "messageId": "m-9", "orderItems": None}), {**JSON, "X-Api-Key": API_KEY}),
    ("too large", "x" * (1024 * 1024 + 1), {**JSON, "X-Api-Key": API_KEY}),
]


def _answers(ledger_url: str, *, direct: bool) -> list[tuple[str, int, str, dict[str, str]]]:
    app = build_standalone_app(InboxSettings(api_key=API_KEY, ledger_url=ledger_url))
    if not direct:
        app.postings_endpoint = None  # FastAPI routes the request: Mount, Route, middleware, as before
    answers = []
    with serve_in_thread(app, "127.0.0.1", 0) as server, requests.Session() as session:
        for what, body, headers in REQUESTS:
            response = session.post(f"{server.url}/omni/postings", data=body, headers=headers, timeout=30)
            answers.append((what, response.status_code, response.text, _headers(response)))
    return answers


def _headers(response: requests.Response) -> dict[str, str]:
    return {name.lower(): value for name, value in response.headers.items() if name.lower() != "date"}


def test_the_direct_path_answers_exactly_as_fastapi_routing_did(tmp_path):
    direct = _answers(sqlite_url(tmp_path / "direct.sqlite"), direct=True)
    routed = _answers(sqlite_url(tmp_path / "routed.sqlite"), direct=False)

    assert direct == routed
    assert [status for _, status, _, _ in direct] == [200, 200, 409, 401, 401, 415, 400, 400, 400, 413]
    assert len(Ledger(sqlite_url(tmp_path / "direct.sqlite")).postings()) == 1


@pytest.mark.parametrize("direct", [True, False])
def test_an_unexpected_failure_is_a_500_in_increff_shape_and_reaches_the_server_log(sqlite_ledger_url, direct, capfd):
    # A setting of the wrong type fails in the middle of the endpoint, where no refusal handles it.
    app = build_standalone_app(InboxSettings(api_key=API_KEY, ledger_url=sqlite_ledger_url, max_body_bytes=None))
    if not direct:
        app.postings_endpoint = None
    with serve_in_thread(app, "127.0.0.1", 0) as server:
        response = requests.post(
            f"{server.url}/omni/postings", data=json.dumps(POSTING), headers={**JSON, "X-Api-Key": API_KEY}, timeout=30
        )

    assert response.status_code == 500
    assert response.json() == {"hasError": True, "errorMessage": "internal error in the inbox"}
    logged = capfd.readouterr().err
    assert "Exception in ASGI application" in logged and "TypeError" in logged  # re-raised: the server logs it
    assert Ledger(sqlite_ledger_url).postings() == []


def test_other_routes_and_methods_still_go_through_fastapi(sqlite_ledger_url):
    app = build_standalone_app(InboxSettings(api_key=API_KEY, ledger_url=sqlite_ledger_url))
    with serve_in_thread(app, "127.0.0.1", 0) as server:
        put = requests.put(f"{server.url}/omni/postings", data="{}", headers={**JSON, "X-Api-Key": API_KEY}, timeout=30)
        health = requests.get(f"{server.url}/omni/health", timeout=30)

    assert put.status_code == 405 and put.json()["hasError"] is True
    assert health.json() == {"status": "ok"}
