"""SLA and failure alerts: logged always, and posted to the omni_erp_alerts webhook when it is configured."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from fastapi import FastAPI, Request

from omni_erp.alerts import deadline_missed, task_failed
from omni_erp.sandbox.serve import serve_in_thread


@pytest.fixture()
def webhook(monkeypatch):
    received: list[dict] = []
    app = FastAPI()

    @app.post("/hook")
    async def hook(request: Request) -> dict:
        received.append(await request.json())
        return {}

    with serve_in_thread(app) as server:
        monkeypatch.setenv("AIRFLOW_CONN_OMNI_ERP_ALERTS", json.dumps({"conn_type": "http", "host": f"{server.url}/hook"}))
        yield received


def test_deadline_callback_runs_in_the_triggerer_harness_and_posts_the_alert(webhook):
    """Run the callback the way the triggerer does (CallbackTrigger), per airflow-3.3-notes.md section 1.5."""
    from airflow.triggers.callback import CallbackTrigger

    context = {"dag_run": {"dag_id": "omni_order_posting", "dag_run_id": "scheduled__x"}, "deadline": {"deadline_time": "T"}}

    async def collect():
        trigger = CallbackTrigger("omni_erp.alerts.deadline_missed", {"flow": "f1", "context": context})
        return [event async for event in trigger.run()]

    events = asyncio.run(collect())
    assert "SUCCESS" in str(events[-1].payload), events
    assert webhook == [
        {"kind": "deadline_missed", "flow": "f1", "dag_id": "omni_order_posting", "run_id": "scheduled__x",
         "detail": "run not finished by T"}
    ]


def test_deadline_callback_without_webhook_only_logs(monkeypatch, caplog):
    monkeypatch.delenv("AIRFLOW_CONN_OMNI_ERP_ALERTS", raising=False)
    caplog.set_level(logging.ERROR, logger="omni_erp.alerts")
    asyncio.run(deadline_missed("f2", context={"dag_run": {"dag_id": "erp_invoice_upload"}}))
    assert "SLA missed" in caplog.text and "erp_invoice_upload" in caplog.text


def test_task_failure_callback_names_the_task_and_reason(webhook):
    class TI:
        dag_id, task_id = "omni_order_posting", "create_sales_orders"

    class Run:
        run_id = "manual__1"

    task_failed({"ti": TI(), "dag_run": Run(), "params": {"flow": "f1"}, "exception": RuntimeError("ERP down")})
    assert webhook == [
        {"kind": "task_failed", "flow": "f1", "dag_id": "omni_order_posting", "run_id": "manual__1",
         "detail": "create_sales_orders: ERP down"}
    ]
