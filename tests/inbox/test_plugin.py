"""The Airflow plugin: discovered from plugins/ and mounted by Airflow's own API app at /omni."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from omni_erp.ledger import Ledger
from omni_erp.ledger.engine import sqlite_url
from tests.inbox.conftest import FIXTURES

PLUGIN_KEY = "plugin-key-from-connection"


@pytest.fixture()
def airflow_api(tmp_path, monkeypatch):
    """Airflow's API app (core apps, no scheduler needed) with the inbox key and ledger given as connections."""
    ledger_path = tmp_path / "plugin_ledger.sqlite"
    monkeypatch.setenv("AIRFLOW_CONN_OMNI_INBOX", json.dumps({"conn_type": "generic", "password": PLUGIN_KEY}))
    monkeypatch.setenv("AIRFLOW_CONN_OMNI_ERP_LEDGER", json.dumps({"conn_type": "sqlite", "host": str(ledger_path)}))
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

    health = client.get("/omni/health")
    refused = client.post("/omni/postings", content=body, headers={"X-Api-Key": "not-the-key"})
    stored = client.post("/omni/postings", content=body, headers={"X-Api-Key": PLUGIN_KEY, "Content-Type": "application/json"})

    assert health.json() == {"status": "ok", "ledger": "sqlite"}
    assert refused.status_code == 401
    assert stored.status_code == 200 and stored.json() == {"hasError": False}
    assert [row["message_id"] for row in Ledger(ledger_url).postings()] == ["900001"]


def test_plugin_key_is_re_read_after_the_cache_expires_and_a_missing_key_is_not_cached(monkeypatch):
    import airflow  # noqa: F401  (puts the plugins folder on sys.path)
    from omni_inbox_plugin import _InboxKey

    def set_key(value: str) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_OMNI_INBOX", json.dumps({"conn_type": "generic", "password": value}))

    monkeypatch.delenv("AIRFLOW_CONN_OMNI_INBOX", raising=False)
    cached, uncached = _InboxKey(ttl=3600), _InboxKey(ttl=0)
    assert cached() is None
    set_key("first")
    assert (cached(), uncached()) == ("first", "first")

    set_key("rotated")

    assert (cached(), uncached()) == ("first", "rotated")
