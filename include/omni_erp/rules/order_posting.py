"""F1 business rules: turn an ``OUTWARD_ORDER_CREATE`` posting into an ERP sales order (domain.md decisions 3-4)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from omni_erp import settings
from omni_erp.exceptions import PayloadError
from omni_erp.models.erp import DocumentLine, SalesOrderRequest
from omni_erp.models.omni import OutwardOrderPosting

DEFAULT_BUYER_CODE = "AJIO"


@dataclass(frozen=True)
class PlannedSalesOrder:
    """What the ledger records for an order, and the ERP request (None when nothing is left to invoice)."""

    order_code: str
    po_number: str
    lines: list[dict[str, Any]]
    total_amount: Decimal
    request: SalesOrderRequest | None


def value_at(data: Any, dotted_path: str) -> Any:
    """Read ``a.b.0.c`` from nested dicts and lists; None when any step is missing."""
    current = data
    for part in dotted_path.split("."):
        if isinstance(current, dict):
            current = current.get(part)
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return None
        if current is None:
            return None
    return current


def plan_sales_order(posting: OutwardOrderPosting, raw: dict[str, Any], *, po_path: str | None = None) -> PlannedSalesOrder:
    """Validate a CREATE posting and map it to the ERP sales order.

    Quantity per line = ordered - cancelled; lines with nothing left are left out, and an order with
    nothing left gets no ERP request. The Ajio PO number is read from ``po_path`` and never guessed.

    :raises PayloadError: with a reason a person can act on.
    """
    po_path = po_path or settings.po_number_path()
    if posting.event_type != settings.EVENT_CREATE:
        raise PayloadError(f"expected {settings.EVENT_CREATE}, got {posting.event_type}")
    po_value = value_at(raw, po_path)
    po_number = str(po_value).strip() if po_value is not None else ""
    if not po_number:
        raise PayloadError(f"Ajio PO number missing: nothing at '{po_path}' in the posting (forwardPurchaseOrder)")
    if not posting.order_items:
        raise PayloadError("posting has no orderItems")

    ledger_lines: list[dict[str, Any]] = []
    request_lines: list[DocumentLine] = []
    total = Decimal(0)
    for item in posting.order_items:
        quantity = item.quantity_to_invoice
        ledger_lines.append(
            {
                "lineCode": item.order_item_code,
                "sku": item.channel_sku_code,
                "ordered": item.ordered_quantity,
                "cancelled": item.cancelled_quantity,
                "quantity": quantity,
                "unitPrice": str(item.selling_price_per_unit),
            }
        )
        if quantity > 0:
            request_lines.append(
                DocumentLine(
                    lineCode=item.order_item_code,
                    sku=item.channel_sku_code,
                    quantity=quantity,
                    unitPrice=item.selling_price_per_unit,
                )
            )
            total += item.selling_price_per_unit * quantity

    request = None
    if request_lines:
        request = SalesOrderRequest(
            orderCode=posting.order_code,
            poNumber=po_number,
            buyerCode=posting.partner_code or DEFAULT_BUYER_CODE,
            locationCode=posting.location_code,
            orderDate=posting.order_time,
            lines=request_lines,
            totalAmount=total,
        )
    return PlannedSalesOrder(posting.order_code, po_number, ledger_lines, total, request)
