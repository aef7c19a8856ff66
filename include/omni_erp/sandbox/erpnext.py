"""Sandbox of ERPNext (Frappe REST API) with the India Compliance app's e-invoice fields.

Follows the shapes the real site answers with (see ``omni_erp.hooks.erpnext`` for the sources):

- token auth ``Authorization: token <api_key>:<api_secret>``; anything else is 401 ``AuthenticationError``;
- ``GET /api/resource/<DocType>`` with ``filters`` / ``fields`` (JSON), ``order_by``, ``limit_start``,
  ``limit_page_length`` answers ``{"data": [...]}`` (parent fields only, like Frappe's list API);
  ``GET /api/resource/<DocType>/<name>`` and ``POST /api/resource/<DocType>`` answer ``{"data": doc}``;
  a body with ``docstatus: 1`` is inserted and submitted in one call;
- ``POST /api/method/<dotted.path>`` for ``frappe.client.cancel``, India Compliance's
  ``cancel_e_invoice`` and ERPNext's ``make_sales_return``; ``GET`` of Frappe's ``download_pdf``;
- errors as Frappe renders them: ``{"exc_type", "exception", "_server_messages"}`` with Frappe's statuses
  (``ValidationError`` 417, ``DoesNotExistError`` 404, ``DuplicateEntryError`` 409 for a unique custom field
  such as ``omni_idempotency_key`` inserted twice, ``LinkExistsError`` 417 when cancelling a billed order).

What the seller's site does on its own is simulated: ``invoice_delay_s`` after a sales order is submitted it
is billed (a Sales Invoice from the order's lines, named from ``invoice_series``) and India Compliance
registers the IRN (``irn``, ``ack_no``, ``ack_date``, ``signed_qr_code``, ``einvoice_status`` "Generated",
plus an ``e-Invoice Log`` named by the IRN); a submitted return Sales Invoice (credit note) gets its IRN the
same delay later. Cancelling an e-invoice works within 24 hours of its ``ack_date`` (``clock_offset_s`` moves
the sandbox clock), blanks ``irn`` and cancels the invoice, as India Compliance does. There is no background
thread: due documents are published when the next request (or ``GET /_sandbox/state``) arrives, which is
enough for feed readers that poll.
"""

from __future__ import annotations

import hmac
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from pydantic import Field

from omni_erp import einvoice
from omni_erp.sandbox.base import SandboxState, sandbox_app
from omni_erp.sandbox.catalogue import hsn_for
from omni_erp.sandbox.faults import ApiError, FaultConfig, FaultInjector, read_json
from omni_erp.sandbox.pdf import tiny_pdf
from omni_erp.timeutil import IST, financial_year

SALES_ORDER, SALES_INVOICE, EINVOICE_LOG = "Sales Order", "Sales Invoice", "e-Invoice Log"
DOCTYPES = (SALES_ORDER, SALES_INVOICE, EINVOICE_LOG)
UNIQUE_FIELDS = {SALES_ORDER: ("omni_idempotency_key",), SALES_INVOICE: ("omni_idempotency_key",)}
IRN_CANCEL_WINDOW = timedelta(hours=24)
CANCEL_REASON_CODES = {"Duplicate": "1", "Data Entry Mistake": "2", "Order Cancelled": "3", "Others": "4"}
FRAPPE_DATETIME = "%Y-%m-%d %H:%M:%S"
METHOD_CANCEL = "frappe.client.cancel"
METHOD_CANCEL_EINVOICE = "india_compliance.gst_india.utils.e_invoice.cancel_e_invoice"
METHOD_MAKE_RETURN = "erpnext.accounts.doctype.sales_invoice.sales_invoice.make_sales_return"
METHOD_PDF = "frappe.utils.print_format.download_pdf"

# Frappe's exception class per status, for errors the fault injector makes up.
FRAPPE_CODES = {
    400: "ValidationError", 401: "AuthenticationError", 403: "PermissionError", 404: "DoesNotExistError",
    405: "ValidationError", 409: "DuplicateEntryError", 417: "ValidationError", 422: "ValidationError",
    429: "TooManyRequestsError", 500: "InternalServerError", 502: "BadGateway", 503: "ServiceUnavailableError",
    504: "GatewayTimeout",
}


class ErpNextSandboxConfig(FaultConfig):
    """Fault knobs plus the site's own: billing/IRN delay, clock shift and the two naming series."""

    invoice_delay_s: float = Field(0.2, ge=0.0, le=3600.0)
    clock_offset_s: float = 0.0
    invoice_series: str = "RB2627/.######"
    credit_note_series: str = "RC2627/.######"
    irn_hold: list[str] = Field(default_factory=list, max_length=10_000)  # order codes whose IRN waits (numbered already)


def _render(status: int, code: str, message: str, description: str | None) -> dict[str, Any]:
    """Frappe's error body (API v1): exception class, last traceback line and the queued messages."""
    server_messages = [json.dumps({"message": message, "title": "Message", "indicator": "red"})]
    return {
        "exc_type": code,
        "exception": f"frappe.exceptions.{code}: {message}",
        "_server_messages": json.dumps(server_messages),
    }


def _fail(status: int, exc_type: str, message: str) -> ApiError:
    return ApiError(status, exc_type, message)


def _series_name(series: str, counter: int) -> str:
    """``RB2627/.######`` + 7 -> ``RB2627/000007`` (Frappe's naming-series format)."""
    prefix, _, hashes = series.rpartition(".")
    return f"{prefix}{counter:0{len(hashes)}d}"


def _matches(doc: dict[str, Any], condition: list[Any]) -> bool:
    if len(condition) == 4:  # [doctype, field, operator, value]
        condition = condition[1:]
    if len(condition) == 2:
        condition = [condition[0], "=", condition[1]]
    field, op, value = condition
    actual = doc.get(field)
    if op == "is":
        return bool(actual) if value == "set" else not actual
    if op == "like":
        pattern = "^" + re.escape(str(value)).replace("%", ".*").replace("_", ".") + "$"
        return actual is not None and re.match(pattern, str(actual)) is not None
    if op == "in":
        return actual in (value if isinstance(value, list) else str(value).split(","))
    if op == "not in":
        return actual not in (value if isinstance(value, list) else str(value).split(","))
    if actual is None:
        return False
    compare = {"=": lambda a, b: a == b, "!=": lambda a, b: a != b, ">": lambda a, b: a > b,
               "<": lambda a, b: a < b, ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b}
    if op not in compare:
        raise _fail(417, "ValidationError", f"Operator {op!r} is not supported")
    if isinstance(actual, int | float) and not isinstance(value, int | float):
        try:
            value = float(value)
        except (TypeError, ValueError):
            return False
    return compare[op](actual, value)


class ErpNextState(SandboxState[ErpNextSandboxConfig]):
    """The site's documents by doctype and name, its series counters and its pending billing work."""

    def __init__(self, config: Callable[[], ErpNextSandboxConfig], *, supplier_gstin: str, buyer_gstin: str) -> None:
        self.supplier_gstin = supplier_gstin
        self.buyer_gstin = buyer_gstin
        super().__init__(config)

    def clear(self) -> None:
        self.docs: dict[str, dict[str, dict[str, Any]]] = {doctype: {} for doctype in DOCTYPES}
        self.counters: Counter[str] = Counter()
        self.pending: list[tuple[float, str, str]] = []  # (due monotonic, action, name)
        self.duplicates: Counter[str] = Counter()
        self.pdfs: dict[str, tuple[str, ...]] = {}

    def documents(self) -> dict[str, Any]:
        return {
            "sales_orders": list(self.docs[SALES_ORDER].values()),
            "sales_invoices": [d for d in self.docs[SALES_INVOICE].values() if not d.get("is_return")],
            "credit_notes": [d for d in self.docs[SALES_INVOICE].values() if d.get("is_return")],
            "einvoice_logs": list(self.docs[EINVOICE_LOG].values()),
            "pending_documents": len(self.pending),
            "duplicates": dict(self.duplicates),
        }

    def clock(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.config.clock_offset_s)

    def stamp(self) -> str:
        return self.clock().astimezone(IST).strftime(FRAPPE_DATETIME + ".%f")

    def next_name(self, series: str) -> str:
        self.counters[series] += 1
        return _series_name(series, self.counters[series])

    def get(self, doctype: str, name: str) -> dict[str, Any]:
        if doctype not in self.docs:
            raise _fail(404, "DoesNotExistError", f"DocType {doctype} not found")
        doc = self.docs[doctype].get(name)
        if doc is None:
            raise _fail(404, "DoesNotExistError", f"{doctype} {name} not found")
        return doc

    # --- inserts ---------------------------------------------------------------------------

    def insert(self, doctype: str, body: Any) -> dict[str, Any]:
        if doctype not in UNIQUE_FIELDS:
            raise _fail(403, "PermissionError", f"Not permitted to insert {doctype} through this site")
        if not isinstance(body, dict):
            raise _fail(417, "ValidationError", "The document must be a JSON object")
        if body.get("docstatus", 0) not in (0, 1):
            raise _fail(417, "ValidationError", "docstatus must be 0 (draft) or 1 (submitted) on insert")
        items = self._items(body)
        for field in UNIQUE_FIELDS[doctype]:
            value = body.get(field)
            if value and any(doc.get(field) == value for doc in self.docs[doctype].values()):
                self.duplicates[doctype] += 1
                raise _fail(409, "DuplicateEntryError", f"{doctype} with {field} {value} already exists")
        if doctype == SALES_ORDER:
            return self._insert_sales_order(body, items)
        if not body.get("is_return"):
            raise _fail(417, "ValidationError", "Only return Sales Invoices (credit notes) are raised through the API here")
        return self._insert_return(body, items)

    @staticmethod
    def _items(body: dict[str, Any]) -> list[dict[str, Any]]:
        items = body.get("items")
        if not isinstance(items, list) or not items:
            raise _fail(417, "MandatoryError", "Error: Value missing for Items")
        for row, item in enumerate(items, start=1):
            if not isinstance(item, dict) or not str(item.get("item_code") or "").strip():
                raise _fail(417, "MandatoryError", f"Row #{row}: Value missing for Item Code")
            if not isinstance(item.get("qty"), int | float) or not isinstance(item.get("rate"), int | float | str):
                raise _fail(417, "ValidationError", f"Row #{row}: Qty and Rate must be numbers")
            if Decimal(str(item["rate"])) < 0:
                raise _fail(417, "ValidationError", f"Row #{row}: Rate cannot be negative")
        return items

    @staticmethod
    def _rows(items: list[dict[str, Any]], parent: str) -> list[dict[str, Any]]:
        rows = []
        for idx, item in enumerate(items, start=1):
            rate = Decimal(str(item["rate"]))
            rows.append({**item, "idx": idx, "name": f"{parent}-{idx}", "rate": float(rate),
                         "amount": float(rate * Decimal(str(item["qty"])))})
        return rows

    def _insert_sales_order(self, body: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
        if not str(body.get("customer") or "").strip():
            raise _fail(417, "MandatoryError", "Error: Value missing for Sales Order: Customer")
        if any(item["qty"] <= 0 for item in items):
            raise _fail(417, "ValidationError", "Quantity must be greater than zero on a Sales Order")
        name = self.next_name(f"SAL-ORD-{self.clock().astimezone(IST).year}-.#####")
        rows = self._rows(items, name)
        doc = {
            **body, "doctype": SALES_ORDER, "name": name, "items": rows,
            "grand_total": float(sum(Decimal(str(r["amount"])) for r in rows)),
            "docstatus": body.get("docstatus", 0), "per_billed": 0.0,
            "status": "To Deliver and Bill" if body.get("docstatus") == 1 else "Draft",
            "creation": self.stamp(), "modified": self.stamp(),
        }
        self.docs[SALES_ORDER][name] = doc
        if doc["docstatus"] == 1:
            self.pending.append((time.monotonic() + self.config.invoice_delay_s, "bill", name))
        return doc

    def _insert_return(self, body: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
        against = body.get("return_against")
        source = self.docs[SALES_INVOICE].get(str(against or ""))
        if source is None or source.get("is_return") or source["docstatus"] != 1:
            raise _fail(417, "ValidationError", f"Return Against: submitted Sales Invoice {against} not found")
        if any(item["qty"] >= 0 for item in items):
            raise _fail(417, "ValidationError", "Quantity must be negative on a return (credit note)")
        open_qty = self.returnable(source)
        asked: Counter[str] = Counter()
        for item in items:
            asked[item["item_code"]] += -item["qty"]
        for row, (code, qty) in enumerate(asked.items(), start=1):
            if qty > open_qty[code]:
                raise _fail(417, "ValidationError",
                            f"Row # {row}: Returned Item {code} exceeds the qty not yet returned ({open_qty[code]}) "
                            f"against Sales Invoice {against}")
        name = self.next_name(str(body.get("naming_series") or self.config.credit_note_series))
        rows = self._rows(items, name)
        doc = {
            **body, "doctype": SALES_INVOICE, "name": name, "items": rows, "is_return": 1,
            "posting_date": self.clock().astimezone(IST).date().isoformat(),
            "customer": source["customer"], "po_no": source.get("po_no"), "omni_order_code": source.get("omni_order_code"),
            "grand_total": float(sum(Decimal(str(r["amount"])) for r in rows)),
            "docstatus": body.get("docstatus", 0), "status": "Return", "einvoice_status": "Pending",
            "irn": None, "creation": self.stamp(), "modified": self.stamp(),
        }
        self.docs[SALES_INVOICE][name] = doc
        if doc["docstatus"] == 1:
            self.pending.append((time.monotonic() + self.config.invoice_delay_s, "irn", name))
        return doc

    def returnable(self, invoice: dict[str, Any]) -> Counter[str]:
        """Units per item of a submitted invoice not yet on a submitted return against it."""
        units: Counter[str] = Counter()
        for item in invoice["items"]:
            units[item["item_code"]] += item["qty"]
        for doc in self.docs[SALES_INVOICE].values():
            if doc.get("is_return") and doc.get("return_against") == invoice["name"] and doc["docstatus"] == 1:
                for item in doc["items"]:
                    units[item["item_code"]] += item["qty"]  # negative
        return units

    # --- what the site does on its own: billing and India Compliance's IRN --------------------

    def tick(self) -> None:
        """Bill due orders and register due IRNs; an IRN of an order in ``irn_hold`` waits (the invoice is
        numbered already), so it is registered after invoices with higher numbers."""
        now = time.monotonic()
        due = sorted(p for p in self.pending if p[0] <= now)
        self.pending = [p for p in self.pending if p[0] > now]
        held = set(self.config.irn_hold)
        for due_at, action, name in due:
            if action == "bill":
                self._bill(name)
            elif self.docs[SALES_INVOICE][name].get("omni_order_code") in held:
                self.pending.append((due_at, action, name))
            else:
                self._register_irn(self.docs[SALES_INVOICE][name])

    def _bill(self, sales_order: str) -> None:
        order = self.docs[SALES_ORDER][sales_order]
        if order["docstatus"] != 1:
            return  # cancelled before it was billed
        name = self.next_name(self.config.invoice_series)
        items = [{"item_code": i["item_code"], "qty": i["qty"], "rate": i["rate"], "sales_order": sales_order,
                  "so_detail": i["name"], "omni_line_code": i.get("omni_line_code")} for i in order["items"]]
        invoice = {
            "doctype": SALES_INVOICE, "name": name, "customer": order["customer"], "po_no": order.get("po_no"),
            "omni_order_code": order.get("omni_order_code"), "is_return": 0, "return_against": None,
            "posting_date": self.clock().astimezone(IST).date().isoformat(), "items": self._rows(items, name),
            "grand_total": order["grand_total"], "docstatus": 1, "status": "Unpaid", "einvoice_status": "Pending",
            "irn": None, "creation": self.stamp(), "modified": self.stamp(),
        }
        self.docs[SALES_INVOICE][name] = invoice
        order.update(per_billed=100.0, status="To Deliver", modified=self.stamp())
        if invoice["omni_order_code"] in set(self.config.irn_hold):
            self.pending.append((time.monotonic(), "irn", name))
        else:
            self._register_irn(invoice)

    def _register_irn(self, invoice: dict[str, Any]) -> None:
        if invoice["docstatus"] != 1:
            return
        at = self.clock()
        doc_type = "CRN" if invoice.get("is_return") else "INV"
        irn = einvoice.irn(self.supplier_gstin, financial_year(at), doc_type, invoice["name"])
        self.counters["ack"] += 1
        ack_no = f"1{at.year % 100:02d}2{self.counters['ack']:012d}"
        main = max(invoice["items"], key=lambda i: abs(i["amount"]))
        total = abs(Decimal(str(invoice["grand_total"])))
        invoice.update(
            irn=irn, ack_no=ack_no, ack_date=at.astimezone(IST).strftime(FRAPPE_DATETIME), einvoice_status="Generated",
            signed_qr_code=einvoice.signed_qr(
                seller_gstin=self.supplier_gstin, buyer_gstin=self.buyer_gstin, doc_number=invoice["name"],
                doc_type=doc_type, doc_date=at, total_value=total, item_count=len(invoice["items"]),
                main_hsn_code=hsn_for(main["item_code"]), irn=irn, irn_date=at,
            ),
            modified=self.stamp(),
        )
        self.docs[EINVOICE_LOG][irn] = {
            "doctype": EINVOICE_LOG, "name": irn, "sales_invoice": invoice["name"], "acknowledgement_number": ack_no,
            "acknowledged_on": invoice["ack_date"], "signed_qr_code": invoice["signed_qr_code"], "is_cancelled": 0,
        }
        title = "CREDIT NOTE" if doc_type == "CRN" else "TAX INVOICE"
        self.pdfs[invoice["name"]] = (f"{title} {invoice['name']}", f"IRN {irn}", f"Ack {ack_no}", f"Total INR {total:.2f}")

    # --- methods -------------------------------------------------------------------------------

    def cancel(self, doctype: str, name: str) -> None:
        """``frappe.client.cancel``: cancel a submitted document unless submitted documents link to it."""
        doc = self.get(doctype, name)
        if doc["docstatus"] != 1:
            raise _fail(417, "ValidationError", "Cannot edit cancelled document" if doc["docstatus"] == 2
                        else f"{doctype} {name} is not submitted")
        if doctype == SALES_ORDER:
            linked = [inv["name"] for inv in self.docs[SALES_INVOICE].values()
                      if inv["docstatus"] == 1 and any(i.get("sales_order") == name for i in inv["items"])]
            if linked:
                raise _fail(417, "LinkExistsError",
                            f"Cannot delete or cancel because {doctype} {name} is linked with Sales Invoice {linked[0]}")
        if doctype == SALES_INVOICE and doc.get("einvoice_status") == "Generated":
            raise _fail(417, "ValidationError", "You need to cancel e-Invoice before cancelling this document")
        doc.update(docstatus=2, status="Cancelled", modified=self.stamp())

    def cancel_einvoice(self, docname: str, values: Any) -> dict[str, Any]:
        """India Compliance's ``cancel_e_invoice``: within 24 hours of the ack, then the invoice is cancelled."""
        invoice = self.get(SALES_INVOICE, docname)
        if isinstance(values, str):
            try:
                values = json.loads(values)
            except json.JSONDecodeError:
                values = None
        if not isinstance(values, dict) or values.get("reason") not in CANCEL_REASON_CODES:
            raise _fail(417, "ValidationError", f"values.reason must be one of {', '.join(CANCEL_REASON_CODES)}")
        if not invoice.get("irn"):
            raise _fail(417, "ValidationError", "IRN not found")
        acked = datetime.strptime(invoice["ack_date"], FRAPPE_DATETIME).replace(tzinfo=IST)
        if acked + IRN_CANCEL_WINDOW < self.clock():
            raise _fail(417, "ValidationError", "e-Invoice can only be cancelled upto 24 hours after it is generated")
        log = self.docs[EINVOICE_LOG][invoice["irn"]]
        log.update(is_cancelled=1, cancel_reason_code=values["reason"], cancel_remark=values.get("remark") or values["reason"],
                   cancelled_on=self.clock().astimezone(IST).strftime(FRAPPE_DATETIME))
        invoice.update(einvoice_status="Cancelled", irn="", docstatus=2, status="Cancelled", modified=self.stamp())
        return invoice

    def make_sales_return(self, source_name: str) -> dict[str, Any]:
        """ERPNext's mapper: an unsaved return invoice for every unit not yet returned (quantities negative)."""
        source = self.get(SALES_INVOICE, source_name)
        if source.get("is_return") or source["docstatus"] != 1:
            raise _fail(417, "ValidationError", f"Sales Invoice {source_name} is not a submitted invoice")
        open_qty = self.returnable(source)
        items = []
        for item in source["items"]:
            qty = min(item["qty"], max(open_qty[item["item_code"]], 0))
            open_qty[item["item_code"]] -= qty
            if qty:
                items.append({"item_code": item["item_code"], "qty": -qty, "rate": item["rate"],
                              "sales_order": item.get("sales_order")})
        return {"doctype": SALES_INVOICE, "docstatus": 0, "is_return": 1, "return_against": source_name,
                "customer": source["customer"], "po_no": source.get("po_no"),
                "omni_order_code": source.get("omni_order_code"), "items": items}


def _listing(docs: list[dict[str, Any]], params: Any) -> list[dict[str, Any]]:
    """Frappe's list API over ``docs``: filters, order_by, paging and field projection (parent fields)."""
    try:
        filters = json.loads(params.get("filters") or "[]")
        fields = json.loads(params.get("fields") or '["name"]')
        start = int(params.get("limit_start") or 0)
        length = int(params.get("limit_page_length") or 20)
    except (ValueError, TypeError) as exc:
        raise _fail(417, "ValidationError", f"Invalid list arguments: {exc}") from exc
    if isinstance(filters, dict):
        filters = [[k, *(v if isinstance(v, list) else ["=", v])] for k, v in filters.items()]
    selected = [d for d in docs if all(_matches(d, list(c)) for c in filters)]
    field, _, direction = (params.get("order_by") or "creation desc").partition(" ")
    selected.sort(key=lambda d: (d.get(field) is None, d.get(field) or ""), reverse=direction.strip().lower() == "desc")
    page = selected[start:] if length == 0 else selected[start:start + length]
    if fields == ["*"]:
        return [{k: v for k, v in d.items() if not isinstance(v, list)} for d in page]
    return [{f: d.get(f) for f in fields} for d in page]


def erpnext_router(state: ErpNextState, api_key: str, api_secret: str) -> APIRouter:
    """Frappe's ``/api/resource`` and ``/api/method`` routes behind token auth; each call first publishes what is due."""
    expected = f"token {api_key}:{api_secret}".encode()

    async def authorize(request: Request) -> None:  # async: a plain def runs in the thread pool, one hop per call
        given = request.headers.get("Authorization", "").encode("latin-1", "replace")
        if not hmac.compare_digest(given, expected):
            raise _fail(401, "AuthenticationError", "Invalid API key or secret")

    api = APIRouter(prefix="/api", dependencies=[Depends(authorize)])

    @api.get("/resource/{doctype}")
    async def list_documents(doctype: str, request: Request) -> dict[str, Any]:
        with state.lock:
            state.tick()
            if doctype not in state.docs:
                raise _fail(404, "DoesNotExistError", f"DocType {doctype} not found")
            return {"data": _listing(list(state.docs[doctype].values()), request.query_params)}

    @api.get("/resource/{doctype}/{name:path}")
    async def get_document(doctype: str, name: str) -> dict[str, Any]:
        with state.lock:
            state.tick()
            return {"data": state.get(doctype, name)}

    @api.post("/resource/{doctype}")
    async def insert_document(doctype: str, request: Request) -> dict[str, Any]:
        body = await read_json(request)
        with state.lock:
            state.tick()
            return {"data": state.insert(doctype, body)}

    @api.post("/method/{method}")
    async def call_method(method: str, request: Request) -> dict[str, Any]:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise _fail(417, "ValidationError", "Arguments must be a JSON object")
        with state.lock:
            state.tick()
            if method == METHOD_CANCEL:
                state.cancel(str(body.get("doctype")), str(body.get("name")))
                return {}
            if method == METHOD_CANCEL_EINVOICE:
                return {"message": state.cancel_einvoice(str(body.get("docname")), body.get("values"))}
            if method == METHOD_MAKE_RETURN:
                return {"message": state.make_sales_return(str(body.get("source_name")))}
        raise _fail(404, "DoesNotExistError", f"Failed to get method for command {method}")

    @api.get(f"/method/{METHOD_PDF}")
    async def download_pdf(doctype: str = "", name: str = "") -> Response:
        with state.lock:
            state.tick()
            state.get(doctype, name)
            lines = state.pdfs.get(name)
        if lines is None:
            raise _fail(417, "ValidationError", f"{doctype} {name} has no e-invoice to print yet")
        return Response(tiny_pdf(*lines), media_type="application/pdf")

    return api


def create_erpnext_sandbox(
    *,
    api_key: str = "erpnext-sandbox-key",
    api_secret: str = "erpnext-sandbox-secret",
    supplier_gstin: str = "29ABCDE1234F1Z5",
    buyer_gstin: str = "27AABCR1718E1ZY",
    invoice_delay_s: float = 0.2,
    seed: int = 0,
) -> FastAPI:
    """Build the ERPNext sandbox app.

    :param api_key: the API key of the integration user (the connection's login).
    :param api_secret: its API secret (the connection's password).
    :param supplier_gstin: the seller's GSTIN, hashed into every IRN.
    :param buyer_gstin: Ajio's GSTIN, printed in the QR.
    :param invoice_delay_s: seconds from a submitted order (or credit note) to its registered e-invoice.
    :param seed: seed of the fault injector's random source.
    """
    faults = FaultInjector(ErpNextSandboxConfig(invoice_delay_s=invoice_delay_s, seed=seed), _render,
                           codes=FRAPPE_CODES, validation_status=417)
    state = ErpNextState(lambda: faults.config, supplier_gstin=supplier_gstin, buyer_gstin=buyer_gstin)
    return sandbox_app("ERPNext sandbox", faults, state, erpnext_router(state, api_key, api_secret))
