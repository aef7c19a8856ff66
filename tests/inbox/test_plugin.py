"""The Airflow plugin: discovered from plugins/ and mounted by Airflow's own API app at /omni."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from omni_erp.inbox.auth import ConnectionAuthSource
from omni_erp.ledger import Ledger
from omni_erp.ledger.engine import sqlite_url
from tests.inbox.conftest import FIXTURES

PLUGIN_KEY = "plugin-key-from-connection"
OMNI_LOGIN = {"authUsername": "increff-omni", "authPassword": "credential-call-pass-Xy7"}
DYNAMIC_EXTRA = {
    "credential_username": OMNI_LOGIN["authUsername"],
    "credential_password": OMNI_LOGIN["authPassword"],
    "token_secret": "plugin-token-secret-0123456789abcdef",
}


@pytest.fixture(scope="module")
def airflow_api(tmp_path_factory):
    """Airflow's API app (core apps, no scheduler needed) with the inbox credentials and ledger given as connections.

    One per module: the plugin's app lives as long as the process and caches the inbox connection for a minute.
    """
    ledger_path = tmp_path_factory.mktemp("plugin") / "plugin_ledger.sqlite"
    inbox_conn = {"conn_type": "generic", "password": PLUGIN_KEY, "extra": DYNAMIC_EXTRA}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_OMNI_INBOX", json.dumps(inbox_conn))
        patch.setenv("AIRFLOW_CONN_OMNI_ERP_LEDGER", json.dumps({"conn_type": "sqlite", "host": str(ledger_path)}))
        from airflow.api_fastapi.app import create_app

        with TestClient(create_app(apps="core")) as client:
            yield client, sqlite_url(ledger_path)


def test_plugin_is_discovered_with_the_omni_prefix():
    from airflow import plugins_manager

    apps, _middlewares = plugins_manager.get_fastapi_plugins()

    [inbox] = [entry for entry in apps if entry["name"] == "Omni inbox"]
    assert inbox["url_prefix"] == "/omni"


def test_airflow_api_serves_the_inbox_with_key_and_ledger_from_connections(airflow_api):
    client, ledger_url = airflow_api
    body = (FIXTURES / "outward_order_create.json").read_bytes()

    public_health = client.get("/omni/health")
    health = client.get("/omni/health", headers={"X-Api-Key": PLUGIN_KEY})
    refused = client.post("/omni/postings", content=body, headers={"X-Api-Key": "not-the-key"})
    stored = client.post("/omni/postings", content=body, headers={"X-Api-Key": PLUGIN_KEY, "Content-Type": "application/json"})

    assert public_health.json() == {"status": "ok"}
    assert health.json()["ledger"]["backend"] == "sqlite"
    assert health.json()["ledger"]["identity"] == Ledger(ledger_url).identity
    assert refused.status_code == 401
    assert stored.status_code == 200 and stored.json() == {"hasError": False}
    assert "900001" in [row["message_id"] for row in Ledger(ledger_url).postings()]


def test_airflow_api_passes_increffs_dynamic_handshake_through_to_the_inbox(airflow_api):
    """Airflow's own auth must not swallow ``Authorization: Bearer``: the token is the inbox's, not Airflow's."""
    client, ledger_url = airflow_api
    posting = json.loads((FIXTURES / "outward_order_create.json").read_text())
    body = json.dumps({**posting, "messageId": "900777"})

    first = client.post("/omni/postings", content=body, headers={"Content-Type": "application/json"})
    credentials = client.get("/omni/postings", headers=OMNI_LOGIN)
    retried = client.post("/omni/postings", content=body, headers={**credentials.json(), "Content-Type": "application/json"})

    assert first.status_code == 401
    assert credentials.status_code == 200 and set(credentials.json()) == {"Authorization"}
    assert retried.status_code == 200, retried.text
    assert "900777" in [row["message_id"] for row in Ledger(ledger_url).postings()]


def test_inbox_credentials_are_re_read_after_the_cache_expires_and_a_missing_key_is_not_cached(monkeypatch):
    def set_key(value: str) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_OMNI_INBOX", json.dumps({"conn_type": "generic", "password": value}))

    monkeypatch.delenv("AIRFLOW_CONN_OMNI_INBOX", raising=False)
    now = [0.0]
    cached = ConnectionAuthSource(ttl=60, clock=lambda: now[0])
    assert cached.api_key() is None
    set_key("first")
    assert cached.api_key() == "first"  # nothing was configured, so nothing was cached

    set_key("rotated")
    now[0] = 59.0
    assert cached.api_key() == "first"
    now[0] = 60.0
    assert cached.api_key() == "rotated"
