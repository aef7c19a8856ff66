"""Later postings of an Ajio order, derived from its CREATE posting: cancel, complete, return.

Shapes follow ``samples/outward_order_cancel.json``, ``outward_order_complete_partial.json`` and
``return_order_posting.json``. Used by the demo and the flow tests to walk an order through its life.
"""

from __future__ import annotations

import copy
import zlib
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from omni_erp.timeutil import parse_datetime, to_omni

GST_RATE_LOW, GST_RATE_HIGH, GST_THRESHOLD = Decimal(5), Decimal(12), Decimal(1000)  # illustrative apparel slabs


def _later(posting: dict[str, Any], minutes: int) -> str:
    base = parse_datetime(posting.get("eventTime")) or datetime.now().astimezone()
    return to_omni(base + timedelta(minutes=minutes))


def _envelope(create: dict[str, Any], message_id: int, event_type: str, minutes: int) -> dict[str, Any]:
    posting = copy.deepcopy(create)
    posting.update(messageId=message_id, eventType=event_type, eventTime=_later(create, minutes), shipments=[])
    return posting


def cancel_posting(create: dict[str, Any], message_id: int, *, minutes_later: int = 90) -> dict[str, Any]:
    """``OUTWARD_ORDER_CANCEL``: for Ajio only full cancellations are sent, so every unit is cancelled."""
    posting = _envelope(create, message_id, "OUTWARD_ORDER_CANCEL", minutes_later)
    for item in posting["orderItems"]:
        item["cancelledQuantity"] = item["orderedQuantity"]
    return posting


def _shipment_item(item: dict[str, Any], quantity: int) -> dict[str, Any]:
    price = Decimal(str(item["sellingPricePerUnit"]))
    rate = GST_RATE_LOW if price <= GST_THRESHOLD else GST_RATE_HIGH
    base = (price * 100 / (100 + rate)).quantize(Decimal("0.01"), ROUND_HALF_UP)
    tax = price - base
    return {
        "orderItemCode": item["orderItemCode"],
        "channelSkuCode": item["channelSkuCode"],
        "barcode": item.get("barcode"),
        "quantity": quantity,
        "sellingPricePerUnit": float(price),
        "sellingPriceTotal": float(price * quantity),
        "baseSellingPricePerUnit": float(base),
        "baseSellingPriceTotal": float(base * quantity),
        "netTaxAmountPerUnit": float(tax),
        "netTaxAmountTotal": float(tax * quantity),
        "channelDiscount": 0,
        "shippingChargePerUnit": 0,
        "taxItems": [{"type": "IGST", "rate": float(rate), "taxPerUnit": float(tax), "taxTotal": float(tax * quantity)}],
    }


def complete_posting(
    create: dict[str, Any],
    message_id: int,
    *,
    cancelled_after_invoice: dict[str, int] | None = None,
    invoice_number: str | None = None,
    irn: str | None = None,
    split_shipments: bool = False,
    minutes_later: int = 600,
) -> dict[str, Any]:
    """``OUTWARD_ORDER_COMPLETE`` with the shipments that left the warehouse.

    Shipped units per SKU = ordered - cancelled at CREATE - ``cancelled_after_invoice``; those extra
    cancellations also appear in ``cancelledQuantity``. With ``split_shipments`` the units go out in two
    shipments (codes ``SHP-<orderCode>-1`` and ``-2``).
    """
    posting = _envelope(create, message_id, "OUTWARD_ORDER_COMPLETE", minutes_later)
    extra = dict(cancelled_after_invoice or {})
    lines = []
    for item in posting["orderItems"]:
        more = min(extra.pop(item["channelSkuCode"], 0), item["orderedQuantity"] - item["cancelledQuantity"])
        item["cancelledQuantity"] += more
        shipped = item["orderedQuantity"] - item["cancelledQuantity"]
        if shipped > 0:
            lines.append((item, shipped))
    if extra:
        raise ValueError(f"SKUs not in the order: {sorted(extra)}")
    groups = [lines[: len(lines) // 2 or 1], lines[len(lines) // 2 or 1 :]] if split_shipments else [lines]
    code = posting["orderCode"]
    posting["shipments"] = [
        {
            "shipmentCode": f"SHP-{code}-{n}",
            "locationCode": posting.get("locationCode"),
            "shipmentStatus": "DISPATCHED",
            "externalInvoiceId": invoice_number,
            "irn": irn,
            "awbNumber": f"AWB{zlib.crc32(f'{code}-{n}'.encode()) % 10**8:08d}",
            "transporter": "Courier X",
            "shipmentItems": [_shipment_item(item, quantity) for item, quantity in group],
        }
        for n, group in enumerate(groups, start=1)
        if group
    ]
    return posting


def return_posting(
    create: dict[str, Any],
    message_id: int,
    *,
    return_order_code: str,
    units: list[tuple[str, str | None]],
    return_type: str = "CUSTOMER_RETURN",
    minutes_later: int = 4 * 24 * 60,
) -> dict[str, Any]:
    """``RETURN_ORDER_COMPLETE`` for ``units`` = [(channelSkuCode, qcStatus or None)], one item per unit."""
    prices = {item["channelSkuCode"]: item["sellingPricePerUnit"] for item in create["orderItems"]}
    return {
        "messageId": message_id,
        "eventType": "RETURN_ORDER_COMPLETE",
        "eventTime": _later(create, minutes_later),
        "locationCode": create.get("locationCode"),
        "channelName": create.get("channelName"),
        "returnOrderCode": return_order_code,
        "forwardOrderCode": create["orderCode"],
        "returnOrderType": return_type,
        "returnCreationTime": _later(create, minutes_later - 60),
        "paymentMethod": create.get("paymentMethod"),
        "items": [
            {
                "itemCode": f"{return_order_code}-{n}",
                "channelSkuCode": sku,
                "returnReason": "SIZE_ISSUE" if return_type == "CUSTOMER_RETURN" else "UNDELIVERED",
                "returnOrderItemStatus": "RECEIVED",
                "qcStatus": qc,
                "qcReason": None if qc == "PASS" else ("STAIN_DAMAGE" if qc == "FAIL" else None),
                "imageUrls": [],
                "sellingPricePerUnit": prices[sku],
                "isExcess": False,
            }
            for n, (sku, qc) in enumerate(units, start=1)
        ],
        "shipments": [],
    }
