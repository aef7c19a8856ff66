"""The standalone inbox really served over HTTP, and its command line."""

from __future__ import annotations

import json

import requests

from omni_erp.inbox import InboxSettings, build_standalone_app
from omni_erp.inbox.__main__ import main
from omni_erp.ledger import Ledger
from omni_erp.sandbox.serve import serve_in_thread
from tests.inbox.conftest import API_KEY, FIXTURES


def test_standalone_server_stores_the_sample_posting_at_omni_postings(sqlite_ledger_url):
    app = build_standalone_app(InboxSettings(api_key=API_KEY, ledger_url=sqlite_ledger_url))
    body = (FIXTURES / "outward_order_create.json").read_bytes()

    with serve_in_thread(app, "127.0.0.1", 0) as server:
        response = requests.post(
            f"{server.url}/omni/postings",
            data=body,
            headers={"Content-Type": "application/json", "X-Api-Key": API_KEY},
            timeout=10,
        )
        health = requests.get(f"{server.url}/omni/health", timeout=10)
        detailed = requests.get(f"{server.url}/omni/health", headers={"X-Api-Key": API_KEY}, timeout=10)
        outside = requests.get(f"{server.url}/postings", timeout=10)

    assert response.status_code == 200
    assert response.json() == {"hasError": False}
    assert health.json() == {"status": "ok"}
    assert detailed.json()["ledger"]["identity"] == Ledger(sqlite_ledger_url).identity
    assert outside.status_code == 404 and outside.json()["hasError"] is True
    [row] = Ledger(sqlite_ledger_url).postings()
    assert json.loads(row["payload"]) == json.loads(body)


def test_cli_refuses_to_start_without_an_api_key(monkeypatch, capsys):
    monkeypatch.delenv("AIRFLOW_CONN_OMNI_INBOX", raising=False)
    monkeypatch.delenv("INBOX_KEY_FOR_TEST", raising=False)

    assert main(["--api-key-env", "INBOX_KEY_FOR_TEST"]) == 2
    assert "no API key configured; set environment variable INBOX_KEY_FOR_TEST" in capsys.readouterr().err
    assert main([]) == 2
    assert "AIRFLOW_CONN_OMNI_INBOX" in capsys.readouterr().err


def test_cli_reads_the_key_from_the_omni_inbox_connection(monkeypatch):
    from omni_erp.inbox.__main__ import _api_key

    monkeypatch.setenv("AIRFLOW_CONN_OMNI_INBOX", json.dumps({"conn_type": "generic", "password": "from-conn"}))
    monkeypatch.setenv("OTHER_KEY_VAR", "from-env")

    assert _api_key(None) == "from-conn"
    assert _api_key("OTHER_KEY_VAR") == "from-env"


def test_cli_refuses_to_start_with_a_partly_configured_dynamic_flow(monkeypatch, capsys):
    extra = {"credential_username": "omni", "token_secret": "s" * 40}
    monkeypatch.setenv("AIRFLOW_CONN_OMNI_INBOX", json.dumps({"conn_type": "generic", "extra": extra}))

    assert main([]) == 2
    err = capsys.readouterr().err
    assert "partly configured: set credential_password" in err and "s" * 40 not in err


def test_cli_refuses_to_start_on_the_embedded_ledger_under_a_distributed_executor(monkeypatch, capsys):
    monkeypatch.setenv("AIRFLOW_CONN_OMNI_INBOX", json.dumps({"conn_type": "generic", "password": "k"}))
    monkeypatch.delenv("AIRFLOW_CONN_OMNI_ERP_LEDGER", raising=False)
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")

    assert main([]) == 2
    assert "[core] executor is 'CeleryExecutor'" in capsys.readouterr().err
