"""Which database the ``omni_erp_ledger`` connection selects."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import make_url
from sqlalchemy.exc import OperationalError

from omni_erp.ledger import Ledger
from omni_erp.ledger.engine import LedgerConfigError, ledger_url_for_conn_id


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
    with pytest.raises(LedgerConfigError, match="must be sqlite .* or postgres, not 'mysql'"):
        ledger_url_for_conn_id()


# --- PostgreSQL through the postgres provider's PostgresHook (issue 6) ---------------------------


def _pg_connection(postgres_url: str, **extra) -> str:
    """The test cluster as an Airflow postgres connection (JSON for ``AIRFLOW_CONN_*``)."""
    url = make_url(postgres_url)
    return json.dumps({"conn_type": "postgres", "host": url.host, "port": url.port, "login": url.username,
                       "schema": url.database, "extra": extra})


def test_postgres_extras_become_libpq_parameters_and_the_driver_stays_psycopg_3(monkeypatch):
    extra = {"sslmode": "verify-full", "options": "-c statement_timeout=5000", "cursor": "dictcursor",
             "sqlalchemy_scheme": "postgresql+psycopg2", "sqlalchemy_query": {"application_name": "omni-ledger"}}
    conn = {"conn_type": "postgres", "host": "db.internal", "login": "omni", "password": "p@ss", "schema": "ledger", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_OMNI_ERP_LEDGER", json.dumps(conn))

    url = make_url(ledger_url_for_conn_id())

    assert url.drivername == "postgresql+psycopg"
    assert (url.username, url.password, url.host, url.database) == ("omni", "p@ss", "db.internal", "ledger")
    # libpq parameters pass through; the hook's own switches (cursor, scheme, query) do not.
    assert dict(url.query) == {"sslmode": "verify-full", "options": "-c statement_timeout=5000", "application_name": "omni-ledger"}


@pytest.mark.postgres
def test_sslmode_and_options_of_the_connection_reach_the_real_database_connection(pg_ledger_url, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_OMNI_ERP_LEDGER",
        _pg_connection(pg_ledger_url, sslmode="disable", options="-c statement_timeout=4321"),
    )

    ledger = Ledger.from_conn_id()

    with ledger.engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "4321ms"
        assert conn.connection.dbapi_connection.info.get_parameters()["sslmode"] == "disable"
    assert ledger.identity  # migrated like any other ledger


@pytest.mark.postgres
def test_sslmode_require_is_enforced_against_a_server_without_ssl(pg_ledger_url, monkeypatch):
    """The test cluster has no SSL: refusing to connect proves the extra reached libpq rather than being dropped."""
    monkeypatch.setenv("AIRFLOW_CONN_OMNI_ERP_LEDGER", _pg_connection(pg_ledger_url, sslmode="require"))

    with pytest.raises(OperationalError, match="SSL"):
        Ledger.from_conn_id()
