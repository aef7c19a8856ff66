"""One view of the ERP's documents for the demo's one-to-one checks, whichever ERP sandbox plays the ERP.

Each function reads one sandbox's ``/_sandbox/state`` and answers the generic sandbox's shape, keyed as the
ledger keys documents: ``sales_orders`` (``salesOrderId``, ``orderCode``, ``status``), ``invoices``
(``invoiceNumber``, ``orderCode``, ``irn``, ``status`` ACTIVE or CANCELLED), ``credit_notes``
(``creditNoteNumber``, ``orderCode``), ``return_orders`` (``returnOrderId``, ``returnOrderCode``), plus
``duplicates`` (``sales_order``: bookings refused or answered as duplicates) and ``write_calls`` (requests
that can change the ERP's books, for "the final re-run wrote nothing new").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ErpView = dict[str, Any]


def generic_view(state: dict[str, Any]) -> ErpView:
    """The generic REST sandbox already speaks the contract's words; writes are its POSTs."""
    writes = sum(n for endpoint, n in state["request_counts"].items() if endpoint.startswith("POST"))
    return {**state, "write_calls": writes}


def erpnext_view(state: dict[str, Any]) -> ErpView:
    """ERPNext: Sales Orders; Sales Invoices (the e-invoice is the invoice's IRN); return Sales Invoices are
    credit notes, and those carrying ``omni_return_order_code`` are also the return orders F5 books.
    Writes are POSTs (inserts and ``/api/method`` calls); reads are GETs."""
    credit_notes = [d for d in state["credit_notes"] if d.get("docstatus") != 2]
    return {
        "sales_orders": [
            {"salesOrderId": d["name"], "orderCode": d.get("omni_order_code"),
             "status": "CANCELLED" if d.get("docstatus") == 2 else "BOOKED"}
            for d in state["sales_orders"]
        ],
        "invoices": [
            {"invoiceNumber": d["name"], "orderCode": d.get("omni_order_code"),
             "irn": d.get("irn") or _cancelled_irn(state, d["name"]),
             "status": "CANCELLED" if d.get("einvoice_status") == "Cancelled" or d.get("docstatus") == 2 else "ACTIVE"}
            for d in state["sales_invoices"]
        ],
        "credit_notes": [{"creditNoteNumber": d["name"], "orderCode": d.get("omni_order_code")} for d in credit_notes],
        "return_orders": [
            {"returnOrderId": d["name"], "returnOrderCode": d["omni_return_order_code"]}
            for d in credit_notes if d.get("omni_return_order_code")
        ],
        "duplicates": {"sales_order": state["duplicates"].get("Sales Order", 0)},
        "write_calls": sum(n for endpoint, n in state["request_counts"].items() if endpoint.startswith("POST")),
    }


def _cancelled_irn(state: dict[str, Any], invoice_name: str) -> str | None:
    """India Compliance blanks a cancelled invoice's ``irn``; its e-Invoice Log (named by the IRN) keeps it."""
    return next((log["name"] for log in state["einvoice_logs"] if log.get("sales_invoice") == invoice_name), None)


def tally_view(state: dict[str, Any]) -> ErpView:
    """TallyPrime: Sales Order, Sales (the e-invoice) and Credit Note vouchers; a Credit Note carrying a return
    order code is also the return order. Cancelled credit notes (a racing duplicate the adapter cancels) are
    out, as in the adapter's feed. Every request is a POST to ``/`` (reads too), so writes are counted from the
    books instead: the highest alter id moves on every voucher created, cancelled or registered."""
    vouchers = state["vouchers"]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for v in vouchers:
        by_type.setdefault(v["voucherType"], []).append(v)
    orders = by_type.get("Sales Order", [])
    order_code_of = {v["number"]: v["orderCode"] for v in orders}
    credit_notes = [v for v in by_type.get("Credit Note", []) if not v["cancelled"]]
    return {
        "sales_orders": [
            {"salesOrderId": v["number"], "orderCode": v["orderCode"], "status": "CANCELLED" if v["cancelled"] else "BOOKED"}
            for v in orders
        ],
        "invoices": [
            {"invoiceNumber": v["number"], "orderCode": order_code_of.get(v["orderNo"], v["orderCode"]), "irn": v["irn"],
             "status": "CANCELLED" if v["cancelled"] else "ACTIVE"}
            for v in by_type.get("Sales", [])
        ],
        "credit_notes": [{"creditNoteNumber": v["number"], "orderCode": v["orderCode"]} for v in credit_notes],
        "return_orders": [
            {"returnOrderId": v["number"], "returnOrderCode": v["returnOrderCode"]} for v in credit_notes if v["returnOrderCode"]
        ],
        "duplicates": {"sales_order": state["duplicates"].get("Sales Order", 0)},
        "write_calls": (len(vouchers), max((v["alterId"] for v in vouchers), default=0)),
    }


ERP_VIEWS: dict[str, Callable[[dict[str, Any]], ErpView]] = {
    "generic": generic_view,
    "erpnext": erpnext_view,
    "tally": tally_view,
}
