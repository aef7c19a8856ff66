"""Helpers the flow tests share: order postings, booking through the real F1 operators, ERP feeds, clocks."""

from __future__ import annotations

import itertools
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from omni_erp.hooks.erp import ErpHook
from omni_erp.ledger import Ledger
from omni_erp.operators.inbox import OmniInboxClaimOperator
from omni_erp.operators.invoice_upload import ErpEInvoiceFetchOperator
from omni_erp.operators.order_posting import ErpSalesOrderCreateOperator, ErpSalesOrderMapOperator

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CREATE, CANCEL = "OUTWARD_ORDER_CREATE", "OUTWARD_ORDER_CANCEL"
CANCEL_SO = "POST /api/v1/sales-orders/{salesOrderId}/cancel"
CANCEL_IRN_CALL = "POST /api/v1/e-invoices/cancel-irn"
CREDIT_NOTE_CALL = "POST /api/v1/credit-notes"
ERP_WRITES = (CANCEL_SO, CANCEL_IRN_CALL, CREDIT_NOTE_CALL)
DAY = timedelta(hours=24)

_setup_batches = itertools.count(1)


def create_posting(message_id: int, order_code: str) -> dict:
    """The CREATE fixture (SKU 460491724004 x2 at 1120.00, 460491724011 x1 at 3299.00) for another order."""
    raw = json.loads((FIXTURES / "outward_order_create.json").read_text())
    raw.update(messageId=message_id, orderCode=order_code, parentOrderCode=order_code)
    raw["orderCustomAttributes"]["attribute1"] = f"40426{message_id:05d}"
    for n, item in enumerate(raw["orderItems"], start=1):
        item["orderItemCode"] = f"{order_code}-{n}"
    return raw


def store(ledger: Ledger, *postings: dict) -> None:
    for p in postings:
        assert ledger.record_posting(
            message_id=str(p["messageId"]), event_type=p["eventType"], business_key=p["orderCode"],
            order_code=p["orderCode"], payload=p,
        ) == "stored"


def book(ledger: Ledger, *creates: dict, create: bool = True) -> str:
    """Run the real F1 operators on ``creates`` in a batch of their own; returns that batch id."""
    store(ledger, *creates)
    batch = f"setup/f1-{next(_setup_batches)}"
    OmniInboxClaimOperator(task_id="c", batch_id=batch, event_types=[CREATE]).execute(context={})
    ErpSalesOrderMapOperator(task_id="m", batch_id=batch).execute(context={})
    if create:
        ErpSalesOrderCreateOperator(task_id="b", batch_id=batch).execute(context={})
    return batch


def wait_for_einvoices(count: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(ErpHook().einvoices_since(0, limit=500).items) < count:
        assert time.monotonic() < deadline, f"the ERP did not publish {count} e-invoice(s)"
        time.sleep(0.05)


def record_invoices(count: int) -> dict:
    """Wait until the ERP published ``count`` e-invoices and record them with the real F2 fetch operator."""
    wait_for_einvoices(count)
    return ErpEInvoiceFetchOperator(task_id="f2", batch_id=f"setup/f2-{next(_setup_batches)}").execute(context={})


def set_clocks(monkeypatch, erp, at: datetime, *, erp_at: datetime | None = None) -> None:
    """Move our clock (OMNI_ERP_CLOCK_OFFSET_S) and the ERP sandbox's clock so that "now" is ``at``."""
    monkeypatch.setenv("OMNI_ERP_CLOCK_OFFSET_S", str((at - datetime.now(UTC)).total_seconds()))
    erp.configure(clock_offset_s=((erp_at or at) - datetime.now(UTC)).total_seconds())


def erp_writes(erp) -> dict[str, int]:
    counts = erp.state()["request_counts"]
    return {name: counts.get(name, 0) for name in ERP_WRITES}


def invoice_of(erp, order_code: str) -> dict:
    [invoice] = [i for i in erp.state()["invoices"] if i["orderCode"] == order_code]
    return invoice


def sales_order_of(erp, order_code: str) -> dict:
    [order] = [o for o in erp.state()["sales_orders"] if o["orderCode"] == order_code]
    return order


def crash_first_finish(monkeypatch) -> None:
    """Make the next ``Ledger.finish_posting`` raise, as a worker lost between two ledger writes would."""
    real_finish = Ledger.finish_posting
    crashes = iter([True])

    def finish_then_crash(self, *args, **kwargs):
        if next(crashes, False):
            raise RuntimeError("worker lost between two ledger writes")
        return real_finish(self, *args, **kwargs)

    monkeypatch.setattr(Ledger, "finish_posting", finish_then_crash)
