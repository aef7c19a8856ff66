"""RMS credit-note path (issue 12): the "B2B Returns Credit Note Generation for RMS" report, and the
RMS credit-note numbers imported back (domain.md section 2 and 3.4, open question 11).

Pure: the operator reads the ledger and writes the file; these functions only shape rows and text.

One row per returned SKU of a return (the units that passed QC: the ERP return order's lines, which
F5 built from PASS units only). A line whose forward order cannot be traced to an e-invoice (order not
in the ledger, never e-invoiced, or the SKU not on its invoice) is left out and reported, as RMS
credits against the last outward invoice of the item.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from omni_erp.timeutil import parse_datetime, to_omni

# The report's documented columns (domain.md 3.4), then the forward invoice references.
REPORT_COLUMNS = (
    "purchaseOrderNumber", "clientSku", "skuDesc", "hsnCode", "taxRule", "quantity", "channelName", "timeZone",
    "returnOrderTime", "styleId", "mrp", "category", "size", "returnOrderId", "forwardChannelOrderId",
    "forwardInvoiceNumber", "forwardInvoiceDate", "forwardIrn",
)
# Item-master columns the postings may carry on the forward order line (Increff keeps them in its SKU
# master; Ajio postings we have seen do not send them): copied when present, left empty otherwise.
ITEM_MASTER_COLUMNS = ("skuDesc", "hsnCode", "taxRule", "styleId", "mrp", "category", "size")
TIME_ZONE = "Asia/Kolkata"
FILE_PREFIX = "b2b_returns_credit_notes_rms"
_FILE_NAME = re.compile(rf"^{FILE_PREFIX}_(\d{{8}})_(\d{{3,}})\.csv$")


@dataclass(frozen=True)
class ReturnFacts:
    """What the ledger knows about one return on the RMS path (all read by the operator)."""

    return_order_code: str
    order_code: str
    credit_lines: list[dict[str, Any]]           # the ERP return order's lines: QC PASS units per SKU
    return_posting: dict[str, Any] | None        # the raw RETURN_ORDER_COMPLETE posting
    forward_order: dict[str, Any] | None         # ajio_order row (po_number, erp_invoice_number, irn, lines)
    create_posting: dict[str, Any] | None = None  # the raw OUTWARD_ORDER_CREATE posting
    forward_invoice: dict[str, Any] | None = None  # the ERP e-invoice as read (invoiceDate, lines)


@dataclass(frozen=True)
class ExcludedLine:
    """A returned SKU left out of the report, and why."""

    return_order_code: str
    order_code: str
    sku: str
    quantity: int
    reason: str


@dataclass
class ReturnRows:
    """One return's report rows and the lines left out."""

    rows: list[dict[str, str]] = field(default_factory=list)
    excluded: list[ExcludedLine] = field(default_factory=list)

    @property
    def units(self) -> int:
        return sum(int(row["quantity"]) for row in self.rows)


def report_file_name(report_date: date, sequence: int) -> str:
    """``b2b_returns_credit_notes_rms_<YYYYMMDD>_<NNN>.csv``: sorted by name = sorted by time."""
    if sequence < 1:
        raise ValueError(f"report sequence must be positive, not {sequence}")
    return f"{FILE_PREFIX}_{report_date:%Y%m%d}_{sequence:03d}.csv"


def is_report_file_name(name: str) -> bool:
    return _FILE_NAME.match(name) is not None


def return_rows(facts: ReturnFacts) -> ReturnRows:
    """The report rows of one return (one per SKU), and the SKUs left out for want of a forward invoice."""
    units: Counter[str] = Counter()
    for line in facts.credit_lines:
        units[str(line["sku"])] += int(line["quantity"])
    result = ReturnRows()
    order = facts.forward_order
    untraceable = _untraceable(facts)
    for sku, quantity in units.items():
        if quantity <= 0:
            continue
        reason = untraceable or _sku_untraceable(sku, order)
        if reason:
            result.excluded.append(ExcludedLine(facts.return_order_code, facts.order_code, sku, quantity, reason))
            continue
        assert order is not None
        result.rows.append(_row(facts, order, sku, quantity))
    return result


def _untraceable(facts: ReturnFacts) -> str | None:
    order = facts.forward_order
    if order is None:
        return f"forward order {facts.order_code} is not in the ledger"
    if not order.get("erp_invoice_number"):
        return f"forward order {facts.order_code} has no e-invoice"
    return None


def _sku_untraceable(sku: str, order: dict[str, Any] | None) -> str | None:
    invoiced = {str(line["sku"]) for line in (order or {}).get("lines") or [] if int(line.get("quantity") or 0) > 0}
    if sku not in invoiced:
        return f"SKU {sku} is not on the forward invoice {(order or {}).get('erp_invoice_number')}"
    return None


def _row(facts: ReturnFacts, order: dict[str, Any], sku: str, quantity: int) -> dict[str, str]:
    posting = facts.return_posting or {}
    create = facts.create_posting or {}
    item = _order_item(create, sku)
    invoice_line = _invoice_line(facts.forward_invoice, sku)
    row = {
        "purchaseOrderNumber": _text(order.get("po_number")),
        "clientSku": _text(item.get("clientSkuCode") or sku),
        "quantity": str(quantity),
        "channelName": _text(posting.get("channelName") or create.get("channelName")),
        "timeZone": TIME_ZONE,
        "returnOrderTime": _time(posting.get("returnCreationTime") or posting.get("eventTime")),
        "returnOrderId": facts.return_order_code,
        "forwardChannelOrderId": facts.order_code,
        "forwardInvoiceNumber": _text(order.get("erp_invoice_number")),
        "forwardInvoiceDate": _time((facts.forward_invoice or {}).get("invoiceDate")),
        "forwardIrn": _text(order.get("irn")),
    }
    for column in ITEM_MASTER_COLUMNS:
        row[column] = _text(item.get(column) if item.get(column) is not None else invoice_line.get(column))
    return {column: row[column] for column in REPORT_COLUMNS}


def _order_item(create: dict[str, Any], sku: str) -> dict[str, Any]:
    for item in create.get("orderItems") or []:
        if isinstance(item, dict) and item.get("channelSkuCode") == sku:
            return item
    return {}


def _invoice_line(invoice: dict[str, Any] | None, sku: str) -> dict[str, Any]:
    for line in (invoice or {}).get("lines") or []:
        if isinstance(line, dict) and line.get("sku") == sku:
            return line
    return {}


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _time(value: Any) -> str:
    """Omni's format (ISO-8601, milliseconds, IST offset) when the value parses, else as sent."""
    if value is None:
        return ""
    if not isinstance(value, str):
        return str(value)
    try:
        parsed = parse_datetime(value)
    except ValueError:
        return str(value)
    return to_omni(parsed) if parsed is not None else str(value)


def render_csv(rows: list[dict[str, str]]) -> str:
    """The report file: a header of ``REPORT_COLUMNS`` and one line per row (CRLF, as spreadsheets expect)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=REPORT_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({column: _safe_cell(row.get(column, "")) for column in REPORT_COLUMNS})
    return out.getvalue()


def _safe_cell(value: str) -> str:
    # A cell starting with = + - @ is a formula in the spreadsheet the RMS user opens: keep it text.
    return f"'{value}" if value[:1] in ("=", "+", "-", "@") else value


def read_report(text: str) -> list[dict[str, str]]:
    """The rows of a report file (for checks and tests)."""
    return list(csv.DictReader(io.StringIO(text)))


# --- RMS credit notes imported back -------------------------------------------------------------

SETTLEMENT_COLUMNS = ("returnOrderId", "creditNoteNumber")


def parse_settlements(text: str) -> list[tuple[str, str]]:
    """``[(returnOrderId, creditNoteNumber)]`` from a CSV with those two columns (any others ignored),
    or from pairs ``RET-1=CN-1`` separated by commas, semicolons or new lines.

    :raises ValueError: naming the line, for a line without both values, or one return given two numbers.
    """
    text = text.strip().lstrip("\ufeff")
    if not text:
        return []
    first = text.splitlines()[0]
    pairs = _csv_pairs(text) if all(c in first for c in SETTLEMENT_COLUMNS) else _inline_pairs(text)
    seen: dict[str, str] = {}
    for code, number in pairs:
        if seen.setdefault(code, number) != number:
            raise ValueError(f"return {code} is given two credit notes: {seen[code]} and {number}")
    return list(seen.items())


def _csv_pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for n, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        code, number = (row.get("returnOrderId") or "").strip(), (row.get("creditNoteNumber") or "").strip()
        if not code and not number:
            continue
        if not code or not number:
            raise ValueError(f"line {n}: both returnOrderId and creditNoteNumber are needed, got {code!r}, {number!r}")
        pairs.append((code, number))
    return pairs


def _inline_pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for part in re.split(r"[,;\n]", text):
        part = part.strip()
        if not part:
            continue
        code, sep, number = part.partition("=")
        if not sep or not code.strip() or not number.strip():
            raise ValueError(f"{part!r} is not RETURN_ORDER_ID=CREDIT_NOTE_NUMBER (or a CSV with columns {', '.join(SETTLEMENT_COLUMNS)})")
        pairs.append((code.strip(), number.strip()))
    return pairs


def waiting_hours(ages: list[float]) -> str:
    """A short summary of how long returns have waited for their RMS credit note."""
    if not ages:
        return "none"
    return f"{len(ages)}, oldest {max(ages):.1f} h"


def erp_credit_note_on_rms_path(credit_note_number: str, return_order_code: str) -> tuple[str, str]:
    """An ERP credit note for a return whose credit note RMS raises: never uploaded, and a person must cancel
    one of the two (GST allows one credit note per return). Returns (document state, reason)."""
    from omni_erp.states import DOC_MISMATCH

    return DOC_MISMATCH, (
        f"return {return_order_code} is credited through Increff RMS (booked without an ERP credit note), yet the ERP "
        f"raised credit note {credit_note_number}: not uploaded; cancel it in the ERP or settle the return outside RMS"
    )
