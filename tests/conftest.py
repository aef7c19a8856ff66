"""Test environment: set before anything imports airflow (airflow-3.3-notes.md section 4.1).

A private AIRFLOW_HOME with a SQLite metadata DB, this repo's dags/ and plugins/, no examples, and
never unit-test mode. The ledger defaults to a file inside that home.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_HOME = Path(tempfile.mkdtemp(prefix="omni_erp_airflow_home_"))

os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_HOME / 'airflow.db'}"
os.environ["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] = "True"
os.environ["OMNI_ERP_LEDGER_PATH"] = str(_HOME / "omni_erp_ledger.sqlite")
os.environ.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)
for _proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
    os.environ.pop(_proxy, None)
os.environ["NO_PROXY"] = "127.0.0.1,localhost"

import pytest  # noqa: E402

from tests.pg import PostgresCluster  # noqa: E402


@pytest.fixture(scope="session")
def postgres_url():
    """URL of a throwaway PostgreSQL cluster, started once per test session."""
    with PostgresCluster() as cluster:
        yield cluster.url


@pytest.fixture()
def sqlite_ledger_url(tmp_path):
    from omni_erp.ledger.engine import sqlite_url

    return sqlite_url(tmp_path / "ledger.sqlite")


@pytest.fixture()
def pg_ledger_url(postgres_url):
    """A fresh, empty schema state on the session cluster for each test."""
    import sqlalchemy as sa

    from omni_erp.ledger import engine as ledger_engine

    eng = sa.create_engine(postgres_url)
    with eng.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    eng.dispose()
    ledger_engine.dispose_all()
    yield postgres_url
    ledger_engine.dispose_all()


@pytest.fixture(params=["sqlite", "postgres"], ids=["sqlite", "postgres"])
def ledger_url(request):
    """Run a ledger test on both backends."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_ledger_url")
    request.applymarker(pytest.mark.postgres)
    return request.getfixturevalue("pg_ledger_url")
