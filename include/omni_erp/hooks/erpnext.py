"""``ErpAdapter`` for ERPNext through the Frappe REST API, with the India Compliance app's GST e-invoices.

The connection (conn type http) holds the site URL in ``host``, the integration user's API key in
``login`` and its API secret in ``password``; every call carries ``Authorization: token <key>:<secret>``.

Custom fields the site needs (Customize Form, or a fixture of the seller's app): ``omni_idempotency_key``
(Data, unique) and ``omni_order_code`` (Data) on Sales Order and Sales Invoice, ``omni_return_order_code``
(Data) on Sales Invoice, ``omni_line_code`` (Data) on Sales Order Item and Sales Invoice Item. ERPNext's
mapper copies same-named fields from the order to its invoice.

What each method guarantees:

- **Writes are idempotent without idempotency keys.** ERPNext takes no ``Idempotency-Key`` header, so every
  create first looks its document up by an external reference kept in a unique custom field,
  ``omni_idempotency_key`` (on Sales Order and Sales Invoice), and only inserts when nothing carries the
  key; a found document is returned as ``Booking(..., replayed=True)``. Two creates racing past the look-up
  meet the field's unique index: Frappe answers 409 ``DuplicateEntryError``, which is turned into a second
  look-up and a replay, not an error. The Ajio order code sits in ``omni_order_code`` and the Ajio PO in
  ``po_no`` (ERPNext's "Customer's Purchase Order"), both copied onto the Sales Invoice by ERPNext's mapper.
  Cancels are idempotent by state: a document already cancelled (``docstatus`` 2, ``einvoice_status``
  "Cancelled") is returned as it is.
- **E-invoices and credit notes are discovered by their naming-series number.** ``einvoices_since`` lists
  submitted, non-return Sales Invoices whose ``einvoice_status`` is "Generated" (India Compliance sets it
  with ``irn``, ``ack_no``, ``ack_date`` and ``signed_qr_code`` once the IRP registers the invoice);
  ``credit_notes_since`` lists return Sales Invoices (``is_return`` 1, ``return_against`` the invoice) the
  same way. The cursor ``seq`` is the counter Frappe appends to the series prefix (``RB2627/000042`` -> 42):
  Frappe takes it from ``tabSeries`` under a row lock in the insert's transaction, so numbers follow insert
  order and never repeat. An invoice registered at the IRP after later ones (the IRN comes after submit)
  shows up behind the cursor - the feed readers' look-back re-reads that window. Because a name is compared
  as text, a series must have a fixed prefix and enough digits; at the financial-year change (a new prefix)
  the adapter is given the new series and the feed re-read from ``since_seq=0``. A name whose suffix is not
  a number (an amended ``RB2627/000042-1``) is listed without a ``seq`` and so set aside as unreadable.
  Lines are the invoice items (``item_code``, ``qty``, ``rate``; rates tax-inclusive, which is how a seller
  books Ajio's MRP-based prices) and ``totalValue`` the ``grand_total`` (absolute values for credit notes).
- **Errors:** Frappe answers ``{"exc_type", "exception", "_server_messages"}``; the message shown is the
  one queued by ``frappe.throw`` (else the exception line). 4xx (``ValidationError`` is 417) become
  ``RemoteRejectedError`` with ``code`` = ``exc_type``; 5xx, 429 and timeouts are retried by
  ``RetryingJsonHook`` and end as ``RemoteUnavailableError``. Two refusals the flows act on are given the
  generic contract's codes: cancelling a billed order (``LinkExistsError``) -> 409 ``ORDER_INVOICED``, an
  IRN older than 24 hours -> 409 ``IRN_CANCEL_WINDOW_CLOSED``.
- ``create_return_order`` and ``request_credit_note`` raise the credit note itself, a submitted return
  Sales Invoice (partial, from the return's lines; or full, from ERPNext's ``make_sales_return`` mapper);
  India Compliance registers it at the IRP and ``credit_notes_since`` then lists it.

Written from the published documentation and sources:

- Frappe REST API (token auth, ``/api/resource`` list/insert/get, ``/api/method``):
  https://docs.frappe.io/framework/user/en/api/rest and https://www.mintlify.com/frappe/frappe/api/rest/overview
- Frappe's error rendering and exception statuses (``exc_type``, ``exception``; ``DuplicateEntryError`` 409,
  ``ValidationError`` 417, ``DoesNotExistError`` 404): frappe/frappe ``frappe/utils/response.py``
  (``report_error``) and ``frappe/exceptions.py``.
- India Compliance e-invoice fields and cancellation (``cancel_e_invoice(docname, values)`` with
  ``values.reason``/``remark``, ``validate_if_e_invoice_can_be_cancelled``: 24 hours after the ack; the
  invoice's ``irn`` is blanked and ``einvoice_status`` set to "Cancelled", the IRN kept in ``e-Invoice Log``):
  resilient-tech/india-compliance ``india_compliance/gst_india/utils/e_invoice.py``.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from omni_erp import settings
from omni_erp.exceptions import PayloadError, RemoteRejectedError
from omni_erp.hooks.base import (
    AttemptObserver,
    ConnectionConfigError,
    RetryingJsonHook,
    RetryPolicy,
    is_header_safe,
    path_segment,
)
from omni_erp.hooks.erp import Booking, ErpAdapter
from omni_erp.models.erp import (
    CreditNotePage,
    EInvoice,
    EInvoicePage,
    ReturnOrder,
    ReturnOrderRequest,
    SalesOrder,
    SalesOrderRequest,
)
from omni_erp.timeutil import IST, to_omni

SALES_ORDER, SALES_INVOICE, EINVOICE_LOG = "Sales Order", "Sales Invoice", "e-Invoice Log"
KEY_FIELD = "omni_idempotency_key"
ORDER_CODE_FIELD = "omni_order_code"
RETURN_CODE_FIELD = "omni_return_order_code"
CANCEL_METHOD = "frappe.client.cancel"
CANCEL_EINVOICE_METHOD = "india_compliance.gst_india.utils.e_invoice.cancel_e_invoice"
MAKE_RETURN_METHOD = "erpnext.accounts.doctype.sales_invoice.sales_invoice.make_sales_return"
PDF_METHOD = "frappe.utils.print_format.download_pdf"
# The generic contract's codes for the two refusals the cancellation flow acts on (operators/cancellation.py).
ORDER_INVOICED = "ORDER_INVOICED"
IRN_CANCEL_WINDOW_CLOSED = "IRN_CANCEL_WINDOW_CLOSED"
_IRN_WINDOW_MESSAGE = re.compile(r"cancel\w* (only )?(with)?in 24 hours|upto 24 hours", re.IGNORECASE)
_TAG = re.compile(r"<[^>]+>")


class FrappeTokenAuth:
    """``Authorization: token <api_key>:<api_secret>`` (Frappe's token authentication)."""

    def __init__(self, api_key: str, api_secret: str) -> None:
        value = f"token {api_key}:{api_secret}"
        if not is_header_safe(value):
            raise ConnectionConfigError("the ERPNext API key or secret holds characters an HTTP header cannot carry")
        self._value = value

    def __call__(self, request: Any) -> Any:
        request.headers["Authorization"] = self._value
        return request

    def __repr__(self) -> str:  # never show the secret
        return "FrappeTokenAuth(****)"


def frappe_error(body: Any) -> tuple[str | None, str]:
    """``(exc_type, message)`` from a Frappe error body; the message is what ``frappe.throw`` queued."""
    if not isinstance(body, dict):
        return None, ""
    exception = str(body.get("exception") or "")
    code = body.get("exc_type") or (exception.split(":", 1)[0].rsplit(".", 1)[-1] if ":" in exception else None)
    messages: list[str] = []
    try:
        for raw in json.loads(body.get("_server_messages") or "[]"):
            item = json.loads(raw) if isinstance(raw, str) else raw
            text = item.get("message") if isinstance(item, dict) else item
            if text:
                messages.append(_TAG.sub("", str(text)).strip())
    except (TypeError, ValueError):
        pass
    message = "; ".join(messages) or (exception.split(": ", 1)[-1] if exception else str(body.get("message") or ""))
    return (str(code) if code else None), message[:500]


def _series_prefix(series: str) -> tuple[str, int]:
    """``RB2627/.######`` -> (``RB2627/``, 6)."""
    prefix, dot, hashes = series.rpartition(".")
    if not dot or not prefix or not hashes or set(hashes) != {"#"}:
        raise ValueError(f"naming series {series!r} must look like 'PREFIX.####'")
    return prefix, len(hashes)


def _frappe_time(value: Any) -> str | None:
    """Frappe's site-local ``2026-12-03 19:53:19`` (IST for an Indian site) as Omni's ISO form."""
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)  # the feed model records what it cannot use as unreadable
    return to_omni(dt if dt.tzinfo else dt.replace(tzinfo=IST))


def _order_status(doc: dict[str, Any]) -> str:
    """ERPNext's docstatus/billing in the contract's words: CANCELLED, INVOICED or BOOKED."""
    if doc.get("docstatus") == 2:
        return "CANCELLED"
    return "INVOICED" if float(doc.get("per_billed") or 0) > 0 else "BOOKED"


class ErpNextHook(RetryingJsonHook, ErpAdapter):
    """``ErpAdapter`` for an ERPNext site with India Compliance (see the module docstring).

    :param erp_conn_id: Airflow connection id (host = site URL, login = API key, password = API secret).
    :param invoice_series: naming series of the Sales Invoices the feed reads, e.g. ``RB2627/.######``.
    :param credit_note_series: naming series given to the credit notes this adapter raises and reads.
    :param retry_policy: attempts, backoff and timeouts.
    :param on_attempt: observer called after every HTTP attempt.
    """

    conn_name_attr = "erp_conn_id"
    default_conn_name = settings.ERP_CONN_ID
    conn_type = "erpnext"  # registered by omni_erp.provider
    hook_name = "Seller ERP (ERPNext)"
    system = "erp"

    def __init__(
        self,
        erp_conn_id: str = settings.ERP_CONN_ID,
        *,
        invoice_series: str = "RB2627/.######",
        credit_note_series: str = "RC2627/.######",
        retry_policy: RetryPolicy | None = None,
        on_attempt: AttemptObserver | None = None,
    ) -> None:
        super().__init__(erp_conn_id, retry_policy=retry_policy, on_attempt=on_attempt)
        self.erp_conn_id = erp_conn_id
        self.invoice_series = _series_prefix(invoice_series)
        self.credit_note_series = _series_prefix(credit_note_series)
        self.credit_note_naming = credit_note_series

    def _extract_auth(self, connection: Any) -> Any:
        if not connection.login or not connection.password:
            raise ConnectionConfigError(
                f"connection {self.erp_conn_id!r} needs the ERPNext API key in 'login' and the API secret in 'password'"
            )
        return FrappeTokenAuth(connection.login, connection.password)

    def test_connection(self) -> tuple[bool, str]:
        """The connection form's "Test": list Sales Invoices beyond the last one (key, secret and URL checked)."""
        from omni_erp.hooks.probe import PROBE_CURSOR, probe

        return probe(
            self, "ERPNext", lambda: self.einvoices_since(PROBE_CURSOR, limit=1),
            ok_message="ERPNext accepted the API key and secret and answered a Sales Invoice listing",
        )

    def error_message(self, response: Any) -> tuple[str | None, str]:
        try:
            code, message = frappe_error(response.json())
        except ValueError:
            return None, (response.text or response.reason or "")[:500]
        return code, message or (response.reason or "")

    # --- Frappe REST primitives ---------------------------------------------------------------

    def _list(
        self, doctype: str, filters: list[list[Any]], *, fields: list[str], order_by: str, limit: int, key: str | None = None
    ) -> list[dict[str, Any]]:
        params = {
            "filters": json.dumps(filters),
            "fields": json.dumps(fields),
            "order_by": order_by,
            "limit_start": 0,
            "limit_page_length": limit,
        }
        endpoint = f"/api/resource/{path_segment(doctype)}"
        response = self.call("GET", endpoint, operation=f"list {doctype}", params=params, idempotency_key=key)
        return list(response.json().get("data") or [])

    def _get(self, doctype: str, name: str, *, key: str | None = None) -> dict[str, Any]:
        endpoint = f"/api/resource/{path_segment(doctype)}/{path_segment(name)}"
        return self.call("GET", endpoint, operation=f"get {doctype}", idempotency_key=key).json()["data"]

    def _insert(self, doctype: str, doc: dict[str, Any], key: str) -> dict[str, Any]:
        endpoint = f"/api/resource/{path_segment(doctype)}"
        return self.call("POST", endpoint, operation=f"insert {doctype}", json=doc, idempotency_key=key).json()["data"]

    def _method(self, method: str, args: dict[str, Any], key: str) -> Any:
        operation = method.rsplit(".", 1)[-1]
        return self.call("POST", f"/api/method/{method}", operation=operation, json=args, idempotency_key=key).json()

    def _by_key(self, doctype: str, key: str) -> dict[str, Any] | None:
        found = self._list(doctype, [[KEY_FIELD, "=", key]], fields=["name"], order_by="creation asc", limit=1, key=key)
        return self._get(doctype, found[0]["name"], key=key) if found else None

    def _create_once(self, doctype: str, doc: dict[str, Any], key: str) -> tuple[dict[str, Any], bool]:
        """Look up by key, else insert; a 409 from the unique key field means another call won: replay it."""
        existing = self._by_key(doctype, key)
        if existing is not None:
            return existing, True
        try:
            return self._insert(doctype, {**doc, KEY_FIELD: key}, key), False
        except RemoteRejectedError as exc:
            if exc.status != 409:
                raise
            existing = self._by_key(doctype, key)
            if existing is None:
                raise
            return existing, True

    # --- ErpAdapter ---------------------------------------------------------------------------

    def create_sales_order(self, order: SalesOrderRequest, *, idempotency_key: str) -> Booking:
        doc: dict[str, Any] = {
            "customer": order.buyer_code,
            "po_no": order.po_number,
            ORDER_CODE_FIELD: order.order_code,
            "docstatus": 1,  # insert and submit in one call
            "items": [
                {"item_code": line.sku, "qty": line.quantity, "rate": str(line.unit_price), "omni_line_code": line.line_code}
                for line in order.lines
            ],
        }
        if order.order_date:
            doc["transaction_date"] = order.order_date[:10]
            doc["delivery_date"] = order.order_date[:10]
        if order.location_code:
            doc["set_warehouse"] = order.location_code
        saved, replayed = self._create_once(SALES_ORDER, doc, idempotency_key)
        return Booking(self._sales_order(saved), replayed=replayed)

    @staticmethod
    def _sales_order(doc: dict[str, Any]) -> SalesOrder:
        return SalesOrder.model_validate(
            {"salesOrderId": doc["name"], "orderCode": doc.get(ORDER_CODE_FIELD) or "", "status": _order_status(doc),
             "createdAt": _frappe_time(doc.get("creation"))}
        )

    def _feed(self, series: tuple[str, int], is_return: int, cursor: int, limit: int) -> tuple[list[Any], int]:
        prefix, digits = series
        filters = [
            ["docstatus", "=", 1],
            ["is_return", "=", is_return],
            ["einvoice_status", "=", "Generated"],
            ["name", "like", f"{prefix}%"],
            ["name", ">", f"{prefix}{max(cursor, 0):0{digits}d}"],
        ]
        names = self._list(SALES_INVOICE, filters, fields=["name"], order_by="name asc", limit=limit)
        items: list[Any] = []
        top = cursor
        for row in names:
            doc = self._get(SALES_INVOICE, row["name"])
            seq_text = doc["name"][len(prefix):]
            seq = int(seq_text) if seq_text.isdigit() else None
            items.append(self._registered(doc, seq))
            if seq is not None:
                top = max(top, seq)
        return items, top

    def _registered(self, doc: dict[str, Any], seq: int | None) -> dict[str, Any]:
        """The contract's JSON for a registered invoice or credit note (validated by the page models)."""
        items = doc.get("items") or []
        base = self.url_from_endpoint("").rstrip("/")
        return {
            "seq": seq,
            "orderCode": doc.get(ORDER_CODE_FIELD),
            "irn": doc.get("irn"),
            "ackNumber": doc.get("ack_no"),
            "ackDate": _frappe_time(doc.get("ack_date")),
            "signedQrCode": doc.get("signed_qr_code"),
            "pdfUrl": f"{base}/api/method/{PDF_METHOD}?doctype={path_segment(SALES_INVOICE)}&name={path_segment(doc['name'])}",
            "lines": [
                {"lineCode": item.get("omni_line_code"), "sku": item.get("item_code"), "quantity": abs(item.get("qty") or 0),
                 "unitPrice": item.get("rate")}
                for item in items
            ],
            "totalValue": abs(Decimal(str(doc.get("grand_total") or 0))),
            "poNumber": doc.get("po_no"),
            "salesOrderId": next((item.get("sales_order") for item in items if item.get("sales_order")), None),
            "name": doc["name"],
            "postingDate": doc.get("posting_date"),
            "returnAgainst": doc.get("return_against"),
            "returnOrderCode": doc.get(RETURN_CODE_FIELD),
        }

    def einvoices_since(self, cursor: int, *, limit: int = 100) -> EInvoicePage:
        items, top = self._feed(self.invoice_series, 0, cursor, limit)
        for item in items:
            item.update(invoiceNumber=item["name"], invoiceDate=item["postingDate"], status="ACTIVE")
        return EInvoicePage.model_validate({"items": items, "nextCursor": top})

    def credit_notes_since(self, cursor: int, *, limit: int = 100) -> CreditNotePage:
        items, top = self._feed(self.credit_note_series, 1, cursor, limit)
        for item in items:
            item.update(creditNoteNumber=item["name"], creditNoteDate=item["postingDate"], invoiceNumber=item["returnAgainst"])
        return CreditNotePage.model_validate({"items": items, "nextCursor": top})

    def cancel_sales_order(self, sales_order_id: str, *, idempotency_key: str) -> SalesOrder:
        doc = self._get(SALES_ORDER, sales_order_id, key=idempotency_key)
        if doc.get("docstatus") != 2:
            try:
                self._method(CANCEL_METHOD, {"doctype": SALES_ORDER, "name": sales_order_id}, idempotency_key)
            except RemoteRejectedError as exc:
                if exc.code == "LinkExistsError":
                    raise RemoteRejectedError(self.system, 409, exc.message, code=ORDER_INVOICED) from exc
                if self._get(SALES_ORDER, sales_order_id, key=idempotency_key).get("docstatus") != 2:
                    raise
            doc = self._get(SALES_ORDER, sales_order_id, key=idempotency_key)
        return self._sales_order(doc)

    def cancel_irn(self, invoice_number: str, reason: str, *, idempotency_key: str) -> EInvoice:
        doc = self._get(SALES_INVOICE, invoice_number, key=idempotency_key)
        if doc.get("einvoice_status") != "Cancelled":
            values = {"reason": "Order Cancelled", "remark": reason[:100]}
            try:
                self._method(CANCEL_EINVOICE_METHOD, {"docname": invoice_number, "values": json.dumps(values)}, idempotency_key)
            except RemoteRejectedError as exc:
                if _IRN_WINDOW_MESSAGE.search(exc.message):
                    raise RemoteRejectedError(self.system, 409, exc.message, code=IRN_CANCEL_WINDOW_CLOSED) from exc
                if self._get(SALES_INVOICE, invoice_number, key=idempotency_key).get("einvoice_status") != "Cancelled":
                    raise
        else:
            # India Compliance blanks the invoice's irn on cancellation; the e-Invoice Log keeps it.
            logs = self._list(
                EINVOICE_LOG, [["sales_invoice", "=", invoice_number], ["is_cancelled", "=", 1]],
                fields=["name", "acknowledgement_number", "acknowledged_on", "signed_qr_code"],
                order_by="creation desc", limit=1, key=idempotency_key,
            )
            if not logs:
                raise PayloadError(f"e-invoice {invoice_number} is cancelled in ERPNext but has no e-Invoice Log")
            log = logs[0]
            doc = {**doc, "irn": log["name"], "ack_no": log.get("acknowledgement_number"),
                   "ack_date": log.get("acknowledged_on"), "signed_qr_code": log.get("signed_qr_code")}
        item = self._registered(doc, 0)
        item.update(invoiceNumber=doc["name"], invoiceDate=doc.get("posting_date"), status="CANCELLED")
        return EInvoice.model_validate(item)

    def create_return_order(self, request: ReturnOrderRequest, *, idempotency_key: str) -> Booking:
        invoice = self._get(SALES_INVOICE, request.invoice_number, key=idempotency_key)
        if invoice.get(ORDER_CODE_FIELD) != request.order_code:
            raise PayloadError(
                f"invoice {request.invoice_number} belongs to order {invoice.get(ORDER_CODE_FIELD)}, not {request.order_code}"
            )
        doc = self._credit_note(request.invoice_number, [
            {"item_code": line.sku, "qty": -line.quantity, "rate": str(line.unit_price), "omni_line_code": line.line_code}
            for line in request.lines
        ], request.reason)
        doc.update({RETURN_CODE_FIELD: request.return_order_code, ORDER_CODE_FIELD: request.order_code,
                    "customer": invoice.get("customer"), "po_no": invoice.get("po_no")})
        saved, replayed = self._create_once(SALES_INVOICE, doc, idempotency_key)
        return Booking(
            ReturnOrder.model_validate(
                {"returnOrderId": saved["name"], "returnOrderCode": saved.get(RETURN_CODE_FIELD) or request.return_order_code,
                 "status": "CANCELLED" if saved.get("docstatus") == 2 else "CREATED"}
            ),
            replayed=replayed,
        )

    def _credit_note(self, invoice_number: str, items: list[dict[str, Any]], reason: str) -> dict[str, Any]:
        return {
            "naming_series": self.credit_note_naming,
            "is_return": 1,
            "return_against": invoice_number,
            "remarks": reason[:140],
            "docstatus": 1,
            "items": items,
        }

    def request_credit_note(self, invoice_number: str, order_code: str, reason: str, *, idempotency_key: str) -> Booking:
        existing = self._by_key(SALES_INVOICE, idempotency_key)
        if existing is None:
            mapped = self._method(MAKE_RETURN_METHOD, {"source_name": invoice_number}, idempotency_key)["message"]
            if mapped.get(ORDER_CODE_FIELD) != order_code:
                raise PayloadError(f"invoice {invoice_number} belongs to order {mapped.get(ORDER_CODE_FIELD)}, not {order_code}")
            if not mapped.get("items"):
                raise PayloadError(f"invoice {invoice_number} is already fully credited in ERPNext")
            doc = {**self._credit_note(invoice_number, mapped["items"], reason), ORDER_CODE_FIELD: order_code}
            saved, replayed = self._create_once(SALES_INVOICE, doc, idempotency_key)
        else:
            saved, replayed = existing, True
        document = {
            "creditNoteRequestId": saved["name"],
            "status": "GENERATED" if saved.get("einvoice_status") == "Generated" else "PENDING",
            "invoiceNumber": invoice_number,
            "creditNoteNumber": saved["name"],
        }
        return Booking(document, replayed=replayed)

    def download_pdf(self, url: str, *, key: str) -> bytes:
        """The printed PDF, from the site's own host only (the token must never reach another host).

        :raises PayloadError: the URL is on another host, or the answer is not a PDF.
        """
        base, target = urlsplit(self.url_from_endpoint("")), urlsplit(url)
        base_path = base.path.rstrip("/")
        if (target.scheme, target.netloc) != (base.scheme, base.netloc) or not target.path.startswith(base_path):
            raise PayloadError(f"pdfUrl is not on the ERPNext site's host ({target.netloc}); use document='url'")
        endpoint = target.path[len(base_path):] + (f"?{target.query}" if target.query else "")
        response = self.call("GET", endpoint, operation="download_pdf", idempotency_key=key)
        if not response.content.startswith(b"%PDF"):
            raise PayloadError(f"pdfUrl did not return a PDF (content type {response.headers.get('content-type')})")
        return response.content
