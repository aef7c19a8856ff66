"""Increff's dynamic credentials: the tokens, and the whole handshake as Omni runs it against a served inbox."""

from __future__ import annotations

import json
import logging
import string
from typing import Any

import airflow  # noqa: F401  (Airflow resets logging on import: do it now, not mid-test under caplog)
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_erp.inbox import InboxSettings, build_standalone_app
from omni_erp.inbox.credentials import DynamicCredentials, bearer_token
from omni_erp.ledger import Ledger
from omni_erp.sandbox.serve import serve_in_thread
from tests.inbox.conftest import API_KEY, FIXTURES

OMNI_USERNAME = "increff-omni-caller"
OMNI_PASSWORD = "get-credential-pass-Qw3!"
TOKEN_SECRET = "token-signing-secret-0123456789-abcdef"
LIFETIME_S = 900
T0 = 1_800_000_000


class Clock:
    """Wall clock the inbox dates its tokens with; tests move it instead of sleeping."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def dynamic(secret: str = TOKEN_SECRET, lifetime_s: int = LIFETIME_S) -> DynamicCredentials:
    return DynamicCredentials(username=OMNI_USERNAME, password=OMNI_PASSWORD, token_secret=secret, lifetime_s=lifetime_s)


def posting(message_id: str) -> bytes:
    body = json.loads((FIXTURES / "outward_order_create.json").read_text())
    return json.dumps({**body, "messageId": message_id}).encode()


class OmniCaller:
    """Increff's side of domain.md 4.2: post; on 401 call Get Credential (GET, same URL, empty body, its
    configured login headers) and retry with the header map it returns; reuse those headers until a 401.

    ``calls`` records ``(method, status)`` of every request, so tests can assert the exact handshake.
    """

    def __init__(self, url: str, login: dict[str, str]) -> None:
        self.url = url
        self.login = login
        self.headers: dict[str, str] = {}
        self.calls: list[tuple[str, int]] = []

    def deliver(self, body: bytes) -> requests.Response:
        response = self._post(body)
        if response.status_code == 401:
            fetched = requests.get(self.url, headers=self.login, timeout=10)
            self.calls.append(("GET", fetched.status_code))
            if fetched.status_code != 200:
                return fetched
            self.headers = fetched.json()
            response = self._post(body)
        return response

    def _post(self, body: bytes) -> requests.Response:
        response = requests.post(
            self.url, data=body, headers={"Content-Type": "application/json", **self.headers}, timeout=10
        )
        self.calls.append(("POST", response.status_code))
        return response


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def served(sqlite_ledger_url, clock):
    """A real inbox on 127.0.0.1 with the static key and the dynamic flow on; yields (postings URL, ledger)."""
    app = build_standalone_app(
        InboxSettings(api_key=API_KEY, dynamic_credentials=dynamic(), ledger_url=sqlite_ledger_url, clock=clock)
    )
    with serve_in_thread(app) as server:
        yield f"{server.url}/omni/postings", Ledger(sqlite_ledger_url)


LOGIN = {"authUsername": OMNI_USERNAME, "authPassword": OMNI_PASSWORD}


# --- the handshake, served ------------------------------------------------------------------------


def test_omni_handshake_401_then_get_credential_then_the_posting_is_stored(served):
    url, ledger = served
    omni = OmniCaller(url, LOGIN)

    response = omni.deliver(posting("700001"))

    assert omni.calls == [("POST", 401), ("GET", 200), ("POST", 200)]
    assert response.json() == {"hasError": False}
    assert set(omni.headers) == {"Authorization"} and all(isinstance(v, str) for v in omni.headers.values())
    assert [(row["message_id"], row["state"]) for row in ledger.postings()] == [("700001", "pending")]


def test_a_token_is_reused_until_it_expires_then_omni_fetches_a_new_one(served, clock):
    url, ledger = served
    omni = OmniCaller(url, LOGIN)
    omni.deliver(posting("700011"))
    first_headers = dict(omni.headers)

    clock.now = T0 + LIFETIME_S - 1
    omni.deliver(posting("700012"))
    clock.now = T0 + LIFETIME_S
    omni.deliver(posting("700013"))

    assert omni.calls == [("POST", 401), ("GET", 200), ("POST", 200), ("POST", 200), ("POST", 401), ("GET", 200), ("POST", 200)]
    assert omni.headers != first_headers
    assert [row["message_id"] for row in ledger.postings()] == ["700011", "700012", "700013"]


def test_a_replayed_expired_token_is_refused_even_after_a_new_one_was_issued(served, clock):
    url, ledger = served
    omni = OmniCaller(url, LOGIN)
    omni.deliver(posting("700021"))
    expired_headers = dict(omni.headers)
    clock.now = T0 + LIFETIME_S + 5
    omni.deliver(posting("700022"))  # fetches a fresh token

    replay = requests.post(url, data=posting("700023"), headers={"Content-Type": "application/json", **expired_headers}, timeout=10)

    assert replay.status_code == 401 and replay.json()["hasError"] is True
    assert "700023" not in [row["message_id"] for row in ledger.postings()]


def test_a_token_signed_with_another_secret_is_refused(served):
    url, ledger = served
    forged = dynamic(secret="someone-elses-secret-0123456789-abcdef").issue(clock=lambda: T0)

    response = requests.post(
        url, data=posting("700031"), headers={"Content-Type": "application/json", "Authorization": f"Bearer {forged}"}, timeout=10
    )

    assert response.status_code == 401
    assert ledger.postings() == []


@pytest.mark.parametrize(
    "login",
    [
        {},
        {"authUsername": OMNI_USERNAME},
        {"authUsername": OMNI_USERNAME, "authPassword": OMNI_PASSWORD + "x"},
        {"authUsername": "someone-else", "authPassword": OMNI_PASSWORD},
        {"X-Api-Key": API_KEY},  # the posting key is not a login for Get Credential
    ],
    ids=["no-login", "no-password", "wrong-password", "wrong-username", "static-key-instead"],
)
def test_wrong_get_credential_login_is_401_and_no_token_is_issued(served, login):
    url, _ledger = served

    response = requests.get(url, headers=login, timeout=10)

    assert response.status_code == 401
    assert response.json()["hasError"] is True and "Authorization" not in response.json()
    assert "Bearer" not in response.text


def test_the_static_key_keeps_working_beside_the_dynamic_flow(served):
    url, ledger = served

    response = requests.post(url, data=posting("700041"), headers={"Content-Type": "application/json", "X-Api-Key": API_KEY}, timeout=10)

    assert response.status_code == 200
    assert [row["message_id"] for row in ledger.postings()] == ["700041"]


def test_credential_answer_is_not_cached_and_no_secret_reaches_the_log(served, caplog):
    url, _ledger = served
    caplog.set_level(logging.DEBUG)
    omni = OmniCaller(url, LOGIN)
    omni.deliver(posting("700051"))
    fetched = requests.get(url, headers=LOGIN, timeout=10)
    requests.get(url, headers={**LOGIN, "authPassword": "mistyped-" + OMNI_PASSWORD}, timeout=10)

    token = bearer_token(fetched.json()["Authorization"])
    assert fetched.headers["Cache-Control"] == "no-store"
    for secret in (token, bearer_token(omni.headers["Authorization"]), OMNI_PASSWORD, TOKEN_SECRET):
        assert secret not in caplog.text
    assert "issued a token" in caplog.text and "wrong login for Get Credential" in caplog.text


# --- the tokens themselves -------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(lifetime=st.integers(1, 24 * 3600), elapsed=st.floats(0, 2 * 24 * 3600, allow_nan=False))
def test_a_token_is_valid_exactly_until_its_lifetime_has_passed(lifetime, elapsed):
    credentials = dynamic(lifetime_s=lifetime)
    token = credentials.issue(clock=lambda: T0)

    verdict = credentials.verify(token, clock=lambda: T0 + elapsed)

    assert verdict == ("valid" if elapsed < lifetime else "expired")


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_altered_character_makes_a_token_invalid(data):
    credentials = dynamic()
    token = credentials.issue(clock=lambda: T0)
    position = data.draw(st.integers(0, len(token) - 1), label="position")
    replacement = data.draw(st.sampled_from(string.ascii_letters + string.digits + "-_.").filter(lambda c: c != token[position]))

    altered = token[:position] + replacement + token[position + 1:]

    assert credentials.verify(altered, clock=lambda: T0) == "invalid"


def test_a_token_claiming_a_longer_life_than_now_configured_is_refused():
    long_lived = dynamic(lifetime_s=24 * 3600).issue(clock=lambda: T0)

    assert dynamic(lifetime_s=600).verify(long_lived, clock=lambda: T0 + 10) == "invalid"


@pytest.mark.parametrize("garbage", ["", "Bearer", "v1", "v1.1.2.3", "x" * 5000, "v1.99999999999999.AAAAAAAAAAAAAAAA." + "A" * 43])
def test_malformed_tokens_are_invalid(garbage):
    assert dynamic().verify(garbage, clock=lambda: T0) == "invalid"


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"credential_username": "omni", "token_secret": "s" * 40}, "set credential_password"),
        ({"credential_username": "omni", "credential_password": "p", "token_secret": "short"}, "at least 32 characters"),
        ({"credential_username": "omni", "credential_password": "p", "token_secret": "s" * 40, "token_lifetime_s": 0}, "between 1 and"),
        ({"credential_username": "omni", "credential_password": "p", "token_secret": "s" * 40, "token_lifetime_s": "15m"}, "whole number"),
        ({"token_lifetime_s": 60}, "partly configured"),
    ],
    ids=["no-password", "short-secret", "zero-lifetime", "lifetime-not-a-number", "lifetime-only"],
)
def test_a_partly_or_badly_configured_extra_is_refused_naming_the_key_not_the_value(extra: dict[str, Any], problem):
    with pytest.raises(ValueError, match=problem) as refused:
        DynamicCredentials.from_extra(extra)
    assert "s" * 40 not in str(refused.value)


def test_extra_configures_the_flow_with_a_15_minute_default_and_secrets_stay_out_of_repr():
    extra = {"credential_username": "omni", "credential_password": "pw-Zz9", "token_secret": TOKEN_SECRET}

    configured = DynamicCredentials.from_extra(extra)

    assert DynamicCredentials.from_extra({}) is None
    assert configured is not None and configured.lifetime_s == 900
    assert DynamicCredentials.from_extra({**extra, "token_lifetime_s": "60"}).lifetime_s == 60
    assert "pw-Zz9" not in repr(configured) and TOKEN_SECRET not in repr(configured)
