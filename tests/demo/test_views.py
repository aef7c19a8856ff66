"""The demo's per-ERP views: what each ERP sandbox holds, in the words and keys the ledger uses.

Each case books documents through the adapter the connection type picks (as the DAGs do) against the real
sandbox on 127.0.0.1, then checks the view names exactly the documents the adapter answered with.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from fastapi import FastAPI

from omni_erp.demo.views import ERP_VIEWS
from omni_erp.hooks.adapters import erp_adapter
from omni_erp.models.erp import DocumentLine, ReturnOrderRequest, SalesOrderRequest
from omni_erp.sandbox.erpnext import create_erpnext_sandbox
from omni_erp.sandbox.serve import serve_in_thread
from omni_erp.sandbox.tally import create_tally_sandbox
from tests.conftest import Sandbox

SKU = "460491724011"
ERPS: dict[str, tuple[Callable[[], FastAPI], dict[str, Any]]] = {
    "erpnext": (lambda: create_erpnext_sandbox(api_key="k", api_secret="s", invoice_delay_s=0), {"login": "k", "password": "s"}),
    "tally": (lambda: create_tally_sandbox(company="Views Co", invoice_delay_s=0), {"login": "Views Co"}),
}


def _order(code: str) -> SalesOrderRequest:
    return SalesOrderRequest.model_validate({
        "orderCode": code, "poNumber": "4042640641", "buyerCode": "AJIO-RRL", "orderDate": "2026-12-03T10:00:00.000+05:30",
        "lines": [{"sku": SKU, "quantity": 2, "unitPrice": "1120.00"}], "totalAmount": "2240.00",
    })


@pytest.mark.parametrize("kind", sorted(ERPS))
def test_the_view_names_the_documents_the_adapter_booked(kind: str, monkeypatch, fast_retries) -> None:
    build, fields = ERPS[kind]
    with serve_in_thread(build()) as server:
        monkeypatch.setenv("AIRFLOW_CONN_ERP_DEFAULT", json.dumps({"conn_type": kind, "host": server.url, **fields}))
        sandbox, adapter, view = Sandbox(server.url), erp_adapter("erp_default"), ERP_VIEWS[kind]
        orders = [adapter.create_sales_order(_order(code), idempotency_key=f"create:{code}").document
                  for code in ("FN0000000001", "FN0000000002")]
        invoices = {i.order_code: i for i in adapter.einvoices_since(0).items}
        adapter.cancel_irn(invoices["FN0000000001"].invoice_number, "order cancelled", idempotency_key="cancel:1")
        returned = adapter.create_return_order(
            ReturnOrderRequest(returnOrderCode="RTN-2", orderCode="FN0000000002",
                               invoiceNumber=invoices["FN0000000002"].invoice_number, reason="customer return",
                               lines=[DocumentLine(sku=SKU, quantity=1, unitPrice=Decimal("1120.00"))]),
            idempotency_key="return:RTN-2",
        ).document
        notes = adapter.credit_notes_since(0).items

        seen = view(sandbox.state())
        writes = seen["write_calls"]
        adapter.einvoices_since(0)  # a read only
        assert view(sandbox.state())["write_calls"] == writes

    assert {(o["salesOrderId"], o["orderCode"]) for o in seen["sales_orders"]} == {(o.sales_order_id, o.order_code) for o in orders}
    assert {(i["invoiceNumber"], i["orderCode"], i["status"]) for i in seen["invoices"]} == {
        (invoices["FN0000000001"].invoice_number, "FN0000000001", "CANCELLED"),
        (invoices["FN0000000002"].invoice_number, "FN0000000002", "ACTIVE"),
    }
    assert [i["irn"] for i in seen["invoices"]] == [invoices[i["orderCode"]].irn for i in seen["invoices"]]
    assert [r["returnOrderId"] for r in seen["return_orders"]] == [returned.return_order_id]
    assert [c["creditNoteNumber"] for c in seen["credit_notes"]] == [n.credit_note_number for n in notes]
    assert len(notes) == 1  # the return order's credit note, registered
    assert seen["duplicates"] == {"sales_order": 0}
