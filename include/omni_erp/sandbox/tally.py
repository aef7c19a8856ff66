"""Sandbox of TallyPrime's XML-over-HTTP server (port 9000): voucher import, collection export, e-invoicing.

It answers the way TallyPrime does (see the sources cited in ``omni_erp.hooks.tally``):

- every request is an XML ``ENVELOPE`` POSTed to ``/``; every answer is HTTP 200 with XML, errors included;
- ``TALLYREQUEST`` ``Import``/``Import Data`` with ``IMPORTDATA/REQUESTDESC/REPORTNAME`` ``Vouchers`` and
  ``REQUESTDATA/TALLYMESSAGE/VOUCHER`` (``VCHTYPE``, ``ACTION`` ``Create`` or ``Cancel``) answers a ``RESPONSE``
  with the counters ``CREATED``, ``ALTERED``, ``DELETED``, ``LASTVCHID``, ``LASTMID``, ``COMBINED``, ``IGNORED``,
  ``ERRORS``, ``CANCELLED``, ``EXCEPTIONS`` and one ``LINEERROR`` per refused voucher;
- a voucher number already used in its voucher type (numbering "Manual" with "Prevent duplicates") is refused
  with the ``LINEERROR`` ``Voucher Number '<n>' already exists!``;
- ``TALLYREQUEST`` ``Export`` with ``TYPE`` ``Collection`` and an inline TDL ``COLLECTION`` (``TYPE`` Voucher,
  ``FETCH``, ``FILTERS`` naming ``SYSTEM TYPE="Formulae"`` definitions) lists vouchers in ``DATA/COLLECTION``;
  the formulae understood are the few the adapter sends: ``$Field = ##Variable``, ``$Field = "text"``,
  ``$MasterId > ##Variable``, ``NOT $$IsEmpty:$Field`` and ``NOT $IsCancelled``, variables coming from ``STATICVARIABLES``.

What TallyPrime does in the seller's office is simulated: ``invoice_delay_s`` after a Sales Order is booked, the
accountant raises its Sales voucher, which TallyPrime registers at the IRP on saving (``IRN``, ``IRNACKNO``,
``IRNACKDATE``, ``IRNQRCODE``); a Credit Note voucher is registered ``invoice_delay_s`` after it is imported.
Documents fall due lazily, at the next request, so tests need no sleeps (``invoice_delay_s=0``).
State lives in :class:`TallyState`; the HTTP surface is :func:`tally_router`; ``/_sandbox/*`` holds the controls
(``POST /_sandbox/reset`` keeps the knobs unless asked ``{"reset_config": true}``, as in the other sandboxes).
"""

from __future__ import annotations

import heapq
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from xml.sax.saxutils import escape

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from pydantic import Field

from omni_erp import einvoice
from omni_erp.sandbox.base import SandboxState, sandbox_app
from omni_erp.sandbox.catalogue import hsn_for
from omni_erp.sandbox.faults import FaultConfig, FaultInjector
from omni_erp.sandbox.pdf import tiny_pdf
from omni_erp.timeutil import IST, financial_year

UDF_NS = "TallyUDF"
IRN_CANCEL_WINDOW = timedelta(hours=24)  # domain.md section 6
TOTAL_TOLERANCE = Decimal("1.00")
SALES_ORDER, SALES, CREDIT_NOTE = "Sales Order", "Sales", "Credit Note"
FIELDS = {  # formula field name (upper case) -> attribute of Voucher
    "MASTERID": "master_id", "ALTERID": "alter_id", "VOUCHERTYPENAME": "vch_type", "VOUCHERNUMBER": "number",
    "REFERENCE": "reference", "IRN": "irn", "OMNIERPKEY": "key", "ISCANCELLED": "cancelled",
}


class TallySandboxConfig(FaultConfig):
    """Fault knobs plus Tally's own: how long the office takes to invoice, and the number series."""

    invoice_delay_s: float = Field(0.2, ge=0.0, le=3600.0)
    clock_offset_s: float = 0.0
    invoice_prefix: str = "TB2627/"
    credit_note_prefix: str = "TC2627/"


@dataclass
class Line:
    sku: str
    quantity: int
    rate: Decimal


@dataclass
class Voucher:
    """One voucher as TallyPrime stores it (the fields this sandbox models)."""

    master_id: int
    alter_id: int
    vch_type: str
    number: str
    date: str  # yyyymmdd
    party: str
    lines: list[Line]
    total: Decimal
    reference: str = ""
    narration: str = ""
    key: str = ""                 # UDF OmniErpKey
    order_code: str = ""          # UDF OmniErpOrderCode
    return_code: str = ""         # UDF OmniErpReturnCode
    order_no: str = ""            # INVOICEORDERLIST.LIST/BASICPURCHASEORDERNO: the Sales Order it invoices
    cancelled: bool = False
    irn: str = ""
    ack_no: str = ""
    ack_at: datetime | None = None
    qr: str = ""
    due: float | None = None      # monotonic time its follow-up (invoice or IRN) falls due


class ImportRefused(Exception):
    """One voucher of an import Tally refuses; the message is Tally's LINEERROR text."""


class TallyState(SandboxState[TallySandboxConfig]):
    """Company books of the sandbox: vouchers by master id, the id counters, duplicate counts."""

    def __init__(self, config: Callable[[], TallySandboxConfig], *, supplier_gstin: str, buyer_gstin: str) -> None:
        self.supplier_gstin = supplier_gstin
        self.buyer_gstin = buyer_gstin
        super().__init__(config)

    def clear(self) -> None:
        self.vouchers: dict[int, Voucher] = {}
        self.numbers: dict[tuple[str, str], int] = {}  # (voucher type, number) -> master id of the first such voucher
        self.waiting: list[tuple[float, int]] = []     # (due, master id): a heap, so a tick costs what falls due
        self.counters: Counter[str] = Counter()
        self.duplicates: Counter[str] = Counter()
        self.pdfs: dict[str, tuple[str, ...]] = {}

    def documents(self) -> dict[str, Any]:
        vouchers = [
            {
                "masterId": v.master_id, "alterId": v.alter_id, "voucherType": v.vch_type, "number": v.number,
                "reference": v.reference, "key": v.key, "orderCode": v.order_code, "orderNo": v.order_no,
                "returnOrderCode": v.return_code, "cancelled": v.cancelled, "irn": v.irn,
                "total": float(v.total), "lines": [[line.sku, line.quantity, float(line.rate)] for line in v.lines],
            }
            for v in sorted(self.vouchers.values(), key=lambda v: v.master_id)
        ]
        return {"vouchers": vouchers, "duplicates": dict(self.duplicates)}

    def clock(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.config.clock_offset_s)

    def _next(self, name: str) -> int:
        self.counters[name] += 1
        return self.counters[name]

    def find(self, vch_type: str, number: str) -> Voucher | None:
        master_id = self.numbers.get((vch_type, number))
        return None if master_id is None else self.vouchers[master_id]

    def _add(self, voucher: Voucher) -> None:
        self.vouchers[voucher.master_id] = voucher
        self.numbers.setdefault((voucher.vch_type, voucher.number), voucher.master_id)
        if voucher.due is not None:
            heapq.heappush(self.waiting, (voucher.due, voucher.master_id))

    # --- the office and the IRP ------------------------------------------------------------

    def tick(self) -> None:
        """Raise the Sales vouchers and register the credit notes whose time has come."""
        now = time.monotonic()
        due = []
        while self.waiting and self.waiting[0][0] <= now:
            due.append(self.vouchers[heapq.heappop(self.waiting)[1]])
        for voucher in sorted(due, key=lambda v: v.master_id):
            voucher.due = None
            if voucher.cancelled:
                continue
            if voucher.vch_type == SALES_ORDER:
                self._invoice(voucher)
            elif voucher.vch_type == CREDIT_NOTE:
                self._register(voucher, "CRN")
                voucher.alter_id = self._next("alter_id")

    def _invoice(self, order: Voucher) -> None:
        number = f"{self.config.invoice_prefix}{self._next('invoice'):06d}"
        invoice = Voucher(
            master_id=self._next("master_id"), alter_id=self._next("alter_id"), vch_type=SALES, number=number,
            date=self.clock().astimezone(IST).strftime("%Y%m%d"), party=order.party, lines=list(order.lines),
            total=order.total, reference=order.reference, order_no=order.number,
        )
        self._register(invoice, "INV")
        self._add(invoice)

    def _register(self, voucher: Voucher, doc_type: str) -> None:
        at = self.clock()
        voucher.irn = einvoice.irn(self.supplier_gstin, financial_year(at), doc_type, voucher.number)
        voucher.ack_no = f"1{at.year % 100:02d}2{self._next('ack'):011d}"
        voucher.ack_at = at
        main = max(voucher.lines, key=lambda line: line.rate * line.quantity)
        voucher.qr = einvoice.signed_qr(
            seller_gstin=self.supplier_gstin, buyer_gstin=self.buyer_gstin, doc_number=voucher.number,
            doc_type=doc_type, doc_date=at, total_value=voucher.total, item_count=len(voucher.lines),
            main_hsn_code=hsn_for(main.sku), irn=voucher.irn, irn_date=at,
        )
        title = "TAX INVOICE" if doc_type == "INV" else "CREDIT NOTE"
        self.pdfs[voucher.number.replace("/", "-") + ".pdf"] = (
            f"{title} {voucher.number}", f"IRN {voucher.irn}", f"Ack {voucher.ack_no}", f"Total INR {voucher.total:.2f}"
        )

    # --- import ----------------------------------------------------------------------------

    def import_voucher(self, element: ET.Element) -> tuple[str, Voucher]:
        """Apply one ``VOUCHER`` of an import; returns ("created" | "cancelled", voucher)."""
        action = (element.get("ACTION") or "Create").strip().lower()
        vch_type = element.get("VCHTYPE") or _text(element, "VOUCHERTYPENAME")
        if vch_type not in (SALES_ORDER, SALES, CREDIT_NOTE):
            raise ImportRefused(f"Voucher Type '{vch_type}' does not exist!")
        if action == "cancel":
            return "cancelled", self._cancel(element, vch_type)
        if action != "create":
            raise ImportRefused(f"Unknown Action '{element.get('ACTION')}'")
        return "created", self._create(element, vch_type)

    def _create(self, element: ET.Element, vch_type: str) -> Voucher:
        date = _text(element, "DATE")
        if not (len(date) == 8 and date.isdigit()):
            raise ImportRefused(f"Voucher date is missing or wrong for '{vch_type}' voucher")
        party = _text(element, "PARTYLEDGERNAME")
        if not party:
            raise ImportRefused(f"Party ledger is missing for '{vch_type}' voucher")
        lines = [_line(entry) for entry in element.findall("ALLINVENTORYENTRIES.LIST")]
        if not lines:
            raise ImportRefused("No Inventory Entries found in the voucher")
        total = sum((line.rate * line.quantity for line in lines), Decimal(0))
        party_amount = next(
            (abs(_decimal(_text(e, "AMOUNT"))) for e in element.findall("LEDGERENTRIES.LIST")
             if _text(e, "LEDGERNAME") == party), None,
        )
        if party_amount is None or abs(party_amount - total) > TOTAL_TOLERANCE:
            raise ImportRefused(f"Voucher totals do not match! Dr: {party_amount} Cr: {total:.2f}")
        number = _text(element, "VOUCHERNUMBER")
        if vch_type == CREDIT_NOTE and not number:  # automatic numbering for credit notes
            number = f"{self.config.credit_note_prefix}{self._next('credit_note'):06d}"
        if not number:
            raise ImportRefused(f"Voucher Number is missing for '{vch_type}' voucher")
        if self.find(vch_type, number) is not None:
            self.duplicates[vch_type] += 1
            raise ImportRefused(f"Voucher Number '{number}' already exists!")
        udf = _udfs(element)
        voucher = Voucher(
            master_id=self._next("master_id"), alter_id=self._next("alter_id"), vch_type=vch_type, number=number,
            date=date, party=party, lines=lines, total=total, reference=_text(element, "REFERENCE"),
            narration=_text(element, "NARRATION"), key=udf.get("OMNIERPKEY", ""),
            order_code=udf.get("OMNIERPORDERCODE", ""), return_code=udf.get("OMNIERPRETURNCODE", ""),
        )
        if vch_type == CREDIT_NOTE:
            self._check_credit(voucher)
        if vch_type in (SALES_ORDER, CREDIT_NOTE):
            voucher.due = time.monotonic() + self.config.invoice_delay_s
        self._add(voucher)
        return voucher

    def _check_credit(self, note: Voucher) -> None:
        """A credit note must name an active invoice (REFERENCE) and credit no more than it left open."""
        invoice = self.find(SALES, note.reference)
        if invoice is None or invoice.cancelled:
            raise ImportRefused(f"Original invoice '{note.reference}' does not exist or is cancelled")
        credited: Counter[str] = Counter()
        for other in self.vouchers.values():
            if other.vch_type == CREDIT_NOTE and other.reference == invoice.number and not other.cancelled:
                for line in other.lines:
                    credited[line.sku] += line.quantity
        open_units: Counter[str] = Counter()
        for line in invoice.lines:
            open_units[line.sku] += line.quantity
        for line in note.lines:
            if credited[line.sku] + line.quantity > open_units[line.sku]:
                raise ImportRefused(
                    f"Quantity of '{line.sku}' exceeds the quantity of invoice '{invoice.number}' not yet credited"
                )
            credited[line.sku] += line.quantity

    def _cancel(self, element: ET.Element, vch_type: str) -> Voucher:
        tag, value = (element.get("TAGNAME") or "").strip().lower(), element.get("TAGVALUE") or ""
        if tag != "voucher number":
            raise ImportRefused(f"Cannot identify the voucher to cancel (TAGNAME '{element.get('TAGNAME')}')")
        voucher = self.find(vch_type, value)
        if voucher is None or (element.get("DATE") and element.get("DATE") != voucher.date):
            raise ImportRefused(f"Voucher '{value}' of type '{vch_type}' does not exist!")
        if voucher.cancelled:
            self.duplicates[f"{vch_type} cancel"] += 1
            return voucher
        if vch_type == SALES_ORDER:
            invoiced = [v for v in self.vouchers.values() if v.vch_type == SALES and v.order_no == voucher.number]
            if any(not v.cancelled for v in invoiced):
                raise ImportRefused(f"Sales Order '{value}' is linked to the invoice '{invoiced[0].number}'")
        if voucher.irn and voucher.ack_at is not None and self.clock() - voucher.ack_at > IRN_CANCEL_WINDOW:
            raise ImportRefused(
                f"IRN of '{value}' cannot be cancelled: more than 24 hours since its acknowledgement. Raise a credit note."
            )
        voucher.cancelled = True
        voucher.narration = _text(element, "NARRATION") or voucher.narration
        voucher.alter_id = self._next("alter_id")
        return voucher

    # --- export ----------------------------------------------------------------------------

    def collection(self, filters: list[str], variables: dict[str, str]) -> list[Voucher]:
        """Vouchers passing every filter formula, in master id order."""
        tests = [_formula(text, variables) for text in filters]
        found = [v for v in self.vouchers.values() if all(test(v) for test in tests)]
        return sorted(found, key=lambda v: v.master_id)


# --- XML helpers -------------------------------------------------------------------------------


def _text(element: ET.Element, tag: str) -> str:
    return (element.findtext(tag) or "").strip()


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        raise ImportRefused(f"'{text}' is not a number") from None


def _line(entry: ET.Element) -> Line:
    sku = _text(entry, "STOCKITEMNAME")
    if not sku:
        raise ImportRefused("Stock Item name is missing in an inventory entry")
    qty_text = _text(entry, "BILLEDQTY").split(" ")[0]
    rate_text = _text(entry, "RATE").split("/")[0]
    if not qty_text.isdigit() or int(qty_text) <= 0:
        raise ImportRefused(f"Quantity '{_text(entry, 'BILLEDQTY')}' of '{sku}' is not valid")
    rate = _decimal(rate_text)
    if rate < 0:
        raise ImportRefused(f"Rate of '{sku}' is negative")
    return Line(sku, int(qty_text), rate)


def _udfs(element: ET.Element) -> dict[str, str]:
    """UDF values of a voucher: ``<UDF:NAME.LIST><UDF:NAME>value</UDF:NAME></UDF:NAME.LIST>``."""
    values = {}
    for child in element:
        if child.tag.startswith(f"{{{UDF_NS}}}") and child.tag.endswith(".LIST"):
            name = child.tag[len(UDF_NS) + 2 : -len(".LIST")]
            values[name.upper()] = (child.findtext(f"{{{UDF_NS}}}{name}") or "").strip()
    return values


def _formula(text: str, variables: dict[str, str]) -> Any:
    """The few TDL filter formulae the adapter sends, as a predicate on a voucher."""
    body = " ".join(text.split())
    if body.upper().startswith("NOT $$ISEMPTY:$"):
        attr = FIELDS.get(body[len("NOT $$ISEMPTY:$") :].upper())
        if attr:
            return lambda v: bool(getattr(v, attr))
    if body.upper().startswith("NOT $") and " " not in body[4:]:
        attr = FIELDS.get(body[5:].upper())
        if attr:
            return lambda v: not getattr(v, attr)
    for op in (" = ", " > "):
        if op in body:
            left, right = (part.strip() for part in body.split(op, 1))
            attr = FIELDS.get(left.lstrip("$").upper()) if left.startswith("$") else None
            if right.startswith("##"):
                if right[2:].upper() not in variables:
                    break
                value: str = variables[right[2:].upper()]
            elif len(right) >= 2 and right[0] == right[-1] == '"':
                value = right[1:-1]
            else:
                value = right
            if attr is None:
                break
            if op == " > ":
                bound = int(value) if value.lstrip("-").isdigit() else None
                if bound is None:
                    break
                return lambda v: int(getattr(v, attr)) > bound  # type: ignore[operator]
            return lambda v: str(getattr(v, attr)) == value
    raise ImportRefused(f"Could not evaluate the formula '{text}'")


def _amount(value: Decimal, negative: bool) -> str:
    return f"{-value if negative else value:.2f}"


def _voucher_xml(voucher: Voucher) -> str:
    """A voucher as Tally exports it (the fields fetched by the adapter)."""
    credit = voucher.vch_type == CREDIT_NOTE
    parts = [
        f'<VOUCHER REMOTEID="omni-sandbox-{voucher.master_id}" VCHTYPE="{escape(voucher.vch_type)}" '
        f'ACTION="{"Cancel" if voucher.cancelled else "Create"}" OBJVIEW="Invoice Voucher View">',
        f"<DATE>{voucher.date}</DATE>",
        f"<VOUCHERTYPENAME>{escape(voucher.vch_type)}</VOUCHERTYPENAME>",
        f"<VOUCHERNUMBER>{escape(voucher.number)}</VOUCHERNUMBER>",
        f"<REFERENCE>{escape(voucher.reference)}</REFERENCE>",
        f"<PARTYLEDGERNAME>{escape(voucher.party)}</PARTYLEDGERNAME>",
        f"<NARRATION>{escape(voucher.narration)}</NARRATION>",
        f"<ISCANCELLED>{'Yes' if voucher.cancelled else 'No'}</ISCANCELLED>",
        f"<MASTERID> {voucher.master_id}</MASTERID>",
        f"<ALTERID> {voucher.alter_id}</ALTERID>",
    ]
    if voucher.irn:
        ack_date = voucher.ack_at.astimezone(IST).strftime("%Y-%m-%d %H:%M:%S") if voucher.ack_at else ""
        parts += [
            f"<IRN>{voucher.irn}</IRN>", f"<IRNACKNO>{voucher.ack_no}</IRNACKNO>",
            f"<IRNACKDATE>{ack_date}</IRNACKDATE>", f"<IRNQRCODE>{escape(voucher.qr)}</IRNQRCODE>",
        ]
    if voucher.order_no:
        parts.append(
            f"<INVOICEORDERLIST.LIST><BASICORDERDATE>{voucher.date}</BASICORDERDATE>"
            f"<BASICPURCHASEORDERNO>{escape(voucher.order_no)}</BASICPURCHASEORDERNO></INVOICEORDERLIST.LIST>"
        )
    for name, value in (("OmniErpKey", voucher.key), ("OmniErpOrderCode", voucher.order_code),
                        ("OmniErpReturnCode", voucher.return_code)):
        if value:
            parts.append(
                f'<UDF:{name.upper()}.LIST DESC="`{name}`" ISLIST="YES" TYPE="String">'
                f'<UDF:{name.upper()} DESC="`{name}`">{escape(value)}</UDF:{name.upper()}></UDF:{name.upper()}.LIST>'
            )
    parts.append(
        "<LEDGERENTRIES.LIST>"
        f"<LEDGERNAME>{escape(voucher.party)}</LEDGERNAME><ISPARTYLEDGER>Yes</ISPARTYLEDGER>"
        f"<ISDEEMEDPOSITIVE>{'No' if credit else 'Yes'}</ISDEEMEDPOSITIVE>"
        f"<AMOUNT>{_amount(voucher.total, not credit)}</AMOUNT></LEDGERENTRIES.LIST>"
    )
    for line in voucher.lines:
        parts.append(
            "<ALLINVENTORYENTRIES.LIST>"
            f"<STOCKITEMNAME>{escape(line.sku)}</STOCKITEMNAME>"
            f"<ISDEEMEDPOSITIVE>{'Yes' if credit else 'No'}</ISDEEMEDPOSITIVE>"
            f"<RATE>{line.rate:.2f}/Nos</RATE>"
            f"<AMOUNT>{_amount(line.rate * line.quantity, credit)}</AMOUNT>"
            f"<ACTUALQTY> {line.quantity} Nos</ACTUALQTY><BILLEDQTY> {line.quantity} Nos</BILLEDQTY>"
            "</ALLINVENTORYENTRIES.LIST>"
        )
    parts.append("</VOUCHER>")
    return "".join(parts)


def _xml(body: str) -> Response:
    return Response(f'<?xml version="1.0" encoding="UTF-8"?>\n{body}', media_type="text/xml; charset=utf-8")


def _export_error(message: str) -> Response:
    return _xml(
        "<ENVELOPE><HEADER><VERSION>1</VERSION><STATUS>0</STATUS></HEADER>"
        f"<BODY><DATA><LINEERROR>{escape(message)}</LINEERROR></DATA></BODY></ENVELOPE>"
    )


def _import_response(counts: Counter[str], errors: list[str], last_id: int) -> Response:
    counters = "".join(
        f"<{name}>{counts[name.lower()]}</{name}>"
        for name in ("CREATED", "ALTERED", "DELETED")
    )
    counters += f"<LASTVCHID>{last_id}</LASTVCHID><LASTMID>0</LASTMID>"
    counters += "".join(
        f"<{name}>{counts[name.lower()] if name != 'ERRORS' else len(errors)}</{name}>"
        for name in ("COMBINED", "IGNORED", "ERRORS", "CANCELLED", "EXCEPTIONS")
    )
    lines = "".join(f"<LINEERROR>{escape(error)}</LINEERROR>" for error in errors)
    return _xml(f"<RESPONSE>{counters}{lines}</RESPONSE>")


def _render(status: int, code: str, message: str, description: str | None) -> dict[str, Any]:
    # Only injected faults and sandbox bugs come here; a real Tally answers them as a proxy in front of it would.
    return {"error": {"code": code, "message": message}}


# --- the server -------------------------------------------------------------------------------


def tally_router(state: TallyState, company: str) -> APIRouter:
    """The XML endpoint (``POST /``) of one loaded company, and the documents' PDFs."""
    router = APIRouter()

    @router.post("/")
    async def xml_request(request: Request) -> Response:
        raw = await request.body()
        try:
            envelope = ET.fromstring(raw)
        except ET.ParseError as exc:
            return _export_error(f"Unable to parse the XML request: {exc}")
        kind = _text(envelope, "HEADER/TALLYREQUEST").lower()
        named = envelope.findtext(".//STATICVARIABLES/SVCURRENTCOMPANY")
        if named is not None and named.strip() != company:
            message = f"Could not set 'SVCurrentCompany' to '{named.strip()}'"
            return _import_response(Counter(), [message], 0) if kind.startswith("import") else _export_error(message)
        with state.lock:
            state.tick()
            if kind in ("import", "import data"):
                return _import(state, envelope)
            if kind == "export":
                return _export(state, envelope)
        return _export_error(f"Unknown Request '{_text(envelope, 'HEADER/TALLYREQUEST')}'")

    @router.get("/_sandbox/pdf/{name}")
    async def document_pdf(name: str) -> Response:
        with state.lock:
            lines = state.pdfs.get(name)
        if lines is None:
            return Response(f"no document PDF named {name}", status_code=404, media_type="text/plain")
        return Response(tiny_pdf(*lines), media_type="application/pdf")

    return router


def _import(state: TallyState, envelope: ET.Element) -> Response:
    report = _text(envelope, "BODY/IMPORTDATA/REQUESTDESC/REPORTNAME")
    if report.lower() != "vouchers":
        return _import_response(Counter(), [f"Unknown Report '{report}' for import"], 0)
    counts: Counter[str] = Counter()
    errors: list[str] = []
    last_id = 0
    for element in envelope.iterfind("BODY/IMPORTDATA/REQUESTDATA/TALLYMESSAGE/VOUCHER"):
        try:
            outcome, voucher = state.import_voucher(element)
        except ImportRefused as exc:
            errors.append(str(exc))
            continue
        counts[outcome] += 1
        last_id = voucher.master_id
    return _import_response(counts, errors, last_id)


def _export(state: TallyState, envelope: ET.Element) -> Response:
    if _text(envelope, "HEADER/TYPE").lower() != "collection":
        return _export_error(f"Unsupported export TYPE '{_text(envelope, 'HEADER/TYPE')}'")
    name = _text(envelope, "HEADER/ID")
    desc = envelope.find("BODY/DESC")
    collection = None if desc is None else next(
        (c for c in desc.iterfind("TDL/TDLMESSAGE/COLLECTION") if c.get("NAME") == name), None
    )
    if collection is None or _text(collection, "TYPE").lower() != "voucher":
        return _export_error(f"Could not find Collection '{name}'")
    formulae = {
        (s.get("NAME") or "").upper(): (s.text or "")
        for s in desc.iterfind("TDL/TDLMESSAGE/SYSTEM")  # type: ignore[union-attr]
        if (s.get("TYPE") or "").lower() == "formulae"
    }
    static = desc.find("STATICVARIABLES")
    variables = {child.tag.upper(): (child.text or "") for child in ([] if static is None else static)}
    try:
        filters = [formulae[n.strip().upper()] for n in _text(collection, "FILTERS").split(",") if n.strip()]
    except KeyError as exc:
        return _export_error(f"Could not find the Formula {exc.args[0]}")
    try:
        found = state.collection(filters, variables)
    except ImportRefused as exc:
        return _export_error(str(exc))
    vouchers = "".join(_voucher_xml(v) for v in found)
    return _xml(
        '<ENVELOPE xmlns:UDF="TallyUDF"><HEADER><VERSION>1</VERSION><STATUS>1</STATUS></HEADER>'
        f"<BODY><DESC></DESC><DATA><COLLECTION>{vouchers}</COLLECTION></DATA></BODY></ENVELOPE>"
    )


def create_tally_sandbox(
    *,
    company: str = "Omni Demo Co",
    supplier_gstin: str = "29ABCDE1234F1Z5",
    buyer_gstin: str = "27AABCR1718E1ZY",
    invoice_delay_s: float = 0.2,
    seed: int = 0,
) -> FastAPI:
    """Build the TallyPrime sandbox app (serve it with ``serve_in_thread``).

    :param company: the loaded company; a request naming another in ``SVCURRENTCOMPANY`` is refused.
    :param supplier_gstin: the seller's GSTIN, hashed into every IRN.
    :param buyer_gstin: Ajio's GSTIN, printed in the QR.
    :param invoice_delay_s: seconds from a booked Sales Order to its e-invoiced Sales voucher (and from an imported
        Credit Note to its registration); 0 makes them appear at the next request.
    :param seed: seed of the injected-fault random source.
    """
    faults = FaultInjector(TallySandboxConfig(invoice_delay_s=invoice_delay_s, seed=seed), _render)
    state = TallyState(lambda: faults.config, supplier_gstin=supplier_gstin, buyer_gstin=buyer_gstin)
    return sandbox_app("TallyPrime sandbox", faults, state, tally_router(state, company))
