"""Which database the ``omni_erp_ledger`` connection selects."""

from __future__ import annotations

import json

import pytest

from omni_erp.ledger.engine import ledger_url_for_conn_id


def test_undefined_connection_means_the_embedded_sqlite_file(monkeypatch, tmp_path):
    monkeypatch.delenv("AIRFLOW_CONN_OMNI_ERP_LEDGER", raising=False)
    monkeypatch.setenv("OMNI_ERP_LEDGER_PATH", str(tmp_path / "l.sqlite"))
    assert ledger_url_for_conn_id() == f"sqlite:///{tmp_path / 'l.sqlite'}"


@pytest.mark.parametrize("conn_type", ["sqlite", "generic"])
def test_sqlite_connection_uses_host_as_the_file(monkeypatch, tmp_path, conn_type):
    conn = {"conn_type": conn_type, "host": str(tmp_path / "x.db")}
    monkeypatch.setenv("AIRFLOW_CONN_OMNI_ERP_LEDGER", json.dumps(conn))
    assert ledger_url_for_conn_id() == f"sqlite:///{tmp_path / 'x.db'}"


def test_postgres_connection_builds_a_psycopg_url(monkeypatch):
    conn = {"conn_type": "postgres", "host": "db.internal", "port": 5433, "login": "omni", "password": "p@ss", "schema": "ledger"}
    monkeypatch.setenv("AIRFLOW_CONN_OMNI_ERP_LEDGER", json.dumps(conn))
    assert ledger_url_for_conn_id() == "postgresql+psycopg://omni:p%40ss@db.internal:5433/ledger"


def test_other_connection_types_are_refused_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_OMNI_ERP_LEDGER", json.dumps({"conn_type": "mysql", "host": "db"}))
    with pytest.raises(ValueError, match="must be sqlite .* or postgres, not 'mysql'"):
        ledger_url_for_conn_id()
