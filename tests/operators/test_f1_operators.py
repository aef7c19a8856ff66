"""F1 operators on a real ledger and the ERP sandbox: idempotency, dead letters, compact XCom."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from omni_erp.hooks.erp import ErpHook
from omni_erp.ledger import Ledger
from omni_erp.models.erp import SalesOrderRequest
from omni_erp.operators.inbox import OmniInboxClaimOperator
from omni_erp.operators.order_posting import ErpSalesOrderCreateOperator, ErpSalesOrderMapOperator
from omni_erp.operators.report import LedgerBatchReportOperator
from tests.flows import store

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CREATE = "OUTWARD_ORDER_CREATE"
BATCH = "omni_order_posting/manual__test"


@pytest.fixture()
def ledger(ledger_path) -> Ledger:
    return Ledger.sqlite(ledger_path)


def _posting(message_id: int, order_code: str, **changes) -> dict:
    raw = json.loads((FIXTURES / "outward_order_create.json").read_text())
    raw.update(messageId=message_id, orderCode=order_code, parentOrderCode=order_code, **changes)
    return raw


def _run(operator_class, **kwargs):
    return operator_class(task_id="t", batch_id=BATCH, **kwargs).execute(context={})


def _run_f1(**create_kwargs):
    claim = _run(OmniInboxClaimOperator, event_types=[CREATE])
    mapped = _run(ErpSalesOrderMapOperator)
    created = _run(ErpSalesOrderCreateOperator, **create_kwargs)
    return claim, mapped, created


def test_f1_books_orders_and_xcom_holds_only_ids_and_counts(erp, ledger):
    store(ledger, _posting(1, "FN0000000001"), _posting(2, "FN0000000002"))
    claim, mapped, created = _run_f1()
    assert claim == {"batch_id": BATCH, "claimed": 2, "by_event_type": {CREATE: 2}, "retried": 0, "replayed": 0}
    assert mapped == {"batch_id": BATCH, "mapped": 2}
    assert created == {"batch_id": BATCH, "booked": 2}
    for summary in (claim, mapped, created):
        assert len(json.dumps(summary)) < 300 and "orderItems" not in json.dumps(summary)
    assert sorted(o["orderCode"] for o in erp.state()["sales_orders"]) == ["FN0000000001", "FN0000000002"]


def test_retried_create_task_never_books_twice(erp, ledger):
    store(ledger, _posting(1, "FN0000000001"))
    _run_f1()
    again = _run(ErpSalesOrderCreateOperator)  # Airflow retrying the task after it had finished its work
    assert again == {"batch_id": BATCH}
    assert len(erp.state()["sales_orders"]) == 1


def test_order_booked_before_a_crash_is_recorded_not_booked_again(erp, ledger):
    """The ERP booked the order but the worker died before the ledger heard: the replay returns it."""
    store(ledger, _posting(1, "FN0000000001"))
    _run(OmniInboxClaimOperator, event_types=[CREATE])
    _run(ErpSalesOrderMapOperator)
    order = ledger.get_order("FN0000000001")
    ErpHook().create_sales_order(SalesOrderRequest.model_validate(order["erp_request"]), idempotency_key="create:FN0000000001")
    created = _run(ErpSalesOrderCreateOperator)
    assert created == {"batch_id": BATCH, "already_booked": 1}
    assert len(erp.state()["sales_orders"]) == 1
    assert ledger.get_order("FN0000000001")["erp_sales_order_id"] == erp.state()["sales_orders"][0]["salesOrderId"]


def test_redelivered_create_under_a_new_message_id_is_a_duplicate(erp, ledger):
    store(ledger, _posting(1, "FN0000000001"), _posting(2, "FN0000000001", eventTime="2026-11-20T10:20:00.000+05:30"))
    _, mapped, created = _run_f1()
    assert mapped == {"batch_id": BATCH, "duplicate_order": 1, "mapped": 1}
    assert created["booked"] == 1
    assert len(erp.state()["sales_orders"]) == 1


def test_missing_po_and_zero_quantity_are_not_booked(erp, ledger):
    no_po = _posting(1, "FN0000000001")
    del no_po["orderCustomAttributes"]["attribute1"]
    all_cancelled = _posting(2, "FN0000000002")
    for item in all_cancelled["orderItems"]:
        item["cancelledQuantity"] = item["orderedQuantity"]
    store(ledger, no_po, all_cancelled)
    _run(OmniInboxClaimOperator, event_types=[CREATE])
    # A dead-lettered posting makes the task (and so the run) red, after every posting was mapped.
    with pytest.raises(AirflowFailException, match=r"1 item\(s\) dead-lettered, rejected or failed of 2") as failed:
        _run(ErpSalesOrderMapOperator)
    assert "'dead_letter': 1, 'nothing_to_invoice': 1" in str(failed.value)
    assert _run(ErpSalesOrderCreateOperator) == {"batch_id": BATCH}
    assert erp.state()["sales_orders"] == []
    [dead] = ledger.dead_letters("order_posting")
    assert dead["message_id"] == "1" and "Ajio PO number missing" in dead["reason"]
    assert ledger.get_order("FN0000000002")["state"] == "nothing_to_invoice"
    with pytest.raises(AirflowFailException, match="1 of 2 posting"):
        _run(LedgerBatchReportOperator)


def test_erp_rejection_is_dead_lettered_with_the_erps_message(erp, ledger):
    store(ledger, _posting(1, "FN0000000001"))
    _run(OmniInboxClaimOperator, event_types=[CREATE])
    _run(ErpSalesOrderMapOperator)
    erp.configure(fail_next=[400])  # the ERP refuses the order (e.g. an unknown SKU in its item master)
    with pytest.raises(AirflowFailException, match=r"1 item\(s\) dead-lettered, rejected or failed of 1"):
        _run(ErpSalesOrderCreateOperator)
    [dead] = ledger.dead_letters("order_posting")
    assert dead["reason"].startswith("ERP rejected the sales order:")
    assert ledger.get_order("FN0000000001")["state"] == "rejected_by_erp"


def test_erp_outage_defers_postings_and_the_report_fails_the_run(erp, ledger):
    store(ledger, *[_posting(i, f"FN000000000{i}") for i in range(1, 6)])
    erp.configure(error_rate=1.0)
    _run(OmniInboxClaimOperator, event_types=[CREATE])
    _run(ErpSalesOrderMapOperator)
    with pytest.raises(AirflowFailException, match="5 item\\(s\\) deferred"):
        # One at a time: "in a row" is then the batch order (the pooled case: tests/operators/test_concurrency.py).
        _run(ErpSalesOrderCreateOperator, max_consecutive_unavailable=2, max_in_flight=1)
    # Only two orders were tried before the circuit opened; the other three were not attempted.
    sales_order_calls = [c for c in ledger.calls() if c["operation"] == "create_sales_order"]
    assert len({c["idempotency_key"] for c in sales_order_calls}) == 2
    with pytest.raises(AirflowFailException, match="5 of 5 posting"):
        _run(LedgerBatchReportOperator)


def test_report_releases_postings_a_failed_run_still_holds(ledger):
    store(ledger, _posting(1, "FN0000000001"))
    _run(OmniInboxClaimOperator, event_types=[CREATE])
    with pytest.raises(AirflowFailException):
        _run(LedgerBatchReportOperator)
    [row] = ledger.postings()
    assert row["state"] == "pending" and row["lease_until"] is None
    assert [p.message_id for p in ledger.claim_postings(event_types=[CREATE], batch_id="next-run")] == ["1"]


@pytest.mark.parametrize("state", ["upload_failed", "unmatched", "mismatch", "invalid"])
def test_report_fails_the_run_for_a_document_it_could_not_upload(ledger, state):
    ledger.record_document(
        doc_type="invoice", doc_number="RB2627/000001", order_code="FN0000000001", related_code=None, seq=1,
        payload={}, state=state, reason="Omni refused it", batch_id=BATCH,
    )
    ledger.record_document(
        doc_type="invoice", doc_number="RB2627/000002", order_code="FN0000000002", related_code=None, seq=2,
        payload={}, state="uploaded", batch_id=BATCH,
    )
    with pytest.raises(AirflowFailException, match=rf"1 of 2 ERP document\(s\) were not uploaded \(invoice 'RB2627/000001': {state}"):
        _run(LedgerBatchReportOperator)


def test_report_of_a_clean_batch_succeeds_with_its_counts(ledger):
    ledger.record_document(
        doc_type="invoice", doc_number="RB2627/000002", order_code="FN0000000002", related_code=None, seq=2,
        payload={}, state="uploaded", batch_id=BATCH,
    )
    assert _run(LedgerBatchReportOperator) == {
        "batch_id": BATCH, "postings": 0, "documents": 1, "by_outcome": {"invoice:uploaded": 1}
    }
