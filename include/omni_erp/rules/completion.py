"""F4 business rule: reconcile ``OUTWARD_ORDER_COMPLETE`` postings with the e-invoice; units cancelled after e-invoicing go on an ERP return order.

Domain decision (issue 6, item 9) - what a COMPLETE posting says, read from its own fields:

* Increff repeats every earlier shipment of an order in each later posting, so a COMPLETE carries the
  shipments *so far*, not necessarily all of them: an order that ships in two shipments may be
  posted once with the first only, then again with both. Shipments are recorded once by
  ``shipmentCode``; a shipment whose ``shipmentStatus`` is ``CANCELLED`` carried no units.
* ``orderItems[].cancelledQuantity`` is the absolute number of cancelled units *now*. The e-invoice
  covers ``orderedQuantity - cancelledQuantity`` as the CREATE carried it (domain.md decision 4), so
  per channelSkuCode the invoiced units no longer live in the posting (``orderedQuantity -
  cancelledQuantity``) are the units the customer cancelled after e-invoicing. Only those go on a
  partial-cancel return order (and so on an ERP credit note), once: a later posting only adds the
  units cancelled since. Cancellations only grow; a posting with fewer than already returned is an
  older one delivered late and adds nothing.
* Invoiced units neither shipped nor cancelled are **not a shortfall**: they ship later. The order
  is ``partially_shipped`` until a later COMPLETE ships or cancels them, then ``completed`` (or
  ``completed_with_return`` when a partial-cancel return order exists).
* Nothing is guessed: shipped plus cancelled-after-invoicing above the invoiced units for any SKU,
  an invoiced SKU the posting does not list, or no shipped unit at all (a whole-order cancellation is
  ``OUTWARD_ORDER_CANCEL``) is dead-lettered with the figures per SKU.

``decide_completion`` is that rule as a pure function (no Airflow, no I/O); ``plan_shipments`` and
``return_lines`` are its helpers. ``operators.completion.ErpOrderCompleteOperator`` applies it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omni_erp.models.erp import DocumentLine
    from omni_erp.models.omni import Shipment

# Verdicts of the rule (also the operator's posting outcomes).
COMPLETED = "completed"
PARTIALLY_SHIPPED = "partially_shipped"
DEAD_LETTER = "dead_letter"

# shipmentStatus values of a shipment that never left (its units are not shipped).
CANCELLED_SHIPMENT_STATUSES = frozenset({"CANCELLED", "CANCELED"})
FIGURES = ["invoiced", "live", "cancelled_after_invoice", "shipped", "returned_before", "to_return", "outstanding"]


def partial_cancel_code(order_code: str, n: int) -> str:
    """Code of the ``n``-th return order for units cancelled after e-invoicing."""
    return f"PC-{order_code}-{n}"


# --- the rule (pure) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SkuUnits:
    """One channelSkuCode's units in a completion.

    :param invoiced: units on the order's e-invoice.
    :param live: ordered minus cancelled units in the posting's orderItems; None when it does not list the SKU.
    :param shipped: units of every distinct shipment recorded for the order, this posting's included.
    :param returned_before: units already on the order's partial-cancel return orders.
    """

    sku: str
    invoiced: int
    live: int | None
    shipped: int
    returned_before: int

    @property
    def cancelled_after_invoice(self) -> int:
        """Invoiced units the posting no longer holds live: cancelled after e-invoicing."""
        return max(0, self.invoiced - self.live) if self.live is not None else 0

    @property
    def to_return(self) -> int:
        """Cancelled units not on a return order yet (an older posting, with fewer, adds none)."""
        return max(0, self.cancelled_after_invoice - self.returned_before)

    @property
    def outstanding(self) -> int:
        """Invoiced units neither shipped nor cancelled: still to ship (negative: more than invoiced)."""
        return self.invoiced - max(self.cancelled_after_invoice, self.returned_before) - self.shipped

    def figures(self) -> dict[str, Any]:
        return {"sku": self.sku, **{name: getattr(self, name) for name in FIGURES}}


@dataclass(frozen=True)
class Completion:
    """What one COMPLETE posting means for its order: ``verdict`` is COMPLETED, PARTIALLY_SHIPPED or DEAD_LETTER."""

    verdict: str
    units: tuple[SkuUnits, ...]
    reason: str | None = None

    @property
    def to_return(self) -> dict[str, int]:
        """Units per SKU for a new partial-cancel return order (empty for a dead letter: nothing is guessed)."""
        if self.verdict == DEAD_LETTER:
            return {}
        return {u.sku: u.to_return for u in self.units if u.to_return > 0}

    @property
    def outstanding(self) -> dict[str, int]:
        return {u.sku: u.outstanding for u in self.units if u.outstanding > 0}

    @property
    def plain(self) -> bool:
        """Everything invoiced shipped, nothing cancelled after e-invoicing: no table worth logging."""
        return all(u.shipped == u.invoiced and u.returned_before == 0 and u.to_return == 0 for u in self.units)

    def figures_json(self) -> str:
        return json.dumps([u.figures() for u in self.units])

    def table(self) -> str:
        """The per-SKU figures as an aligned text table, for the task log."""
        import pandas as pd

        rows = [{**u.figures(), "live": "-" if u.live is None else u.live} for u in self.units]
        return pd.DataFrame(rows, columns=["sku", *FIGURES]).set_index("sku").to_string()


def _sum(pairs: Iterable[tuple[str, int]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for sku, units in pairs:
        total[sku] += int(units)
    return total


def decide_completion(
    *,
    invoiced: Iterable[tuple[str, int]],
    live: Iterable[tuple[str, int]],
    shipped: Iterable[tuple[str, int]],
    returned_before: Iterable[tuple[str, int]],
) -> Completion:
    """Apply the module's domain decision to one COMPLETE posting (pure: no Airflow, no I/O).

    :param invoiced: (sku, units) from the e-invoice lines.
    :param live: (sku, orderedQuantity - cancelledQuantity) from the posting's orderItems.
    :param shipped: (sku, units) from every distinct shipment of the order, this posting's included.
    :param returned_before: (sku, units) already on the order's partial-cancel return orders.
    """
    invoiced_units, shipped_units, returned_units = _sum(invoiced), _sum(shipped), _sum(returned_before)
    live_units = _sum(live)
    skus = sorted(set(invoiced_units) | set(shipped_units) | set(returned_units) | set(live_units))
    units = tuple(
        SkuUnits(
            sku=sku,
            invoiced=invoiced_units[sku],
            live=live_units[sku] if sku in live_units else None,
            shipped=shipped_units[sku],
            returned_before=returned_units[sku],
        )
        for sku in skus
    )
    unlisted = [u.sku for u in units if u.live is None and u.invoiced > u.shipped + u.returned_before]
    if unlisted:
        return Completion(
            DEAD_LETTER,
            units,
            f"the posting's orderItems do not list invoiced SKU(s) {', '.join(unlisted)}: "
            "cannot tell units cancelled from units not shipped yet",
        )
    over = [u for u in units if u.outstanding < 0]
    if over:
        figures = "; ".join(
            f"{u.sku}: invoiced {u.invoiced}, shipped {u.shipped}, cancelled after invoicing "
            f"{max(u.cancelled_after_invoice, u.returned_before)}, returned before {u.returned_before}"
            for u in over
        )
        return Completion(DEAD_LETTER, units, f"more units shipped and cancelled than invoiced ({figures})")
    if not any(u.shipped for u in units):
        # A whole order that never shipped is a cancellation (OUTWARD_ORDER_CANCEL), not a completion.
        return Completion(DEAD_LETTER, units, "the COMPLETE posting and the ledger hold no shipped units")
    verdict = PARTIALLY_SHIPPED if any(u.outstanding > 0 for u in units) else COMPLETED
    return Completion(verdict, units)


@dataclass
class ShipmentPlan:
    """The posting's shipments against those recorded: what to record, what repeats, what contradicts."""

    new: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # shipmentCode -> [{sku, quantity}]
    repeated: int = 0  # shipments an earlier posting recorded (Increff repeats them)
    cancelled: list[str] = field(default_factory=list)  # shipmentStatus CANCELLED: no units shipped
    conflict: str | None = None


def shipment_items(shipment: Shipment) -> list[dict[str, Any]]:
    """The shipment's units per SKU, as the ledger stores them."""
    units: Counter[str] = Counter()
    for item in shipment.shipment_items:
        units[item.channel_sku_code] += item.quantity
    return [{"sku": sku, "quantity": n} for sku, n in sorted(units.items()) if n > 0]


def plan_shipments(shipments: Iterable[Shipment], recorded: Mapping[str, dict[str, Any]], message_id: str) -> ShipmentPlan:
    """Compare the posting's shipments with the order's recorded ones (pure).

    :param shipments: the posting's shipments.
    :param recorded: the order's recorded shipments by shipmentCode (rows with ``items`` and ``message_id``).
    :param message_id: the posting's messageId (a retried posting finds its own shipments recorded).
    """
    plan = ShipmentPlan()
    for shipment in shipments:
        code = shipment.shipment_code
        items = shipment_items(shipment)
        known = recorded[code]["items"] if code in recorded else plan.new.get(code)
        if (shipment.shipment_status or "").strip().upper() in CANCELLED_SHIPMENT_STATUSES:
            if known:
                plan.conflict = f"shipment {code} was recorded as shipped ({known}); now it is {shipment.shipment_status}"
                return plan
            plan.cancelled.append(code)
            continue
        if known is None:
            plan.new[code] = items
        elif known != items:
            plan.conflict = f"shipment {code} was recorded before with other content ({known}); now {items}"
            return plan
        elif code in recorded and recorded[code]["message_id"] != message_id:
            plan.repeated += 1
    return plan


def return_lines(
    invoice_lines: Iterable[DocumentLine], units_by_sku: Mapping[str, int], returned_by_line: Mapping[str, int] | None = None
) -> list[DocumentLine]:
    """Lines for ``units_by_sku`` at the invoice's own unit prices (the credit note must mirror the invoice).

    Units are taken from the invoice lines of their SKU in order, skipping what earlier return orders
    took from each line (``returned_by_line``: lineCode -> units).

    :raises ValueError: when the invoice does not hold the units (a bug: the rule never asks for more).
    """
    from omni_erp.models.erp import DocumentLine

    remaining = dict(units_by_sku)
    taken_before = Counter(returned_by_line or {})
    lines = []
    for line in invoice_lines:
        available = line.quantity - taken_before.pop(line.line_code, 0) if line.line_code else line.quantity
        take = min(max(available, 0), remaining.get(line.sku, 0))
        if take > 0:
            lines.append(DocumentLine(lineCode=line.line_code, sku=line.sku, quantity=take, unitPrice=line.unit_price))
            remaining[line.sku] -= take
    if any(units > 0 for units in remaining.values()):
        raise ValueError(f"the invoice does not hold the units to return: {remaining}")
    return lines
