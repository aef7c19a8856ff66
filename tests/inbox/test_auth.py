"""Nobody but Omni gets in: every route refuses missing or wrong credentials, fails closed, logs no secret."""

from __future__ import annotations

import json
import logging

import airflow  # noqa: F401  (Airflow resets logging on import: do it now, not mid-test under caplog)
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.routing import Route

from omni_erp.inbox import InboxSettings, create_inbox_app
from omni_erp.inbox.auth import AuthRefused, Caller, ConnectionAuthSource, InboxAuth, authenticate
from omni_erp.inbox.credentials import DynamicCredentials
from omni_erp.ledger import Ledger
from omni_erp.ledger.engine import SCHEMA_VERSION
from tests.inbox.conftest import API_KEY, FIXTURES

DYNAMIC = DynamicCredentials(username="omni", password="login-pass-Rt5", token_secret="auth-test-secret-0123456789abcdef")
GUESS = "attacker-guess-Vb81"
BODY = (FIXTURES / "outward_order_create.json").read_bytes()
JSON = {"Content-Type": "application/json"}


def inbox(ledger_url: str, **overrides) -> TestClient:
    return TestClient(
        create_inbox_app(InboxSettings(**{"api_key": API_KEY, "dynamic_credentials": DYNAMIC, "ledger_url": ledger_url, **overrides}))
    )


def routes(client: TestClient) -> list[tuple[str, str]]:
    return sorted((method, route.path) for route in client.app.routes if isinstance(route, Route) for method in route.methods)


def call(client: TestClient, method: str, path: str, headers: dict[str, str]):
    return client.request(method, path, content=BODY if method == "POST" else None, headers={**JSON, **headers})


BAD_CREDENTIALS = {
    "none": {},
    "wrong-key": {"X-Api-Key": GUESS},
    "empty-key": {"X-Api-Key": ""},
    "garbage-token": {"Authorization": f"Bearer {GUESS}"},
    "other-scheme": {"Authorization": f"Basic {GUESS}"},
    "forged-token": {"Authorization": "Bearer " + DynamicCredentials("omni", "x", "another-secret-0123456789abcdefgh").issue()},
    "wrong-login": {"authUsername": "omni", "authPassword": GUESS},
}


@pytest.mark.parametrize("credentials", BAD_CREDENTIALS.values(), ids=BAD_CREDENTIALS.keys())
def test_every_route_refuses_missing_or_wrong_credentials_and_nothing_is_stored(sqlite_ledger_url, credentials):
    client = inbox(sqlite_ledger_url)
    assert routes(client) == [("GET", "/health"), ("GET", "/postings"), ("POST", "/postings")]

    answers = {(method, path): call(client, method, path, credentials) for method, path in routes(client)}

    for (method, path), response in answers.items():
        public_liveness = (method, path) == ("GET", "/health") and not (
            credentials.get("X-Api-Key") or credentials.get("Authorization")
        )
        if public_liveness:
            assert response.status_code == 200 and response.json() == {"status": "ok"}, "liveness carries no details"
        else:
            assert response.status_code == 401, (method, path)
            assert response.json()["hasError"] is True and GUESS not in response.text
    ledger = Ledger(sqlite_ledger_url)
    assert ledger.postings() == [] and ledger.dead_letters() == []


def test_a_refusal_is_logged_with_route_client_and_header_lengths_never_the_value(sqlite_ledger_url, caplog):
    client = inbox(sqlite_ledger_url)
    caplog.set_level(logging.DEBUG)

    client.post("/postings", content=BODY, headers={**JSON, "X-Api-Key": GUESS})
    client.get("/postings", headers={"authUsername": "omni", "authPassword": GUESS})

    refusals = [r.getMessage() for r in caplog.records if r.name == "omni_erp.inbox.auth" and r.levelno == logging.WARNING]
    assert refusals == [
        f"inbox: refused POST /postings from testclient: wrong API key; credential headers: X-Api-Key ({len(GUESS)} chars)",
        "inbox: refused GET /postings from testclient: wrong login for Get Credential; credential headers: "
        f"authUsername (4 chars), authPassword ({len(GUESS)} chars)",
    ]
    assert GUESS not in caplog.text and API_KEY not in caplog.text and DYNAMIC.password not in caplog.text


@pytest.mark.parametrize("credentials", [{}, {"X-Api-Key": API_KEY}], ids=["without", "with-a-key"])
def test_an_inbox_with_no_credentials_configured_refuses_everything_but_bare_liveness(sqlite_ledger_url, credentials):
    client = inbox(sqlite_ledger_url, api_key=lambda: None, dynamic_credentials=None)

    answers = {(method, path): call(client, method, path, credentials) for method, path in routes(client)}

    for (method, path), response in answers.items():
        if (method, path) == ("GET", "/health") and not credentials:
            assert response.json() == {"status": "ok"}
        else:
            assert response.status_code == 503 and "not configured" in response.json()["errorMessage"], (method, path)
    assert Ledger(sqlite_ledger_url).postings() == []


def test_a_badly_configured_inbox_connection_fails_closed_and_names_the_key(sqlite_ledger_url, monkeypatch, caplog):
    extra = {"credential_username": "omni", "credential_password": "login-pass-Rt5", "token_secret": "too-short"}
    monkeypatch.setenv("AIRFLOW_CONN_OMNI_INBOX", json.dumps({"conn_type": "generic", "password": API_KEY, "extra": extra}))
    source = ConnectionAuthSource()
    client = inbox(sqlite_ledger_url, api_key=source.api_key, dynamic_credentials=source.dynamic_credentials)
    caplog.set_level(logging.INFO)

    response = client.post("/postings", content=BODY, headers={**JSON, "X-Api-Key": API_KEY})

    assert response.status_code == 503 and response.json()["errorMessage"] == "inbox is misconfigured; retry later"
    assert "token_secret must be at least 32 characters" in caplog.text and "too-short" not in caplog.text


def test_dynamic_only_inbox_answers_401_so_omni_starts_the_handshake(sqlite_ledger_url):
    client = inbox(sqlite_ledger_url, api_key=None)

    refused = client.post("/postings", content=BODY, headers={**JSON, "X-Api-Key": API_KEY})
    token_headers = client.get("/postings", headers={"authUsername": "omni", "authPassword": DYNAMIC.password}).json()
    stored = client.post("/postings", content=BODY, headers={**JSON, **token_headers})

    assert refused.status_code == 401 and "Authorization" in refused.json()["errorMessage"]
    assert stored.status_code == 200


# --- health ------------------------------------------------------------------------------------


def test_authenticated_health_names_backend_identity_schema_and_auth_methods(sqlite_ledger_url):
    client = inbox(sqlite_ledger_url)
    token_headers = client.get("/postings", headers={"authUsername": "omni", "authPassword": DYNAMIC.password}).json()

    by_key = client.get("/health", headers={"X-Api-Key": API_KEY})
    by_token = client.get("/health", headers=token_headers)

    assert by_key.status_code == 200 and by_key.json() == by_token.json()
    assert by_key.json() == {
        "status": "ok",
        "ledger": {
            "backend": "sqlite",
            "identity": Ledger(sqlite_ledger_url).identity,
            "schemaVersion": SCHEMA_VERSION,
            "location": sqlite_ledger_url,
            "embeddedFallback": False,
        },
        "auth": {"staticKey": True, "dynamicCredentials": True},
    }


# --- the decision itself -----------------------------------------------------------------------

keys = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(configured=keys, presented=keys)
def test_a_static_key_is_accepted_exactly_when_it_equals_the_configured_one(configured, presented):
    caller = Caller(route="POST /postings", client="127.0.0.1")
    try:
        method = authenticate({"X-Api-Key": presented}, InboxAuth(api_key=configured), caller)
    except AuthRefused as refused:
        assert presented != configured and refused.status == 401
    else:
        assert presented == configured and method == "api_key"
