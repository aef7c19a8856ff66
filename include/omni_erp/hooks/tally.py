"""``TallyHook``: the ``ErpAdapter`` for TallyPrime, which speaks XML over HTTP (its server on port 9000).

Written from TallyPrime's developer reference (help.tallysolutions.com): "Integration With TallyPrime"
(``/integration-with-tallyprime``: POST text/xml to the port set in Exchange > Data Synchronization, a company
loaded), "Integration using XML" (``/xml-integration``: the ``ENVELOPE``/``HEADER``/``BODY`` message), "Significance
of Tags" (``/tally/significance_of_tags/``: ``TALLYREQUEST`` Import/Export, ``TYPE`` Data/Collection, ``ID``),
"Case Study I - XML Request and Response Formats" (``/developer-reference/integration-capabilities/case-study-1/``:
import and export requests and their responses), "Get Data" (``/tally/get-data/``: ``TYPE`` Collection with the
collection name in ``ID``), "Understanding Integration - Transactions"
(``/developer-reference/introduction/understanding-integration-transactions/``: ``VOUCHER VCHTYPE ACTION``,
``ALLINVENTORYENTRIES.LIST``, ``LEDGERENTRIES.LIST``) and the "Collection" TDL reference (``FETCH``, ``FILTERS``,
``SYSTEM TYPE="Formulae"``). Import responses with ``CREATED``/``ALTERED``/``LASTVCHID``/``ERRORS`` and
``LINEERROR`` lines, and Tally's "voucher number already exists" error, as integrators meet them
(Accounting-Companion/TallyConnector issues #4 and #47).

The request shapes::

    Import:  ENVELOPE/HEADER/TALLYREQUEST "Import Data";
             BODY/IMPORTDATA/REQUESTDESC/REPORTNAME "Vouchers" (+ STATICVARIABLES/SVCURRENTCOMPANY);
             BODY/IMPORTDATA/REQUESTDATA/TALLYMESSAGE/VOUCHER VCHTYPE=... ACTION="Create"|"Cancel"
             -> RESPONSE with CREATED, ALTERED, ..., ERRORS, CANCELLED and one LINEERROR per refused voucher.
    Export:  HEADER TALLYREQUEST "Export", TYPE "Collection", ID <name>; BODY/DESC/TDL/TDLMESSAGE holds the
             COLLECTION (TYPE Voucher, FETCH, FILTERS) and its SYSTEM TYPE="Formulae"; lookup values travel as
             STATICVARIABLES read by the formulae (``##Variable``), so no business value is ever spliced into TDL.
             -> ENVELOPE/BODY/DATA/COLLECTION/VOUCHER..., or DATA/LINEERROR.

How the seller's company must be set up (the conventions this adapter reads and writes):

- voucher types "Sales Order" (numbering Manual, prevent duplicates), "Sales" and "Credit Note" (automatic
  numbering), GST e-invoicing enabled so a saved Sales or Credit Note voucher carries ``IRN``, ``IRNACKNO``,
  ``IRNACKDATE`` (NIC's ``yyyy-MM-dd HH:mm:ss``, IST) and ``IRNQRCODE``;
- three String UDFs on vouchers: ``OmniErpKey`` (the idempotency key of the action that created the voucher),
  ``OmniErpOrderCode`` and ``OmniErpReturnCode``;
- a Sales Order's ``VOUCHERNUMBER`` is the Ajio order code (it is the ``salesOrderId``) and its ``REFERENCE`` the
  Ajio PO number; a Sales voucher names its order in ``INVOICEORDERLIST.LIST/BASICPURCHASEORDERNO`` (Tally's
  "Order No(s)") and keeps the PO in ``REFERENCE``; a Credit Note names the original invoice in ``REFERENCE``.

What each method guarantees:

- **Writes are idempotent without keys.** Tally has no idempotency keys, so every create first looks the voucher
  up by its ``OmniErpKey`` UDF (a Sales Order also by its number) and returns it as ``Booking(..., replayed=True)``
  when it exists. Tally refusing a voucher because its number "already exists" is read the same way: the existing
  voucher is looked up and returned as a replay, never as an error. Cancelling a cancelled voucher returns it.
  A crash between Tally saving a Credit Note and the ledger recording it is covered by the key look-up.
- **Feeds.** ``einvoices_since``/``credit_notes_since`` list Sales / Credit Note vouchers with an IRN and
  ``MASTERID > cursor`` in ``MASTERID`` order (cancelled invoices with status CANCELLED; cancelled credit notes
  not at all, as the credit note model has no status); the cursor is ``MASTERID``, the company-wide number TallyPrime gives
  a voucher when it is created and never changes or reuses (``ALTERID`` would move on every alteration, so a
  cancelled invoice would come round again). A voucher saved before its IRN arrived (a credit note registered
  later) shows up below the cursor: the F2/F6 readers' look-back re-reads that window. Tally's collections do
  not page, so the adapter takes the first ``limit`` vouchers of the answer.
- **Errors.** Tally answers HTTP 200 whatever happened: ``LINEERROR`` lines or ``ERRORS``/``EXCEPTIONS`` above zero
  become ``RemoteRejectedError`` (status 200, code ``LINEERROR``, Tally's own text); an unparseable answer is a
  ``RemoteRejectedError`` too. HTTP 5xx, 429, timeouts and resets (a proxy in front of Tally, Tally restarting)
  are retried by ``RetryingJsonHook`` and end in ``RemoteUnavailableError``.
- **PDFs.** Tally publishes no document PDFs over XML: ``pdfUrl`` is set only when the connection names a
  ``pdf_path`` on the same host (a file share served next to Tally), and ``download_pdf`` fetches only from there.

Connection (``tally_default``, conn type http): ``host`` is the Tally server URL (``http://tally-host:9000``),
``login`` the company name to address (``SVCURRENTCOMPANY``; empty = the loaded company). Tally's XML port has no
authentication, so no secret is stored or sent.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit
from xml.sax.saxutils import escape, quoteattr

from omni_erp.exceptions import PayloadError, RemoteRejectedError
from omni_erp.hooks.base import AttemptObserver, RetryingJsonHook, RetryPolicy
from omni_erp.hooks.erp import Booking, ErpAdapter
from omni_erp.models.erp import (
    CreditNotePage,
    DocumentLine,
    EInvoice,
    EInvoicePage,
    ReturnOrder,
    ReturnOrderRequest,
    SalesOrder,
    SalesOrderRequest,
)
from omni_erp.timeutil import IST, now, parse_datetime, to_omni

TALLY_CONN_ID = "tally_default"
UDF_NS = "TallyUDF"
SALES_ORDER, SALES, CREDIT_NOTE = "Sales Order", "Sales", "Credit Note"
FETCH = (
    "DATE, VOUCHERTYPENAME, VOUCHERNUMBER, REFERENCE, PARTYLEDGERNAME, NARRATION, ISCANCELLED, MASTERID, ALTERID, "
    "IRN, IRNACKNO, IRNACKDATE, IRNQRCODE, INVOICEORDERLIST, OmniErpKey, OmniErpOrderCode, OmniErpReturnCode, "
    "LEDGERENTRIES, ALLINVENTORYENTRIES"
)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]|&#(?:[0-8]|1[1-2]|1[4-9]|2[0-9]|3[01]);")
_DUPLICATE = re.compile(r"already exists", re.IGNORECASE)


class _XmlBody(str):
    """A request body to send as ``text/xml`` rather than JSON (see ``_XmlSession``)."""


class _XmlSession:
    """The hook's ``requests.Session`` seen through one change: an ``_XmlBody`` passed as ``json`` is sent as
    UTF-8 ``text/xml``. ``RetryingJsonHook.call`` only sends JSON; this keeps its timeouts, retries and attempt
    records for Tally without changing the shared base."""

    def __init__(self, session: Any) -> None:
        self._session = session

    def request(self, method: str, url: str, *, json: Any = None, headers: dict[str, str] | None = None, **kw: Any) -> Any:
        if isinstance(json, _XmlBody):
            headers = {**(headers or {}), "Content-Type": "text/xml; charset=utf-8"}
            return self._session.request(method, url, data=json.encode("utf-8"), headers=headers, **kw)
        return self._session.request(method, url, json=json, headers=headers, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


class TallyHook(RetryingJsonHook, ErpAdapter):
    """``ErpAdapter`` for TallyPrime (XML over HTTP). See the module docstring for the company conventions.

    :param tally_conn_id: Airflow connection id (host = Tally URL, login = company name).
    :param retry_policy: attempts, backoff and timeouts.
    :param on_attempt: observer called after every HTTP attempt.
    :param pdf_path: path on the Tally host under which ``<document number with / as ->.pdf`` are served; None
        leaves ``pdfUrl`` empty (Omni then needs the PDF another way).
    """

    conn_name_attr = "tally_conn_id"
    default_conn_name = TALLY_CONN_ID
    conn_type = "tally"  # registered by omni_erp.provider
    hook_name = "Seller ERP (TallyPrime XML)"
    system = "erp"

    def __init__(
        self,
        tally_conn_id: str = TALLY_CONN_ID,
        *,
        retry_policy: RetryPolicy | None = None,
        on_attempt: AttemptObserver | None = None,
        pdf_path: str | None = None,
    ) -> None:
        super().__init__(tally_conn_id, retry_policy=retry_policy, on_attempt=on_attempt)
        self.tally_conn_id = tally_conn_id
        self.pdf_path = pdf_path.rstrip("/") if pdf_path else None
        self._company: str | None = None

    def new_session(self) -> Any:
        session = super().new_session()
        session.headers.pop("pdf_path", None)  # a setting of ours: the http provider would send it as a header
        return _XmlSession(session)

    def _extract_auth(self, connection: Any) -> Any:
        self._company = connection.login or ""  # login holds the company name, not a user: Tally has no auth
        if self.pdf_path is None:  # chosen by connection (erp_adapter passes no pdf_path): extra {"pdf_path": ...}
            configured = (connection.extra_dejson or {}).get("pdf_path")
            self.pdf_path = str(configured).rstrip("/") if configured else None
        return None

    @property
    def company(self) -> str:
        if self._company is None:
            self.session  # noqa: B018 - reading the connection sets the company
        return self._company or ""

    def test_connection(self) -> tuple[bool, str]:
        """The connection form's "Test": export the company's sales vouchers beyond the last one (an empty read)."""
        from omni_erp.hooks.probe import PROBE_CURSOR, probe

        return probe(
            self, "TallyPrime", lambda: self.einvoices_since(PROBE_CURSOR, limit=1),
            ok_message="TallyPrime answered an export for the company named in the connection's login",
        )

    def error_message(self, response: Any) -> tuple[str | None, str]:
        text = (response.text or response.reason or "")[:500]
        errors = re.findall(r"<LINEERROR>(.*?)</LINEERROR>", text, re.DOTALL)
        return ("LINEERROR", "; ".join(e.strip() for e in errors)[:500]) if errors else (None, text)

    # --- transport -------------------------------------------------------------------------

    def _post(self, xml: str, operation: str, key: str | None) -> ET.Element:
        response = self.call("POST", "/", operation=operation, json=_XmlBody(xml), idempotency_key=key)
        text = _CONTROL.sub("", response.content.decode("utf-8", "replace"))  # Tally emits &#4; and friends
        try:
            return ET.fromstring(text)
        except ET.ParseError as exc:
            raise RemoteRejectedError(self.system, response.status_code, f"Tally answered unreadable XML ({exc})") from exc

    def _static(self, variables: dict[str, str] | None = None) -> str:
        values = {"SVEXPORTFORMAT": "$$SysName:XML", **({"SVCURRENTCOMPANY": self.company} if self.company else {})}
        values.update(variables or {})
        return "".join(f"<{name}>{escape(value)}</{name}>" for name, value in values.items())

    def _import(self, vouchers: str, operation: str, key: str) -> tuple[dict[str, int], list[str]]:
        """Import vouchers; return Tally's counters and LINEERROR texts (not raising: callers read duplicates)."""
        xml = (
            "<ENVELOPE><HEADER><TALLYREQUEST>Import Data</TALLYREQUEST></HEADER><BODY><IMPORTDATA>"
            f"<REQUESTDESC><REPORTNAME>Vouchers</REPORTNAME><STATICVARIABLES>{self._static()}</STATICVARIABLES>"
            f'</REQUESTDESC><REQUESTDATA><TALLYMESSAGE xmlns:UDF="{UDF_NS}">{vouchers}</TALLYMESSAGE>'
            "</REQUESTDATA></IMPORTDATA></BODY></ENVELOPE>"
        )
        counts, errors = import_result(self._post(xml, operation, key))
        if counts is None:
            raise self._reject(operation, errors or ["Tally's answer has no import result"])
        return counts, errors

    def _reject(self, operation: str, errors: list[str]) -> RemoteRejectedError:
        return RemoteRejectedError(self.system, 200, f"{operation}: {'; '.join(errors)}"[:500], code="LINEERROR")

    def _vouchers(self, name: str, filters: dict[str, str], variables: dict[str, str], operation: str) -> list[ET.Element]:
        """Export a voucher collection filtered by ``filters`` (formula name -> TDL formula), in MASTERID order."""
        formulae = "".join(f'<SYSTEM TYPE="Formulae" NAME={quoteattr(n)}>{escape(f)}</SYSTEM>' for n, f in filters.items())
        xml = (
            "<ENVELOPE><HEADER><VERSION>1</VERSION><TALLYREQUEST>Export</TALLYREQUEST><TYPE>Collection</TYPE>"
            f"<ID>{escape(name)}</ID></HEADER><BODY><DESC><STATICVARIABLES>{self._static(variables)}</STATICVARIABLES>"
            f'<TDL><TDLMESSAGE><COLLECTION NAME={quoteattr(name)} ISMODIFY="No"><TYPE>Voucher</TYPE>'
            f"<FETCH>{FETCH}</FETCH><FILTERS>{', '.join(filters)}</FILTERS></COLLECTION>"
            + "".join(f'<VARIABLE NAME={quoteattr(v)}><TYPE>String</TYPE></VARIABLE>' for v in variables)
            + f"{formulae}</TDLMESSAGE></TDL></DESC></BODY></ENVELOPE>"
        )
        root = self._post(xml, operation, None)
        errors = [(e.text or "").strip() for e in root.iter("LINEERROR")]
        if errors:
            raise self._reject(operation, errors)
        return sorted(root.iterfind(".//COLLECTION/VOUCHER"), key=lambda v: _int(v.findtext("MASTERID")))

    def _find(self, vch_type: str, field: str, value: str, operation: str) -> ET.Element | None:
        """The voucher of ``vch_type`` whose ``field`` (VOUCHERNUMBER or the OmniErpKey UDF) equals ``value``."""
        found = self._vouchers(
            "OmniErpLookup",
            {"OmniErpOfType": f'$VoucherTypeName = "{vch_type}"', "OmniErpMatches": f"${field} = ##OmniErpValue"},
            {"OmniErpValue": value},
            operation,
        )
        return found[0] if found else None

    # --- sales orders ----------------------------------------------------------------------

    def create_sales_order(self, order: SalesOrderRequest, *, idempotency_key: str) -> Booking:
        existing = self._find(SALES_ORDER, "OmniErpKey", idempotency_key, "find_sales_order")
        if existing is not None:
            return Booking(_sales_order(existing), replayed=True)
        date = _tally_date(order.order_date)
        voucher = (
            f'<VOUCHER VCHTYPE="{SALES_ORDER}" ACTION="Create" OBJVIEW="Invoice Voucher View">'
            f"<DATE>{date}</DATE><VOUCHERTYPENAME>{SALES_ORDER}</VOUCHERTYPENAME>"
            f"<VOUCHERNUMBER>{escape(order.order_code)}</VOUCHERNUMBER><REFERENCE>{escape(order.po_number)}</REFERENCE>"
            f"<PARTYLEDGERNAME>{escape(order.buyer_code)}</PARTYLEDGERNAME>"
            + _udf("OmniErpKey", idempotency_key) + _udf("OmniErpOrderCode", order.order_code)
            + _entries(order.buyer_code, order.lines, order.total_amount, credit=False)
            + "</VOUCHER>"
        )
        counts, errors = self._import(voucher, "create_sales_order", idempotency_key)
        if errors and not all(_DUPLICATE.search(e) for e in errors):
            raise self._reject("create_sales_order", errors)
        # Created, or refused as a duplicate number: either way the voucher is now in Tally under this number.
        booked = self._find(SALES_ORDER, "VOUCHERNUMBER", order.order_code, "find_sales_order")
        if booked is None:
            raise self._reject("create_sales_order", errors or ["the Sales Order was not found after its import"])
        if errors and _text(booked, "OmniErpKey") not in ("", idempotency_key):
            raise self._reject("create_sales_order", errors)  # the number belongs to another booking
        return Booking(_sales_order(booked), replayed=bool(errors))

    def cancel_sales_order(self, sales_order_id: str, *, idempotency_key: str) -> SalesOrder:
        return _sales_order(self._cancel(SALES_ORDER, sales_order_id, "", "cancel_sales_order", idempotency_key))

    def _cancel(self, vch_type: str, number: str, reason: str, operation: str, key: str) -> ET.Element:
        voucher = self._find(vch_type, "VOUCHERNUMBER", number, operation)
        if voucher is None:
            raise RemoteRejectedError(self.system, 200, f"{vch_type} {number!r} does not exist in Tally", code="NOT_FOUND")
        if _yes(voucher, "ISCANCELLED"):
            return voucher
        xml = (
            f"<VOUCHER DATE={quoteattr(_text(voucher, 'DATE'))} TAGNAME=\"Voucher Number\" "
            f"TAGVALUE={quoteattr(number)} VCHTYPE={quoteattr(vch_type)} ACTION=\"Cancel\">"
            f"<NARRATION>{escape(reason)}</NARRATION></VOUCHER>"
        )
        _, errors = self._import(xml, operation, key)
        if errors:
            raise self._reject(operation, errors)
        cancelled = self._find(vch_type, "VOUCHERNUMBER", number, operation)
        if cancelled is None or not _yes(cancelled, "ISCANCELLED"):
            raise self._reject(operation, [f"{vch_type} {number} is not cancelled after the import"])
        return cancelled

    # --- e-invoices ------------------------------------------------------------------------

    def einvoices_since(self, cursor: int, *, limit: int = 100) -> EInvoicePage:
        found = self._registered(SALES, cursor, "list_einvoices")[:limit]
        return EInvoicePage.model_validate(
            {"items": [self._with_pdf(_einvoice(v)) for v in found], "nextCursor": _int(found[-1].findtext("MASTERID")) if found else cursor}
        )

    def cancel_irn(self, invoice_number: str, reason: str, *, idempotency_key: str) -> EInvoice:
        # TallyPrime cancels the IRN with the voucher (e-invoicing connected); refused after 24 hours.
        voucher = self._cancel(SALES, invoice_number, reason, "cancel_irn", idempotency_key)
        return EInvoice.model_validate(self._with_pdf(_einvoice(voucher)))

    def _registered(self, vch_type: str, cursor: int, operation: str) -> list[ET.Element]:
        filters = {
            "OmniErpOfType": f'$VoucherTypeName = "{vch_type}"',
            "OmniErpAfterCursor": "$MasterId > ##OmniErpCursor",
            "OmniErpHasIrn": "NOT $$IsEmpty:$IRN",
        }
        if vch_type == CREDIT_NOTE:  # a credit note has no status in the feed: a cancelled one must not be uploaded
            filters["OmniErpActive"] = "NOT $IsCancelled"
        return self._vouchers(
            f"OmniErp{vch_type.replace(' ', '')}Feed",
            filters,
            {"OmniErpCursor": str(int(cursor))},
            operation,
        )

    # --- returns and credit notes ----------------------------------------------------------

    def create_return_order(self, request: ReturnOrderRequest, *, idempotency_key: str) -> Booking:
        note, replayed = self._credit_note(
            request.invoice_number, request.order_code, request.reason, request.lines,
            key=idempotency_key, return_code=request.return_order_code, operation="create_return_order",
        )
        return Booking(_return_order(note), replayed=replayed)

    def request_credit_note(self, invoice_number: str, order_code: str, reason: str, *, idempotency_key: str) -> Booking:
        existing = self._find(CREDIT_NOTE, "OmniErpKey", idempotency_key, "find_credit_note")
        if existing is None:
            lines = self._open_lines(invoice_number, order_code)
            existing, replayed = self._credit_note(
                invoice_number, order_code, reason, lines, key=idempotency_key, return_code=None,
                operation="request_credit_note",
            )
        else:
            replayed = True
        return Booking(_credit_request(existing), replayed=replayed)

    def _open_lines(self, invoice_number: str, order_code: str) -> list[DocumentLine]:
        """The invoice's units not yet credited by an active credit note (a full credit note credits them)."""
        invoice = self._find(SALES, "VOUCHERNUMBER", invoice_number, "find_invoice")
        if invoice is None or _yes(invoice, "ISCANCELLED"):
            raise RemoteRejectedError(self.system, 200, f"invoice {invoice_number!r} is not an active Tally invoice", code="NOT_FOUND")
        if _order_no(invoice) != order_code:
            raise RemoteRejectedError(
                self.system, 200, f"invoice {invoice_number} belongs to order {_order_no(invoice)}, not {order_code}",
                code="NOT_FOUND",
            )
        notes = self._vouchers(
            "OmniErpCreditsOfInvoice",
            {"OmniErpOfType": f'$VoucherTypeName = "{CREDIT_NOTE}"', "OmniErpAgainst": "$Reference = ##OmniErpValue"},
            {"OmniErpValue": invoice_number},
            "find_credit_notes",
        )
        credited: dict[str, int] = {}
        for note in notes:
            if not _yes(note, "ISCANCELLED"):
                for line in _lines(note):
                    credited[line.sku] = credited.get(line.sku, 0) + line.quantity
        lines = []
        for line in _lines(invoice):
            units = line.quantity - min(line.quantity, credited.get(line.sku, 0))
            credited[line.sku] = credited.get(line.sku, 0) - (line.quantity - units)
            if units:
                lines.append(line.model_copy(update={"quantity": units}))
        if not lines:
            raise RemoteRejectedError(self.system, 200, f"invoice {invoice_number} is already fully credited", code="LINEERROR")
        return lines

    def _credit_note(
        self, invoice_number: str, order_code: str, reason: str, lines: list[DocumentLine], *,
        key: str, return_code: str | None, operation: str,
    ) -> tuple[ET.Element, bool]:
        existing = self._find(CREDIT_NOTE, "OmniErpKey", key, operation)
        if existing is not None:
            return existing, True
        party = self._party_of(invoice_number, operation)
        total = sum((line.unit_price * line.quantity for line in lines), Decimal(0))
        voucher = (
            f'<VOUCHER VCHTYPE="{CREDIT_NOTE}" ACTION="Create" OBJVIEW="Invoice Voucher View">'
            f"<DATE>{_tally_date(None)}</DATE><VOUCHERTYPENAME>{CREDIT_NOTE}</VOUCHERTYPENAME>"
            f"<REFERENCE>{escape(invoice_number)}</REFERENCE><PARTYLEDGERNAME>{escape(party)}</PARTYLEDGERNAME>"
            f"<NARRATION>{escape(reason)}</NARRATION>"
            + _udf("OmniErpKey", key) + _udf("OmniErpOrderCode", order_code)
            + (_udf("OmniErpReturnCode", return_code) if return_code else "")
            + _entries(party, lines, total, credit=True)
            + "</VOUCHER>"
        )
        _, errors = self._import(voucher, operation, key)
        # A retry after an answer lost once Tally had saved the note is refused when the units are credited already
        # (a full credit note): the note under our key is then the booking, not an error.
        if errors and self._find(CREDIT_NOTE, "OmniErpKey", key, operation) is None:
            raise self._reject(operation, errors)
        return self._first_with_key(key, operation)

    def _first_with_key(self, key: str, operation: str) -> tuple[ET.Element, bool]:
        """The Credit Note booked under ``key``, after cancelling any later one carrying the same key.

        Tally numbers Credit Notes itself, so two workers passing the look-up at the same moment would each
        create one. The first (lowest ``MASTERID``) is the booking; the others are cancelled here, by whichever
        worker sees them, before any of them reaches the feed as a second document. Returns
        ``(voucher, replayed)``, replayed when another voucher with the key was found.
        """
        found = self._vouchers(
            "OmniErpLookup",
            {"OmniErpOfType": f'$VoucherTypeName = "{CREDIT_NOTE}"', "OmniErpMatches": "$OmniErpKey = ##OmniErpValue"},
            {"OmniErpValue": key},
            operation,
        )
        active = [v for v in found if not _yes(v, "ISCANCELLED")]
        if not active:
            raise self._reject(operation, ["the Credit Note was not found after its import"])
        first = active[0]
        for extra in active[1:]:
            self.log.warning("Credit Notes %s and %s carry the key %s; cancelling the later one",
                             _text(first, "VOUCHERNUMBER"), _text(extra, "VOUCHERNUMBER"), key)
            reason = f"duplicate of {_text(first, 'VOUCHERNUMBER')} (same idempotency key)"
            self._cancel(CREDIT_NOTE, _text(extra, "VOUCHERNUMBER"), reason, operation, key)
        return first, len(active) > 1

    def _party_of(self, invoice_number: str, operation: str) -> str:
        invoice = self._find(SALES, "VOUCHERNUMBER", invoice_number, operation)
        if invoice is None:
            raise RemoteRejectedError(self.system, 200, f"invoice {invoice_number!r} does not exist in Tally", code="NOT_FOUND")
        return _text(invoice, "PARTYLEDGERNAME")

    def credit_notes_since(self, cursor: int, *, limit: int = 100) -> CreditNotePage:
        found = self._registered(CREDIT_NOTE, cursor, "list_credit_notes")[:limit]
        return CreditNotePage.model_validate(
            {"items": [self._with_pdf(_credit_note(v)) for v in found], "nextCursor": _int(found[-1].findtext("MASTERID")) if found else cursor}
        )

    # --- documents -------------------------------------------------------------------------

    def pdf_url(self, number: str) -> str | None:
        if self.pdf_path is None:
            return None
        return self.url_from_endpoint(f"{self.pdf_path}/{number.replace('/', '-')}.pdf")

    def download_pdf(self, url: str, *, key: str) -> bytes:
        """Download a document PDF, only from the configured ``pdf_path`` on the Tally host.

        :raises PayloadError: no ``pdf_path`` is configured, the URL lies elsewhere, or the answer is not a PDF.
        """
        if self.pdf_path is None:
            raise PayloadError("TallyPrime serves no PDFs over XML; configure pdf_path or upload with document='url'")
        base, target = urlsplit(self.url_from_endpoint(self.pdf_path)), urlsplit(url)
        if (target.scheme, target.netloc) != (base.scheme, base.netloc) or not target.path.startswith(base.path + "/"):
            raise PayloadError(f"pdfUrl is not under the Tally connection's pdf_path ({target.netloc}{target.path})")
        base_root = urlsplit(self.url_from_endpoint("")).path.rstrip("/")
        response = self.call("GET", target.path[len(base_root) :], operation="download_pdf", idempotency_key=key)
        if not response.content.startswith(b"%PDF"):
            raise PayloadError(f"pdfUrl did not return a PDF (content type {response.headers.get('content-type')})")
        return response.content

    def _with_pdf(self, document: dict[str, Any]) -> dict[str, Any]:
        number = document.get("invoiceNumber") or document.get("creditNoteNumber") or ""
        return {**document, "pdfUrl": self.pdf_url(number) if number else None}


# --- reading Tally's vouchers (pure functions) ---------------------------------------------------


def import_result(root: ET.Element) -> tuple[dict[str, int] | None, list[str]]:
    """Counters and ``LINEERROR`` texts of an import answer, in either of Tally's forms: ``RESPONSE`` (the
    ``Import Data`` request) or ``ENVELOPE/BODY/DATA/IMPORTRESULT`` (the ``Import``/``Data`` request). ``ERRORS`` or
    ``EXCEPTIONS`` above zero without a ``LINEERROR`` still count as an error. ``(None, errors)`` when the answer
    holds no counters at all.
    """
    result = root if root.tag in ("RESPONSE", "IMPORTRESULT") else root.find(".//IMPORTRESULT")
    if result is None:
        result = root.find(".//RESPONSE")
    errors = [(e.text or "").strip() for e in root.iter("LINEERROR")]
    if result is None:
        return None, errors
    counts = {child.tag: _int(child.text) for child in result if child.tag != "LINEERROR"}
    if (counts.get("ERRORS", 0) or counts.get("EXCEPTIONS", 0)) and not errors:
        errors = [f"Tally reported {counts.get('ERRORS', 0)} error(s) and {counts.get('EXCEPTIONS', 0)} exception(s)"]
    return counts, errors


def _int(text: str | None) -> int:
    try:
        return int((text or "0").strip())
    except ValueError:
        return 0


def _text(voucher: ET.Element, tag: str) -> str:
    """A field of an exported voucher; UDFs are found by name in their ``UDF:NAME.LIST``."""
    value = voucher.findtext(tag)
    if value is None and tag.startswith("OmniErp"):
        name = tag.upper()
        value = voucher.findtext(f"{{{UDF_NS}}}{name}.LIST/{{{UDF_NS}}}{name}")
    return (value or "").strip()


def _yes(voucher: ET.Element, tag: str) -> bool:
    return _text(voucher, tag).lower() == "yes"


def _order_no(voucher: ET.Element) -> str:
    return (voucher.findtext("INVOICEORDERLIST.LIST/BASICPURCHASEORDERNO") or "").strip()


def _number(text: str | None) -> str:
    """A Tally amount, rate or quantity as plain number text: unit (``/Nos``, `` Nos``), commas and sign dropped.

    Left as text on purpose: the feed page's validation sets a voucher with an unreadable figure aside with the
    reason, instead of one bad voucher failing the whole page (``models.erp._FeedPage``)."""
    value = (text or "").strip().split("/")[0].strip().split(" ")[0].replace(",", "")
    return value[1:] if value.startswith("-") else value


def _line_dicts(voucher: ET.Element) -> list[dict[str, Any]]:
    lines = []
    for entry in voucher.iterfind("ALLINVENTORYENTRIES.LIST"):
        quantity = _number(entry.findtext("BILLEDQTY"))
        try:  # "2" and "2.000" are whole units; "1.5" stays as text and fails the line's validation
            quantity = str(int(Decimal(quantity))) if Decimal(quantity) == int(Decimal(quantity)) else quantity
        except (InvalidOperation, ValueError):
            pass
        lines.append({
            "sku": (entry.findtext("STOCKITEMNAME") or "").strip(),
            "quantity": quantity,
            "unitPrice": _number(entry.findtext("RATE")),
        })
    return lines


def _lines(voucher: ET.Element) -> list[DocumentLine]:
    """The voucher's inventory lines, validated.

    :raises PayloadError: a line Tally holds cannot be read (fractional quantity, missing rate).
    """
    try:
        return [DocumentLine.model_validate(line) for line in _line_dicts(voucher)]
    except ValueError as exc:
        raise PayloadError(f"voucher {_text(voucher, 'VOUCHERNUMBER')} has a line that cannot be read: {exc}") from exc


def _total(voucher: ET.Element) -> str:
    party = _text(voucher, "PARTYLEDGERNAME")
    for entry in voucher.iterfind("LEDGERENTRIES.LIST"):
        if (entry.findtext("LEDGERNAME") or "").strip() == party:
            return _number(entry.findtext("AMOUNT"))
    return ""  # no party line: the page's validation reports the missing total


def _date(text: str) -> str:
    """Tally's ``yyyymmdd`` (or NIC's ``yyyy-MM-dd HH:mm:ss``), IST, as Omni's timestamp; as is when neither."""
    for fmt in ("%Y%m%d", "%Y-%m-%d %H:%M:%S", "%d-%b-%Y"):
        try:
            return to_omni(datetime.strptime(text, fmt).replace(tzinfo=IST))
        except ValueError:
            continue
    return text


def _registered(voucher: ET.Element) -> dict[str, Any]:
    return {
        "seq": _int(voucher.findtext("MASTERID")),
        "irn": _text(voucher, "IRN"),
        "ackNumber": _text(voucher, "IRNACKNO"),
        "ackDate": _date(_text(voucher, "IRNACKDATE")),
        "signedQrCode": _text(voucher, "IRNQRCODE"),
        "lines": _line_dicts(voucher),
        "totalValue": _total(voucher),
    }


def _einvoice(voucher: ET.Element) -> dict[str, Any]:
    order = _order_no(voucher)
    return {
        **_registered(voucher),
        "invoiceNumber": _text(voucher, "VOUCHERNUMBER"),
        "invoiceDate": _date(_text(voucher, "DATE")),
        "salesOrderId": order,
        "orderCode": order,
        "poNumber": _text(voucher, "REFERENCE"),
        "status": "CANCELLED" if _yes(voucher, "ISCANCELLED") else "ACTIVE",
    }


def _credit_note(voucher: ET.Element) -> dict[str, Any]:
    return {
        **_registered(voucher),
        "creditNoteNumber": _text(voucher, "VOUCHERNUMBER"),
        "creditNoteDate": _date(_text(voucher, "DATE")),
        "returnOrderCode": _text(voucher, "OmniErpReturnCode") or None,
        "orderCode": _text(voucher, "OmniErpOrderCode"),
        "invoiceNumber": _text(voucher, "REFERENCE"),
    }


def _sales_order(voucher: ET.Element) -> SalesOrder:
    return SalesOrder.model_validate({
        "salesOrderId": _text(voucher, "VOUCHERNUMBER"),
        "orderCode": _text(voucher, "OmniErpOrderCode") or _text(voucher, "VOUCHERNUMBER"),
        "status": "CANCELLED" if _yes(voucher, "ISCANCELLED") else "BOOKED",
        "createdAt": _date(_text(voucher, "DATE")),
    })


def _return_order(voucher: ET.Element) -> ReturnOrder:
    return ReturnOrder.model_validate({
        "returnOrderId": _text(voucher, "VOUCHERNUMBER"),
        "returnOrderCode": _text(voucher, "OmniErpReturnCode"),
        "status": "CANCELLED" if _yes(voucher, "ISCANCELLED") else ("REGISTERED" if _text(voucher, "IRN") else "CREATED"),
    })


def _credit_request(voucher: ET.Element) -> dict[str, Any]:
    return {
        "creditNoteRequestId": _text(voucher, "OmniErpKey"),
        "creditNoteNumber": _text(voucher, "VOUCHERNUMBER"),
        "invoiceNumber": _text(voucher, "REFERENCE"),
        "status": "GENERATED" if _text(voucher, "IRN") else "PENDING",
    }


# --- writing vouchers ----------------------------------------------------------------------------


def _tally_date(value: str | None) -> str:
    """``yyyymmdd`` in IST of an ISO date-time (today when None or unreadable)."""
    try:
        parsed = parse_datetime(value) if value else None
    except ValueError:
        parsed = None
    return (parsed or now()).astimezone(IST).strftime("%Y%m%d")


def _udf(name: str, value: str) -> str:
    tag = f"UDF:{name.upper()}"
    return f'<{tag}.LIST DESC="`{name}`" ISLIST="YES" TYPE="String"><{tag} DESC="`{name}`">{escape(value)}</{tag}></{tag}.LIST>'


def _entries(party: str, lines: Iterable[DocumentLine], total: Decimal, *, credit: bool) -> str:
    """The party ledger line and the inventory lines. Tally's signs: a debit is negative, so a sale debits the
    party (``-total``) and credits the stock lines; a credit note does the opposite."""
    sign = Decimal(1) if credit else Decimal(-1)
    parts = [
        f"<LEDGERENTRIES.LIST><LEDGERNAME>{escape(party)}</LEDGERNAME><ISPARTYLEDGER>Yes</ISPARTYLEDGER>"
        f"<ISDEEMEDPOSITIVE>{'No' if credit else 'Yes'}</ISDEEMEDPOSITIVE>"
        f"<AMOUNT>{sign * total:.2f}</AMOUNT></LEDGERENTRIES.LIST>"
    ]
    for line in lines:
        amount = line.unit_price * line.quantity
        parts.append(
            f"<ALLINVENTORYENTRIES.LIST><STOCKITEMNAME>{escape(line.sku)}</STOCKITEMNAME>"
            f"<ISDEEMEDPOSITIVE>{'Yes' if credit else 'No'}</ISDEEMEDPOSITIVE>"
            f"<RATE>{line.unit_price:.2f}/Nos</RATE><AMOUNT>{-sign * amount:.2f}</AMOUNT>"
            f"<ACTUALQTY> {line.quantity} Nos</ACTUALQTY><BILLEDQTY> {line.quantity} Nos</BILLEDQTY>"
            "</ALLINVENTORYENTRIES.LIST>"
        )
    return "".join(parts)
