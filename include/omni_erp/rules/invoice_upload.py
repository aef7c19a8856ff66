"""F2 business rule: does an ERP e-invoice agree with its order in the ledger (domain.md decision 4)?"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from omni_erp.rules import Classified
from omni_erp.states import (
    DOC_MISMATCH,
    DOC_READY,
    DOC_SKIPPED,
    DOC_UNMATCHED,
    ORDER_BOOKED,
    ORDER_CANCELLED,
    ORDER_INVOICED,
    ORDER_READY,
)

if TYPE_CHECKING:
    from omni_erp.models.erp import EInvoice

TOTAL_TOLERANCE = Decimal("1.00")  # domain.md decision 4: one rupee per invoice for rounding


def match_invoice(invoice: EInvoice, order: dict[str, Any] | None) -> Classified:
    """Decide what happens to an e-invoice given its order in the ledger (None when unknown).

    Ready only when the invoice is for an order waiting for it and agrees with it: same Ajio PO, only
    SKUs of the order, no SKU above its booked quantity, and a total within one rupee of the invoiced
    quantities at the order's prices (domain.md decision 4).
    """
    if order is None:
        return DOC_UNMATCHED, f"no order {invoice.order_code} in the ledger for e-invoice {invoice.invoice_number}"
    if order["state"] == ORDER_CANCELLED:
        return DOC_SKIPPED, f"order {order['order_code']} was cancelled in Omni ({order['cancel_route'] or 'route unknown'})"
    if invoice.status != "ACTIVE":
        return DOC_SKIPPED, f"e-invoice is {invoice.status} in the ERP"
    known = order["erp_invoice_number"]
    if known and known != invoice.invoice_number:
        return DOC_MISMATCH, f"order {order['order_code']} is already invoiced as {known}"
    if order["state"] not in (ORDER_READY, ORDER_BOOKED, ORDER_INVOICED):
        return DOC_MISMATCH, f"order {order['order_code']} is {order['state']}, not waiting for an e-invoice"
    if order["erp_sales_order_id"] and order["erp_sales_order_id"] != invoice.sales_order_id:
        return DOC_MISMATCH, (
            f"e-invoice is for sales order {invoice.sales_order_id}, the order was booked as {order['erp_sales_order_id']}"
        )

    problems = []
    if invoice.po_number != order["po_number"]:
        problems.append(f"PO {invoice.po_number} differs from the order's PO {order['po_number']}")
    booked: Counter[str] = Counter()
    price_by_sku: dict[str, Decimal] = {}
    price_by_line: dict[str, Decimal] = {}
    for line in order["lines"]:
        booked[line["sku"]] += int(line["quantity"])
        price_by_sku.setdefault(line["sku"], Decimal(str(line["unitPrice"])))
        price_by_line[line["lineCode"]] = Decimal(str(line["unitPrice"]))
    invoiced: Counter[str] = Counter()
    for line in invoice.lines:
        invoiced[line.sku] += line.quantity
    unknown = sorted(sku for sku in invoiced if sku not in booked)
    if unknown:
        problems.append(f"SKU not in the order: {', '.join(unknown)}")
    problems += [
        f"SKU {sku}: {units} invoiced, {booked[sku]} booked" for sku, units in invoiced.items() if sku in booked and units > booked[sku]
    ]
    if not unknown:
        expected = sum(
            (line.quantity * price_by_line.get(line.line_code or "", price_by_sku[line.sku]) for line in invoice.lines),
            Decimal(0),
        )
        if abs(invoice.total_value - expected) > TOTAL_TOLERANCE:
            problems.append(
                f"totalValue {invoice.total_value:.2f} differs from {expected:.2f} (invoiced units at the order's prices) "
                f"by {abs(invoice.total_value - expected):.2f}, more than {TOTAL_TOLERANCE}"
            )
    if problems:
        return DOC_MISMATCH, "; ".join(problems)
    return DOC_READY, None
