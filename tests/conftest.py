"""Test environment: set before anything imports airflow (airflow-3.3-notes.md section 4.1).

A private AIRFLOW_HOME with a SQLite metadata DB, this repo's dags/ and plugins/, no examples, and
never unit-test mode. The ledger defaults to a file inside that home.
"""

from __future__ import annotations

import copy
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


# --- sandboxes as real HTTP servers on 127.0.0.1 ---------------------------------------------

ERP_TOKEN = "erp-test-token-s3cr3t"
OMNI_USER = "omni-test-user"
OMNI_PASSWORD = "omni-test-pass-s3cr3t"
INBOX_KEY = "inbox-test-key-s3cr3t"
SECRETS = (ERP_TOKEN, OMNI_PASSWORD, INBOX_KEY)


class Sandbox:
    """A running sandbox: its URL plus the ``/_sandbox`` controls tests use to set knobs and read outcomes."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        import requests

        response = requests.request(method, f"{self.url}/_sandbox/{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def state(self) -> dict:
        return self._call("GET", "state")

    def configure(self, **knobs) -> dict:
        return self._call("POST", "config", knobs)

    def reset(self) -> None:
        self._call("POST", "reset", {"reset_config": True})


@pytest.fixture(scope="session")
def _erp_server():
    from omni_erp.sandbox.erp import create_erp_sandbox
    from omni_erp.sandbox.serve import serve_in_thread

    with serve_in_thread(create_erp_sandbox(token=ERP_TOKEN, invoice_delay_s=0.05)) as server:
        yield server


@pytest.fixture(scope="session")
def _omni_server():
    from omni_erp.sandbox.omni import create_omni_sandbox
    from omni_erp.sandbox.serve import serve_in_thread

    with serve_in_thread(create_omni_sandbox(username=OMNI_USER, password=OMNI_PASSWORD)) as server:
        yield server


@pytest.fixture()
def fast_retries(monkeypatch):
    """Production retry policy shape with test-sized waits."""
    monkeypatch.setenv("OMNI_ERP_HTTP_MAX_ATTEMPTS", "4")
    monkeypatch.setenv("OMNI_ERP_HTTP_BASE_DELAY_S", "0.01")
    monkeypatch.setenv("OMNI_ERP_HTTP_MAX_DELAY_S", "0.05")
    monkeypatch.setenv("OMNI_ERP_HTTP_READ_TIMEOUT_S", "2")


@pytest.fixture()
def erp(_erp_server, monkeypatch, fast_retries) -> Sandbox:
    """The ERP sandbox, reset, with ``erp_default`` pointing at it."""
    import json

    sandbox = Sandbox(_erp_server.url)
    sandbox.reset()
    monkeypatch.setenv("AIRFLOW_CONN_ERP_DEFAULT", json.dumps({"conn_type": "http", "host": _erp_server.url, "password": ERP_TOKEN}))
    return sandbox


@pytest.fixture()
def omni(_omni_server, monkeypatch, fast_retries) -> Sandbox:
    """The Omni sandbox, reset, with ``omni_default`` pointing at it."""
    import json

    sandbox = Sandbox(_omni_server.url)
    sandbox.reset()
    monkeypatch.setenv(
        "AIRFLOW_CONN_OMNI_DEFAULT",
        json.dumps({"conn_type": "http", "host": _omni_server.url, "login": OMNI_USER, "password": OMNI_PASSWORD}),
    )
    return sandbox


# --- Airflow metadata DB, the inbox, and DAG runs ---------------------------------------------


@pytest.fixture(scope="session")
def airflow_db():
    """A fresh Airflow metadata DB (SQLite in the private AIRFLOW_HOME), once per session."""
    from airflow.utils import db

    db.resetdb()


@pytest.fixture()
def ledger_path(tmp_path, monkeypatch):
    """A fresh embedded ledger for this test (what the DAGs use when omni_erp_ledger is undefined)."""
    path = tmp_path / "ledger.sqlite"
    monkeypatch.setenv("OMNI_ERP_LEDGER_PATH", str(path))
    return path


@pytest.fixture()
def inbox(ledger_path):
    """The standalone inbox on 127.0.0.1 writing to this test's ledger; yields its base URL (…/omni)."""
    from omni_erp.inbox.app import InboxSettings, build_standalone_app
    from omni_erp.ledger.engine import sqlite_url
    from omni_erp.sandbox.serve import serve_in_thread

    app = build_standalone_app(InboxSettings(api_key=INBOX_KEY, ledger_url=sqlite_url(ledger_path)))
    with serve_in_thread(app) as server:
        yield f"{server.url}/omni"


class DagRunner:
    """Runs a DAG from the dags folder with ``dag.test()``, each call a new run with its own logical date."""

    def __init__(self, dag) -> None:
        self.dag = dag
        self.runs = 0

    def __call__(self, **conf):
        import pendulum

        self.runs += 1
        logical_date = pendulum.now("UTC").subtract(days=1).add(minutes=self.runs)
        # dag.test() writes run_conf into the (session-wide) DAG object's params: put them back, or a later
        # test's run inherits e.g. shards=4 from an earlier one.
        saved = copy.deepcopy(self.dag.params)
        saved_tasks = {task.task_id: copy.deepcopy(task.params) for task in self.dag.tasks}
        try:
            return self.dag.test(logical_date=logical_date, run_conf=conf or None)
        finally:
            self.dag.params = saved
            for task in self.dag.tasks:
                task.params = saved_tasks[task.task_id]

    def xcom(self, dag_run, task_id: str):
        return dag_run.get_task_instance(task_id).xcom_pull(task_ids=task_id)


@pytest.fixture(scope="session")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag


@pytest.fixture()
def run_dag(dagbag):
    """``run_dag("omni_order_posting")`` -> a DagRunner; deadlines are removed first (apache/airflow#73428)."""

    def make(dag_id: str) -> DagRunner:
        dag = dagbag.dags[dag_id]
        dag.deadline = None
        return DagRunner(dag)

    return make
