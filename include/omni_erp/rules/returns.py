"""F5 business rule: a return posting -> units credited on an ERP return order and units settled by hand (domain.md decision 7)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from omni_erp.exceptions import PayloadError
from omni_erp.states import RETURN_CUSTOMER, RETURN_RTO

if TYPE_CHECKING:
    from omni_erp.models.omni import ReturnItem, ReturnOrderPosting

# domain.md 3.4: returnOrderType is CUSTOMER_RETURN, RETURN_TO_ORIGIN or SELF_SHIP. A self-shipped
# return is still the customer sending goods back, so it is credited like a customer return.
RETURN_KINDS = {"CUSTOMER_RETURN": RETURN_CUSTOMER, "SELF_SHIP": RETURN_CUSTOMER, "RETURN_TO_ORIGIN": RETURN_RTO}
QC_PASS = "PASS"


@dataclass(frozen=True)
class ManualUnit:
    """A returned unit that is not credited automatically, and why (settled offline with Ajio)."""

    item_code: str
    sku: str
    qc_status: str | None
    qc_reason: str | None
    reason: str


@dataclass(frozen=True)
class ReturnPlan:
    """What one return posting becomes: the units to credit (priced lines) and the units to settle by hand."""

    kind: str
    credit_lines: list[dict[str, Any]]  # [{lineCode, sku, quantity, unitPrice}] for the ERP return order
    manual: list[ManualUnit]


def return_kind(return_order_type: str | None) -> str:
    """The ledger's return kind for a posting's ``returnOrderType``; never guessed when absent or unknown.

    :raises PayloadError: for a missing or unknown type.
    """
    kind = RETURN_KINDS.get((return_order_type or "").strip().upper())
    if kind is None:
        raise PayloadError(
            f"returnOrderType {return_order_type!r} is not one of {sorted(RETURN_KINDS)}; cannot tell how to credit it"
        )
    return kind


def manual_reason(item: ReturnItem, invoiced_skus: set[str]) -> str | None:
    """Why a unit is not credited automatically, or None when it is (QC PASS on an invoiced SKU)."""
    status = (item.qc_status or "").strip().upper()
    # domain.md decision 7 / section 2: QC-bad and missing items are settled offline with Ajio.
    if not status:
        return "QC status missing - settle offline with Ajio"
    if status == "FAIL":
        return f"QC FAIL: {item.qc_reason or 'no QC reason given'} - settle offline with Ajio"
    if status != QC_PASS:
        return f"QC status {item.qc_status} is not PASS - settle offline with Ajio"
    if item.is_excess:
        # An excess unit was not in Ajio's return expectation; crediting it could exceed the invoice.
        return "QC PASS but an excess unit (not in the return expectation) - settle offline with Ajio"
    if item.channel_sku_code not in invoiced_skus:
        return "QC PASS but the SKU is not on the order's invoice - settle offline with Ajio"
    return None


def plan_return(posting: ReturnOrderPosting, order_lines: list[dict[str, Any]]) -> ReturnPlan:
    """Split a return posting into credited units and manual-settlement units.

    One item is one unit (domain.md 3.4). PASS units are grouped by ``channelSkuCode`` and priced from
    the order's invoiced lines (``unitPrice``), spread over the order's lines of that SKU in order; any
    units beyond the invoiced quantity stay on the last line so the ERP, which knows earlier returns
    too, decides (it answers 422).

    :raises PayloadError: when the posting has no items or an unknown return type.
    """
    kind = return_kind(posting.return_order_type)
    if not posting.items:
        raise PayloadError("return posting has no items")
    invoiced = [line for line in order_lines if int(line["quantity"]) > 0]
    invoiced_skus = {line["sku"] for line in invoiced}
    passed: Counter[str] = Counter()
    manual: list[ManualUnit] = []
    for item in posting.items:
        reason = manual_reason(item, invoiced_skus)
        if reason is None:
            passed[item.channel_sku_code] += 1
        else:
            manual.append(ManualUnit(item.item_code, item.channel_sku_code, item.qc_status, item.qc_reason, reason))
    credit_lines: list[dict[str, Any]] = []
    for sku, units in passed.items():
        lines = [line for line in invoiced if line["sku"] == sku]
        for n, line in enumerate(lines):
            take = units if n == len(lines) - 1 else min(units, int(line["quantity"]))
            if take > 0:
                credit_lines.append(
                    {"lineCode": line.get("lineCode"), "sku": sku, "quantity": take, "unitPrice": str(Decimal(str(line["unitPrice"])))}
                )
            units -= take
    return ReturnPlan(kind, credit_lines, manual)
