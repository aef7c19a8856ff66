"""SessionSender sends what Session.request sends: compared request by request on a real HTTP server."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omni_erp.hooks.base import RetryPolicy, SessionSender
from omni_erp.hooks.erp import ErpHook
from omni_erp.sandbox.serve import serve_in_thread


async def _echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI app answering every request with what it received; ``/set-cookie`` sets a cookie, ``/redirect/<code>``
    redirects to ``/landed`` with that status."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    headers = [(b"content-type", b"application/json")]
    status = 200
    if path == "/set-cookie":
        headers.append((b"set-cookie", b"erp_session=abc123; Path=/"))
    if path.startswith("/redirect/"):
        status = int(path.rsplit("/", 1)[1])
        headers.append((b"location", b"/landed"))
    seen = {
        "method": scope["method"],
        "path": path,
        "query": scope["query_string"].decode("latin-1"),
        "headers": sorted([k.decode("latin-1").lower(), v.decode("latin-1")] for k, v in scope["headers"]),
        "body": body.decode("latin-1"),
    }
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(seen).encode()})


@pytest.fixture(scope="module")
def echo():
    with serve_in_thread(_echo) as server:
        yield server.url


def _session(**headers: str) -> requests.Session:
    session = requests.Session()
    session.headers.update(headers)
    session.auth = lambda request: request.headers.__setitem__("Authorization", "Bearer t0ken") or request
    return session


def _both(echo: str, method: str, path: str, **kwargs: Any) -> tuple[Any, Any]:
    """The same call through Session.request and through SessionSender, each on a fresh session."""
    plain = _session(Accept="application/json").request(method, echo + path, timeout=5, **kwargs)
    lean = SessionSender(_session(Accept="application/json")).request(method, echo + path, timeout=5, **kwargs)
    return plain, lean


header_values = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "POST", "post"]),
    body=json_values,
    params=st.none() | st.dictionaries(st.sampled_from(["since", "limit", "q"]), st.text(max_size=10), max_size=3),
    key=header_values,
)
def test_the_server_receives_exactly_what_session_request_sends(echo, method, body, params, key):
    plain, lean = _both(echo, method, "/api/v1/sales-orders", json=body, params=params, headers={"Idempotency-Key": key})
    assert plain.status_code == lean.status_code == 200
    assert lean.json() == plain.json()  # method, path, query, every header (auth included) and the body
    assert ["idempotency-key", key] in lean.json()["headers"]


def test_a_header_set_to_none_is_left_out_as_session_request_does(echo):
    plain, lean = _both(echo, "GET", "/x", headers={"Accept": None})
    assert lean.json() == plain.json()
    assert "accept" not in dict(lean.json()["headers"])


def test_cookies_the_remote_sets_are_sent_on_later_calls(echo):
    sender = SessionSender(_session())
    sender.request("GET", echo + "/set-cookie", timeout=5)
    later = sender.request("POST", echo + "/next", json={}, timeout=5)
    assert ["cookie", "erp_session=abc123"] in later.json()["headers"]


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirects_are_followed_as_session_request_follows_them(echo, code):
    plain, lean = _both(echo, "POST", f"/redirect/{code}", json={"a": 1}, headers={"Idempotency-Key": "k"})
    assert lean.json() == plain.json()
    assert lean.json()["path"] == "/landed"
    assert [r.status_code for r in lean.history] == [r.status_code for r in plain.history] == [code]


def test_proxies_from_the_environment_apply_and_no_proxy_is_honoured(echo, monkeypatch):
    # The "proxy" is the echo server: a request for another host reaching it went through the proxy.
    monkeypatch.setenv("HTTP_PROXY", echo)
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    via_proxy = SessionSender(_session()).request("GET", "http://erp.invalid/api", timeout=5)
    assert ["host", "erp.invalid"] in via_proxy.json()["headers"]
    monkeypatch.setenv("NO_PROXY", "erp.invalid")
    with pytest.raises(requests.ConnectionError):  # no proxy for it: the name does not resolve
        SessionSender(_session()).request("GET", "http://erp.invalid/api", timeout=5)


def test_a_session_not_trusting_the_environment_ignores_its_proxies(echo, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    session = _session()
    session.trust_env = False
    assert SessionSender(session).request("GET", echo + "/direct", timeout=5).json()["path"] == "/direct"


def test_the_hook_sends_through_one_sender_per_thread_with_the_connections_token(echo, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_ERP_ECHO", json.dumps({"conn_type": "http", "host": echo, "password": "s3cret-token"}))
    hook = ErpHook("erp_echo", retry_policy=RetryPolicy(max_attempts=1))
    response = hook.call("POST", "/api/v1/sales-orders", operation="t", json={"x": 1}, headers={"Idempotency-Key": "create:A"})
    seen = dict(response.json()["headers"])
    assert seen["authorization"] == "Bearer s3cret-token" and seen["idempotency-key"] == "create:A"
    assert json.loads(response.json()["body"]) == {"x": 1}
    assert hook.sender is hook.sender and hook.sender.session is hook.session
