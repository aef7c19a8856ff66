"""Alerts through notifiers, one per incident (issue 10.3), against a real webhook on 127.0.0.1 and a real ledger.

The failure notifier is called the way the task runner calls ``on_failure_callback`` (with the task's
context); the deadline notifier the way the triggerer runs a ``DeadlineAlert`` callback (``CallbackTrigger``
with the context the scheduler builds: the run as the REST API shows it, and the deadline).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_erp import alerts
from omni_erp.exceptions import RemoteRejectedError, RemoteUnavailableError
from omni_erp.notifiers import RunFailedNotifier


@dataclass
class TI:
    dag_id: str
    task_id: str
    run_id: str


@dataclass
class Run:
    dag_id: str
    run_id: str


def fail(dag_id: str, run_id: str, task_id: str, exception: BaseException) -> None:
    """What the task runner does when ``task_id`` of that run fails for good."""
    RunFailedNotifier()(
        {"ti": TI(dag_id, task_id, run_id), "dag_run": Run(dag_id, run_id), "exception": exception, "params": {}}
    )


def erp_down() -> RemoteUnavailableError:
    return RemoteUnavailableError("erp", 503, "create_sales_order failed after 5 attempts: ERP maintenance")


def report_failure(reason: str) -> Exception:
    """How report_outcome fails a run whose postings were deferred (AirflowFailException's text)."""
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(f"3 of 3 posting(s) were not processed in this run and wait for the next one; first reason: {reason}")


def run_deadline(dag_id: str, run_id: str, state: str) -> list:
    """Run DeadlineMissedNotifier as the triggerer does; return the trigger's events."""
    from airflow.triggers.callback import CallbackTrigger

    context = {
        "dag_run": {"dag_id": dag_id, "dag_run_id": run_id, "state": state},
        "deadline": {"id": "d-1", "deadline_time": "2026-12-03T10:20:00+00:00"},
    }

    async def collect():
        trigger = CallbackTrigger("omni_erp.notifiers.DeadlineMissedNotifier", {"flow": "f1", "context": context})
        return [event async for event in trigger.run()]

    return asyncio.run(collect())


@pytest.fixture()
def clock(monkeypatch):
    """Move the package clock (omni_erp.timeutil.now) forward without sleeping."""

    def advance(minutes: float) -> None:
        import os

        current = float(os.environ.get("OMNI_ERP_CLOCK_OFFSET_S") or 0)
        monkeypatch.setenv("OMNI_ERP_CLOCK_OFFSET_S", str(current + minutes * 60))

    monkeypatch.setenv("OMNI_ERP_CLOCK_OFFSET_S", "0")
    return advance


def test_a_failed_run_alerts_once_although_two_of_its_tasks_fail(webhook, ledger_path):
    fail("omni_order_posting", "scheduled__1", "create_sales_orders", erp_down())
    fail("omni_order_posting", "scheduled__1", "report_outcome", report_failure("erp HTTP 503: ERP maintenance"))

    assert len(webhook.received) == 1
    alert = webhook.received[0]
    assert alert["kind"] == "run_failed" and alert["run_id"] == "scheduled__1" and alert["incident"] == "erp_unavailable"
    assert alert["text"].startswith("ERP down: omni_order_posting run scheduled__1 failed: create_sales_orders: erp HTTP 503")


def test_a_long_erp_outage_is_summarised_not_resent(webhook, ledger_path, clock, monkeypatch):
    """Six runs of two flows fail during one ERP outage: one alert, then one summary when the repeat time is up."""
    monkeypatch.setenv("OMNI_ERP_ALERT_REPEAT_MINUTES", "60")
    for n in range(1, 7):
        dag_id = "omni_order_posting" if n % 2 else "erp_invoice_upload"
        fail(dag_id, f"scheduled__{n}", "report_outcome", report_failure(f"erp HTTP 503: maintenance (run {n})"))
        clock(5)
    assert [a["kind"] for a in webhook.received] == ["run_failed"]

    clock(40)  # 70 minutes after the first alert
    fail("omni_order_posting", "scheduled__7", "create_sales_orders", erp_down())

    assert [a["kind"] for a in webhook.received] == ["run_failed", "outage_summary"]
    summary = webhook.received[1]
    since = alerts.local_time(datetime.fromisoformat(summary["since"]))
    assert summary["text"].startswith(f"ERP down since {since}, 7 runs failed (erp_invoice_upload 3, omni_order_posting 4)")
    assert summary["runs_failed"] == 7 and summary["runs_by_dag"] == {"erp_invoice_upload": 3, "omni_order_posting": 4}


def test_another_cause_is_another_incident_and_a_quiet_gap_starts_a_new_one(webhook, ledger_path, clock, monkeypatch):
    monkeypatch.setenv("OMNI_ERP_ALERT_QUIET_MINUTES", "30")
    fail("omni_order_posting", "r1", "create_sales_orders", erp_down())
    fail("erp_invoice_upload", "r2", "upload_invoices", RemoteUnavailableError("omni", None, "no answer within the timeout"))
    fail("omni_order_completion", "r3", "complete_orders", ValueError("bad data"))
    fail("omni_order_completion", "r4", "complete_orders", ValueError("bad data again"))
    assert [a["incident"] for a in webhook.received] == ["erp_unavailable", "omni_unavailable", "failed:omni_order_completion"]
    assert webhook.received[2]["text"] == "omni_order_completion run r3 failed: complete_orders: bad data"

    clock(31)  # the ERP was fine for longer than the quiet gap: a new outage is news again
    fail("omni_order_posting", "r5", "create_sales_orders", erp_down())
    assert [a["kind"] for a in webhook.received][-1] == "run_failed" and len(webhook.received) == 4


def test_deadline_alert_only_for_a_run_still_running(webhook, ledger_path):
    failed = run_deadline("omni_order_posting", "scheduled__failed", "failed")
    assert "SUCCESS" in str(failed[-1].payload), failed
    assert webhook.received == []  # apache/airflow#60927: the failed run already alerted as failed

    run_deadline("omni_order_posting", "scheduled__slow", "running")
    run_deadline("omni_order_posting", "scheduled__slow", "running")  # a second deadline alert of the same run
    assert len(webhook.received) == 1
    assert webhook.received[0]["kind"] == "deadline_missed" and webhook.received[0]["state"] == "running"
    assert webhook.received[0]["text"] == (
        "omni_order_posting run scheduled__slow is still running after its deadline 2026-12-03T10:20:00+00:00"
    )


def test_no_deadline_alert_for_a_run_that_alerted_as_failed(webhook, ledger_path):
    """The run state in the deadline's context may be stale; the alert record is the second check."""
    fail("omni_order_posting", "scheduled__9", "create_sales_orders", erp_down())
    run_deadline("omni_order_posting", "scheduled__9", "running")
    assert [a["kind"] for a in webhook.received] == ["run_failed"]


def test_old_deadline_callback_path_still_works(webhook, ledger_path):
    """Deadlines stored before the notifiers name omni_erp.alerts.deadline_missed."""
    context = {"dag_run": {"dag_id": "erp_invoice_upload", "dag_run_id": "old", "state": "running"}, "deadline": {}}
    asyncio.run(alerts.deadline_missed("f2", context=context))
    assert [a["run_id"] for a in webhook.received] == ["old"]


def test_a_broken_webhook_is_retried_and_never_fails_the_task(webhook, ledger_path, caplog):
    webhook.status = 503
    caplog.set_level(logging.ERROR, logger="omni_erp.notifiers")
    fail("omni_order_posting", "r1", "create_sales_orders", erp_down())  # must not raise
    assert len(webhook.received) == 3
    assert "Alert not delivered" in caplog.text and "ERP down" in caplog.text


def test_without_alert_records_the_alert_is_still_sent(webhook, monkeypatch):
    """The ledger down (a PostgreSQL nobody listens on): an extra alert beats a missing one."""
    monkeypatch.setenv("AIRFLOW_CONN_OMNI_ERP_LEDGER", json.dumps(
        {"conn_type": "postgres", "host": "127.0.0.1", "port": 1, "login": "x", "password": "y", "schema": "z"}
    ))
    fail("omni_order_posting", "r1", "claim_postings", RuntimeError("ledger gone"))
    assert len(webhook.received) == 1


def test_without_a_channel_the_alert_is_logged(monkeypatch, ledger_path, caplog):
    monkeypatch.delenv("AIRFLOW_CONN_OMNI_ERP_ALERTS", raising=False)
    caplog.set_level(logging.ERROR, logger="omni_erp.notifiers")
    fail("omni_order_posting", "r1", "create_sales_orders", erp_down())
    assert "Run failed: ERP down: omni_order_posting run r1" in caplog.text


def test_alert_records_on_both_ledger_backends(ledger_url):
    """The de-duplication is one transaction on SQLite and PostgreSQL alike."""
    from datetime import UTC, timedelta

    from omni_erp.ledger.alerts import AlertBook
    from omni_erp.ledger.repo import Ledger

    book = AlertBook(Ledger(ledger_url).engine)
    start = datetime(2026, 12, 3, 6, 35, tzinfo=UTC)
    window = {"repeat_after": timedelta(minutes=60), "quiet_gap": timedelta(minutes=60)}
    outcomes = [
        book.run_failed("f", f"r{n}", "erp_unavailable", "x", now=start + timedelta(minutes=5 * n), **window).outcome
        for n in range(3)
    ]
    again = book.run_failed("f", "r1", "erp_unavailable", "x", now=start + timedelta(minutes=20), **window)
    late = book.run_failed("f", "r9", "erp_unavailable", "x", now=start + timedelta(minutes=61), **window)
    assert outcomes == ["sent", "suppressed", "suppressed"]
    assert again.outcome == "duplicate_run"
    assert (late.outcome, late.runs_failed, late.since) == ("summarised", 4, start)
    assert book.deadline_missed("f", "r1", now=start) is False  # alerted as failed already
    assert book.deadline_missed("f", "slow", now=start) is True
    assert book.deadline_missed("f", "slow", now=start) is False


@settings(max_examples=60, deadline=None)
@given(system=st.sampled_from(["erp", "omni"]), status=st.sampled_from([None, 429, 500, 502, 503, 504]),
       message=st.text(max_size=80), task=st.text(min_size=1, max_size=20))
def test_an_outage_is_one_incident_whatever_the_message(system, status, message, task):
    """However the remote error reads, as an exception or quoted in report_outcome's reason, it is the system's outage."""
    error = RemoteUnavailableError(system, status, message)
    assert alerts.incident_key("any_dag", error, f"{task}: {error}") == f"{system}_unavailable"
    quoted = report_failure(str(error))
    assert alerts.incident_key("any_dag", quoted, f"report_outcome: {quoted}") == f"{system}_unavailable"


def test_a_refusal_is_not_an_outage():
    error = RemoteRejectedError("omni", 400, "Input validation failed")
    assert alerts.incident_key("erp_invoice_upload", error, f"upload_invoices: {error}") == "failed:erp_invoice_upload"
