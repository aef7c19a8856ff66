"""F3 business rule: which route a full cancellation of an Ajio order takes (domain.md decision 5)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from omni_erp.states import (
    CANCEL_CREDIT_NOTE,
    CANCEL_IRN,
    CANCEL_NOT_BOOKED,
    CANCEL_SALES_ORDER,
    ORDER_BOOKED,
    ORDER_CANCELLED,
    ORDER_COMPLETED,
    ORDER_COMPLETED_WITH_RETURN,
    ORDER_INVOICED,
    ORDER_NOTHING_TO_INVOICE,
    ORDER_PARTIALLY_SHIPPED,
    ORDER_READY,
    ORDER_REJECTED,
)

# Nothing exists in the ERP for these: F1 has not booked the order (or the ERP refused it).
NOT_BOOKED_STATES = frozenset({ORDER_READY, ORDER_NOTHING_TO_INVOICE, ORDER_REJECTED})
# Shipped, wholly or in part: Ajio allows no cancellation after packing (domain.md section 2, SOP).
CLOSED_STATES = frozenset({ORDER_COMPLETED, ORDER_COMPLETED_WITH_RETURN, ORDER_PARTIALLY_SHIPPED})

ALREADY_CANCELLED = "already_cancelled"
ORDER_CLOSED = "order_closed"


def cancellation_route(order: dict[str, Any] | None, *, at: datetime, irn_window: timedelta) -> str:
    """Decide what a full cancellation of ``order`` needs (domain.md decision 5).

    Returns a cancel route (``CANCEL_*``), ``ALREADY_CANCELLED`` or ``ORDER_CLOSED``. An invoiced order
    whose cancellation already started keeps its recorded route: once the IRN is cancelled in the ERP,
    a replay after the 24-hour mark must finish that route, not ask for a credit note as well.

    :param order: the ledger row, or None when no CREATE was seen.
    :param at: the current time (``timeutil.now()``).
    :param irn_window: how long after the IRN acknowledgement it can still be cancelled.
    :raises ValueError: for an order state this flow does not know.
    """
    if order is None or order["state"] in NOT_BOOKED_STATES:
        return CANCEL_NOT_BOOKED
    state = order["state"]
    if state == ORDER_CANCELLED:
        return ALREADY_CANCELLED
    if state in CLOSED_STATES:
        return ORDER_CLOSED
    if state == ORDER_BOOKED:
        return CANCEL_SALES_ORDER
    if state != ORDER_INVOICED:
        raise ValueError(f"order {order['order_code']} is in state {state!r}, which cancellation does not handle")
    if order.get("cancel_route") in (CANCEL_IRN, CANCEL_CREDIT_NOTE):
        return order["cancel_route"]
    invoiced_at = order.get("invoiced_at")
    if invoiced_at is None:
        return CANCEL_IRN  # no acknowledgement time recorded: the ERP decides (409 IRN_CANCEL_WINDOW_CLOSED)
    return CANCEL_IRN if at - invoiced_at < irn_window else CANCEL_CREDIT_NOTE
