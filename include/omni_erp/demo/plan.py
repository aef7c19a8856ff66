"""Which generated order walks which path, and the postings Omni sends for it along the way."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from omni_erp.sandbox.lifecycle import cancel_posting, complete_posting, return_posting
from omni_erp.sandbox.pusher import generate_orders

# Paths an order can take, in the order the demo reports them.
PLAIN = "plain: invoiced, shipped in full"
MISSING_PO = "dead-lettered: no Ajio PO"
NOTHING_TO_INVOICE = "not booked: every unit cancelled"
CANCEL_BEFORE_BOOKING = "cancelled before booking"
CANCEL_BEFORE_INVOICING = "cancelled before invoicing"
CANCEL_WITHIN_24H = "cancelled within 24 h of the IRN"
CANCEL_AFTER_24H = "cancelled 24 h or more after the IRN"
PARTIAL_CANCEL = "partially cancelled after invoicing"
CUSTOMER_RETURN = "customer return (some QC failures)"
RTO = "RTO (return to origin)"

# How many bookable orders take each special path; the rest are plain.
QUOTAS = {
    CANCEL_BEFORE_BOOKING: 2,
    CANCEL_BEFORE_INVOICING: 2,
    CANCEL_WITHIN_24H: 2,
    CANCEL_AFTER_24H: 2,
    PARTIAL_CANCEL: 3,
    CUSTOMER_RETURN: 3,
    RTO: 2,
}


@dataclass
class Plan:
    creates: list[dict[str, Any]]
    path: dict[str, str]  # orderCode -> path
    partial_invoice: set[str] = field(default_factory=set)  # orders invoiced for less than the PO
    _message_ids: Any = field(default_factory=lambda: count(950_001))

    def orders(self, path: str) -> list[dict[str, Any]]:
        return [c for c in self.creates if self.path[c["orderCode"]] == path]

    def cancels(self, path: str) -> list[dict[str, Any]]:
        return [cancel_posting(c, next(self._message_ids)) for c in self.orders(path)]

    def completes(self, invoices: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """COMPLETE postings for every order that ships; partial-cancel orders ship one unit less."""
        shipping = (PLAIN, PARTIAL_CANCEL, CUSTOMER_RETURN, RTO)
        postings = []
        for n, create in enumerate(c for c in self.creates if self.path[c["orderCode"]] in shipping):
            code = create["orderCode"]
            short = {}
            if self.path[code] == PARTIAL_CANCEL:
                line = next(i for i in create["orderItems"] if i["orderedQuantity"] - i["cancelledQuantity"] >= 2)
                short = {line["channelSkuCode"]: 1}
            invoice = invoices.get(code, {})
            postings.append(
                complete_posting(
                    create,
                    next(self._message_ids),
                    cancelled_after_invoice=short,
                    invoice_number=invoice.get("invoiceNumber"),
                    irn=invoice.get("irn"),
                    split_shipments=n % 3 == 0 and len(create["orderItems"]) > 1,
                )
            )
        return postings

    def returns(self) -> list[dict[str, Any]]:
        """Return postings: customer returns with PASS / FAIL / missing QC, RTOs of the whole order."""
        postings = []
        qc_cycle = ["PASS", "FAIL", None]
        for path, kind in ((CUSTOMER_RETURN, "CUSTOMER_RETURN"), (RTO, "RETURN_TO_ORIGIN")):
            for n, create in enumerate(self.orders(path)):
                units = [
                    (i["channelSkuCode"], "PASS")
                    for i in create["orderItems"]
                    for _ in range(i["orderedQuantity"] - i["cancelledQuantity"])
                ]
                if kind == "CUSTOMER_RETURN":
                    units = units[:3]
                    units[-1] = (units[-1][0], qc_cycle[(n % 2) + 1])  # one unit fails QC or has no QC result
                    if len(units) > 1:
                        units[0] = (units[0][0], "PASS")
                elif n == 0:
                    units[-1] = (units[-1][0], None)  # an RTO unit that went missing in transit
                postings.append(
                    return_posting(
                        create,
                        next(self._message_ids),
                        return_order_code=f"RTN-{create['orderCode'][2:]}",
                        units=units,
                        return_type=kind,
                    )
                )
        return postings


def invalid_postings(valid: dict[str, Any]) -> list[dict[str, Any]]:
    """What a misconfigured Omni might send: the inbox refuses these and keeps them in the rejection log."""
    no_id = {k: v for k, v in valid.items() if k != "messageId"}
    bad_type = json.loads(json.dumps(valid))
    bad_type["messageId"] = 999_001
    bad_type["orderItems"][0]["orderedQuantity"] = "two"
    conflict = {**valid, "orderCode": "FN0000000000"}  # a messageId reused for another order
    return [no_id, bad_type, conflict]


def build_plan(orders: int, seed: int, *, scale: int = 1) -> Plan:
    """Generate ``orders`` CREATE postings and give each order its path.

    :param orders: how many orders (at least 40 with ``scale=1``).
    :param seed: seed of the generated orders and of the path assignment.
    :param scale: multiplies every path's quota (``make chaos`` walks each path many times).
    """
    quotas = {p: n * scale for p, n in QUOTAS.items()}
    creates = generate_orders(
        orders, seed=seed, missing_po_rate=0.05, fully_cancelled_rate=0.05, partially_cancelled_rate=0.2
    )
    path: dict[str, str] = {}
    bookable = []
    partial = set()
    for c in creates:
        code = c["orderCode"]
        remaining = [i["orderedQuantity"] - i["cancelledQuantity"] for i in c["orderItems"]]
        if not c["orderCustomAttributes"].get("attribute1"):
            path[code] = MISSING_PO
        elif sum(remaining) == 0:
            path[code] = NOTHING_TO_INVOICE
        else:
            bookable.append(c)
            if any(i["cancelledQuantity"] for i in c["orderItems"]):
                partial.add(code)
    rng = random.Random(seed)
    rng.shuffle(bookable)
    # Partial cancellation after invoicing needs a line with at least two invoiced units.
    can_split = [c for c in bookable if any(i["orderedQuantity"] - i["cancelledQuantity"] >= 2 for i in c["orderItems"])]
    for c in can_split[: quotas[PARTIAL_CANCEL]]:
        path[c["orderCode"]] = PARTIAL_CANCEL
    rest = [c for c in bookable if c["orderCode"] not in path]
    needed = sum(n for p, n in quotas.items() if p != PARTIAL_CANCEL)
    if len(rest) < needed + 3:
        raise SystemExit(f"demo: {orders} orders are too few for every path; use --orders {40 * scale} or more")
    cursor = 0
    for p, n in quotas.items():
        if p == PARTIAL_CANCEL:
            continue
        for c in rest[cursor : cursor + n]:
            path[c["orderCode"]] = p
        cursor += n
    for c in rest[cursor:]:
        path[c["orderCode"]] = PLAIN
    return Plan(creates=creates, path=path, partial_invoice=partial)
