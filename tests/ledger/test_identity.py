"""One ledger for the inbox and the flows: identity, following a changed connection, and the loud embedded fallback."""

from __future__ import annotations

import json
import logging
import threading
import uuid

import airflow  # noqa: F401  (Airflow resets logging on import: do it now, not mid-test under caplog)
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_erp.inbox import InboxSettings, create_inbox_app
from omni_erp.inbox.ledger_source import CurrentLedger
from omni_erp.ledger import Ledger
from omni_erp.ledger import engine as ledger_engine
from omni_erp.ledger.engine import (
    SCHEMA_VERSION,
    LedgerConfigError,
    executors_are_local,
    ledger_url_for_conn_id,
    sqlite_url,
)
from tests.inbox.conftest import API_KEY, FIXTURES

LEDGER_ENV = "AIRFLOW_CONN_OMNI_ERP_LEDGER"


def _sqlite_connection(path) -> str:
    return json.dumps({"conn_type": "sqlite", "host": str(path)})


def _pg_connection(postgres_url: str) -> str:
    url = sa.make_url(postgres_url)
    return json.dumps({"conn_type": "postgres", "host": url.host, "port": url.port, "login": url.username, "schema": url.database})


def _posting(message_id: str) -> bytes:
    posting = json.loads((FIXTURES / "outward_order_create.json").read_text())
    return json.dumps({**posting, "messageId": message_id}).encode()


def _client(**overrides):
    from fastapi.testclient import TestClient

    return TestClient(create_inbox_app(InboxSettings(api_key=API_KEY, **overrides)))


def _post(client, message_id: str):
    return client.post("/postings", content=_posting(message_id), headers={"X-Api-Key": API_KEY, "Content-Type": "application/json"})


# --- identity ------------------------------------------------------------------------------------


def test_identity_is_a_uuid_created_once_and_the_same_wherever_the_ledger_is_opened(ledger_url):
    first = Ledger(ledger_url).identity
    ledger_engine.dispose_all()  # as another process would: a new engine, the schema already there

    again = Ledger(ledger_url)

    assert uuid.UUID(first).version == 4
    assert again.identity == first
    with again.engine.connect() as conn:
        assert ledger_engine.current_version(conn) == SCHEMA_VERSION
        assert conn.execute(sa.select(sa.func.count()).select_from(sa.table("ledger_meta"))).scalar() == 1


def test_two_ledgers_have_different_identities(tmp_path):
    assert Ledger(sqlite_url(tmp_path / "a.sqlite")).identity != Ledger(sqlite_url(tmp_path / "b.sqlite")).identity


def test_processes_migrating_a_new_ledger_at_once_agree_on_one_identity(ledger_url):
    """Separate engines (as separate processes have) race through migration; the migration lock lets one create it."""
    engines = []
    for _ in range(4):
        engine = sa.create_engine(ledger_url)
        if ledger_url.startswith("sqlite"):
            ledger_engine._configure_sqlite(engine)
        engines.append(engine)
    start, errors = threading.Barrier(len(engines)), []

    def migrate(engine) -> None:
        start.wait()
        try:
            ledger_engine.migrate(engine)
        except Exception as exc:  # collected: the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    identities = {ledger_engine.ledger_identity(engine) for engine in engines}
    for engine in engines:
        engine.dispose()
    assert errors == [] and len(identities) == 1


def test_a_ledger_without_its_identity_row_is_refused_not_given_a_new_one(sqlite_ledger_url):
    ledger = Ledger(sqlite_ledger_url)
    with ledger.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM ledger_meta"))

    with pytest.raises(LedgerConfigError, match="no identity row"):
        _ = ledger.identity


# --- the inbox follows the configuration the flows read --------------------------------------------


@pytest.mark.postgres
def test_inbox_follows_a_ledger_connection_added_while_it_runs_and_says_so(tmp_path, pg_ledger_url, monkeypatch, caplog):
    """Issue 7.1: the connection changes from SQLite to PostgreSQL under a running inbox."""
    monkeypatch.setenv(LEDGER_ENV, _sqlite_connection(tmp_path / "old.sqlite"))
    client = _client(ledger_recheck_s=0)
    assert _post(client, "1001").status_code == 200
    old = Ledger(sqlite_url(tmp_path / "old.sqlite"))

    monkeypatch.setenv(LEDGER_ENV, _pg_connection(pg_ledger_url))
    caplog.set_level(logging.INFO)
    stored = _post(client, "1002")
    health = client.get("/health", headers={"X-Api-Key": API_KEY}).json()
    flows = Ledger.from_conn_id()  # what every task resolves when it starts

    assert stored.status_code == 200
    assert [p["message_id"] for p in old.postings()] == ["1001"]
    assert [p["message_id"] for p in flows.postings()] == ["1002"]
    assert health["ledger"]["identity"] == flows.identity != old.identity
    assert health["ledger"]["backend"] == "postgresql" and health["ledger"]["embeddedFallback"] is False
    [switch] = [r for r in caplog.records if "ledger configuration changed" in r.getMessage()]
    assert switch.levelno == logging.WARNING
    assert flows.identity in switch.getMessage() and old.identity in switch.getMessage()


def test_ledger_configuration_is_re_read_at_most_every_recheck_interval(tmp_path, monkeypatch):
    now = [0.0]
    current = CurrentLedger(None, "omni_erp_ledger", recheck_s=5.0, clock=lambda: now[0])
    monkeypatch.setenv(LEDGER_ENV, _sqlite_connection(tmp_path / "a.sqlite"))
    first = current.get()

    monkeypatch.setenv(LEDGER_ENV, _sqlite_connection(tmp_path / "b.sqlite"))
    now[0] = 4.9
    before = current.get()
    now[0] = 5.0
    after = current.get()

    assert before is first
    assert after.url == sqlite_url(tmp_path / "b.sqlite") and after.identity != first.identity


def test_a_newly_configured_ledger_that_cannot_be_opened_is_503_and_nothing_goes_to_the_old_one(tmp_path, monkeypatch):
    monkeypatch.setenv(LEDGER_ENV, _sqlite_connection(tmp_path / "old.sqlite"))
    client = _client(ledger_recheck_s=0)
    assert _post(client, "2001").status_code == 200

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the new ledger's directory should be")
    monkeypatch.setenv(LEDGER_ENV, _sqlite_connection(blocker / "new.sqlite"))
    refused = _post(client, "2002")

    assert refused.status_code == 503
    assert [p["message_id"] for p in Ledger(sqlite_url(tmp_path / "old.sqlite")).postings()] == ["2001"]


def test_the_flows_log_the_identity_the_inbox_reports(sqlite_ledger_url, tmp_path, monkeypatch, caplog):
    from omni_erp.operators.base import LedgerOperator

    monkeypatch.setenv(LEDGER_ENV, _sqlite_connection(sqlite_ledger_url.split(":///", 1)[1]))
    caplog.set_level(logging.INFO)
    inbox_says = _client().get("/health", headers={"X-Api-Key": API_KEY}).json()["ledger"]["identity"]

    _ = LedgerOperator(task_id="any_flow_task").ledger

    assert f"identity {inbox_says}" in caplog.text


# --- the embedded SQLite fallback is loud, and refused when tasks run on other hosts ---------------


def test_embedded_fallback_logs_a_warning_and_only_an_authenticated_health_shows_it(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(LEDGER_ENV, raising=False)
    monkeypatch.setenv("OMNI_ERP_LEDGER_PATH", str(tmp_path / "embedded.sqlite"))
    client = _client()
    caplog.set_level(logging.INFO)

    assert _post(client, "3001").status_code == 200
    public = client.get("/health")
    detailed = client.get("/health", headers={"X-Api-Key": API_KEY})

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "embedded SQLite ledger" in r.getMessage()]
    assert len(warnings) == 1 and str(tmp_path / "embedded.sqlite") in warnings[0].getMessage()
    assert public.json() == {"status": "ok"}
    assert detailed.json()["ledger"]["embeddedFallback"] is True
    assert "private to" not in public.text and "embedded SQLite file" in detailed.json()["ledger"]["warning"]


@pytest.mark.parametrize(
    "executor", ["CeleryExecutor", "KubernetesExecutor", "LocalExecutor,CeleryExecutor"], ids=["celery", "kubernetes", "mixed"]
)
def test_embedded_fallback_is_refused_when_tasks_may_run_on_other_hosts(tmp_path, monkeypatch, executor):
    monkeypatch.delenv(LEDGER_ENV, raising=False)
    monkeypatch.setenv("OMNI_ERP_LEDGER_PATH", str(tmp_path / "embedded.sqlite"))  # an explicit path does not lift it
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", executor)
    client = _client()

    with pytest.raises(LedgerConfigError, match=r"not defined and \[core\] executor is"):
        ledger_url_for_conn_id()
    refused = _post(client, "4001")
    health = client.get("/health", headers={"X-Api-Key": API_KEY})

    assert refused.status_code == 503
    assert health.status_code == 503 and "executor is" in health.json()["errorMessage"]
    assert not (tmp_path / "embedded.sqlite").exists()


def test_an_explicit_sqlite_connection_is_accepted_under_any_executor(tmp_path, monkeypatch):
    monkeypatch.setenv(LEDGER_ENV, _sqlite_connection(tmp_path / "shared.sqlite"))
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")

    assert ledger_url_for_conn_id() == sqlite_url(tmp_path / "shared.sqlite")


@pytest.mark.parametrize(
    ("setting", "local"),
    [
        ("LocalExecutor", True),
        ("airflow.executors.local_executor.LocalExecutor", True),
        ("main:LocalExecutor", True),
        (" LocalExecutor , ", True),
        ("CeleryExecutor", False),
        ("KubernetesExecutor", False),
        ("LocalExecutor,CeleryExecutor", False),
        ("LocalExecutor;team_a=KubernetesExecutor", False),
        ("airflow.providers.edge3.executors.EdgeExecutor", False),
        ("", False),
    ],
    ids=lambda value: repr(value),
)
def test_only_local_executors_count_as_local(setting, local):
    assert executors_are_local(setting) is local


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["LocalExecutor", "CeleryExecutor", "KubernetesExecutor", "my.pkg.Custom"]), min_size=1, max_size=4))
def test_a_list_of_executors_is_local_only_when_every_one_is(names):
    assert executors_are_local(",".join(names)) is all(name == "LocalExecutor" for name in names)
