"""omni_erp_sla_watch with dag.test(): each business SLA breach alerted once across runs, re-sent when the webhook failed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from airflow.sdk.exceptions import AirflowFailException

from omni_erp.ledger import Ledger
from omni_erp.ledger.queries import ReconciliationQueries
from omni_erp.operators.inbox import OmniInboxClaimOperator
from omni_erp.operators.order_posting import ErpSalesOrderMapOperator
from omni_erp.rules import sla
from omni_erp.states import DOC_INVOICE, DOC_UPLOAD_FAILED, ORDER_INVOICED
from tests.flows import CANCEL, CREATE, book, create_posting, record_invoices, store, wait_for_einvoices

pytestmark = pytest.mark.integration

WAITING = "FN0000000001"      # booked, its e-invoice held by the ERP
NO_PO = "FN0000000002"        # CREATE without an Ajio PO: dead-lettered by F1
CANCELLING = "FN0000000003"   # e-invoiced, its CANCEL posting waiting


def _set_clock(monkeypatch, at: datetime) -> None:
    monkeypatch.setenv("OMNI_ERP_CLOCK_OFFSET_S", str((at - datetime.now(UTC)).total_seconds()))


def _ledger_with_one_breach_of_each_kind(erp, ledger: Ledger) -> datetime:
    """The real F1 and F2 operators on the ERP sandbox; returns the IRN acknowledgement time of CANCELLING."""
    erp.configure(invoice_hold=[WAITING])
    book(ledger, create_posting(1, WAITING), create_posting(3, CANCELLING))
    wait_for_einvoices(1, timeout_s=20)  # generous: on a loaded machine the sandbox e-invoices later
    record_invoices(1)  # CANCELLING's e-invoice: the order becomes invoiced, its IRN window starts
    no_po = create_posting(2, NO_PO)
    del no_po["orderCustomAttributes"]["attribute1"]
    store(ledger, no_po)
    OmniInboxClaimOperator(task_id="c", batch_id="setup/no-po", event_types=[CREATE]).execute(context={})
    with pytest.raises(AirflowFailException):
        ErpSalesOrderMapOperator(task_id="m", batch_id="setup/no-po").execute(context={})
    store(ledger, {"messageId": 4, "eventType": CANCEL, "orderCode": CANCELLING})  # not processed yet
    # Omni refused an upload (its 4xx is recorded on the document; F2 would do the same).
    ledger.record_document(doc_type=DOC_INVOICE, doc_number="INV-REFUSED-1", order_code="FN0000000009", related_code=None,
                           seq=None, payload={}, state=DOC_UPLOAD_FAILED, reason="BAD_DATA: Input validation failed")
    order = ledger.get_order(CANCELLING)
    assert order["state"] == ORDER_INVOICED and order["invoiced_at"] is not None
    return order["invoiced_at"]


def test_each_breach_is_alerted_once_with_its_order_codes_and_a_failed_alert_is_sent_by_the_next_run(
    erp, ledger_path, run_dag, webhook, monkeypatch
):
    ledger = Ledger.sqlite(ledger_path)
    invoiced_at = _ledger_with_one_breach_of_each_kind(erp, ledger)
    dag = run_dag("omni_erp_sla_watch")

    _set_clock(monkeypatch, invoiced_at + timedelta(hours=21))  # 3 h left to cancel the IRN
    first = dag()

    assert first.state == "success"
    alerts = webhook.by_rule()
    assert set(alerts) == {sla.NO_EINVOICE_UPLOADED, sla.UPLOAD_REJECTED, sla.CANCELLATION_NEAR_IRN_WINDOW, sla.DEAD_LETTERED}
    assert alerts[sla.NO_EINVOICE_UPLOADED]["order_codes"] == [WAITING, CANCELLING]  # CANCELLING: recorded, not uploaded
    assert alerts[sla.CANCELLATION_NEAR_IRN_WINDOW]["order_codes"] == [CANCELLING]
    assert "closes in 3.0 h" in alerts[sla.CANCELLATION_NEAR_IRN_WINDOW]["detail"]
    assert alerts[sla.DEAD_LETTERED]["order_codes"] == [NO_PO] and "PO" in alerts[sla.DEAD_LETTERED]["detail"]
    assert "INV-REFUSED-1" in alerts[sla.UPLOAD_REJECTED]["detail"] and "BAD_DATA" in alerts[sla.UPLOAD_REJECTED]["detail"]
    assert all(a["what_to_do"] for a in alerts.values())

    second = dag()  # nothing changed: every breach is still there, none is alerted again

    assert second.state == "success"
    assert len(webhook.sla_alerts()) == 4
    summary = dag.xcom(second, "check_sla")
    assert summary["alerted"] == {} and summary["still_open"][sla.CANCELLATION_NEAR_IRN_WINDOW] == 1

    # 26 days on: the cancel window has closed (that breach clears) and WAITING's e-invoice nears the IRP's
    # 30-day limit - but the webhook is down, so the run fails and nothing is recorded as alerted.
    _set_clock(monkeypatch, invoiced_at + timedelta(days=26))
    webhook.status = 503
    down = dag()

    assert down.state == "failed" and webhook.refused >= 1
    open_breaches = ReconciliationQueries(ledger).open_sla_breaches()
    assert sla.IRP_LIMIT_NEAR not in open_breaches and sla.CANCELLATION_NEAR_IRN_WINDOW not in open_breaches

    webhook.status = 200
    up = dag()

    assert up.state == "success"
    assert [a["rule"] for a in webhook.sla_alerts()[4:]] == [sla.IRP_LIMIT_NEAR]  # sent once, by the next run
    [irp] = webhook.sla_alerts()[4:]
    assert irp["order_codes"] == [WAITING] and "invoice for FN0000000001" in irp["detail"]
    assert dag.xcom(up, "check_sla")["alerted"] == {sla.IRP_LIMIT_NEAR: 1}
