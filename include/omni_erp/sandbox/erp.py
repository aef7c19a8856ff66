"""Sandbox of the seller's ERP: the REST contract of ``contracts/erp_rest.yaml`` with asynchronous e-invoicing."""

from __future__ import annotations

import heapq
import hmac
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field, ValidationError, field_validator

from omni_erp import einvoice
from omni_erp.models.erp import DocumentLine, ReturnOrderRequest, SalesOrderRequest
from omni_erp.sandbox.base import SandboxState, sandbox_app
from omni_erp.sandbox.catalogue import hsn_for
from omni_erp.sandbox.faults import ApiError, FaultConfig, FaultInjector, pydantic_problems, read_json
from omni_erp.sandbox.pdf import tiny_pdf
from omni_erp.timeutil import financial_year, parse_datetime, to_omni

TOTAL_TOLERANCE = Decimal("1.00")        # domain.md decision 4: one rupee per invoice for rounding
IRN_CANCEL_WINDOW = timedelta(hours=24)  # domain.md section 6
TICK_S = 0.05
MAX_PAGE = 500

OrderCode = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^\S+$")]


class ErpSandboxConfig(FaultConfig):
    """Fault knobs plus the ERP's own: e-invoicing delay, clock shift, number series and holds.

    ``invoice_hold``: order codes whose e-invoice is not generated while listed (the order stays BOOKED);
    once a code is removed its e-invoice follows after ``invoice_delay_s``. ``feed_hold``: order codes whose
    e-invoices and credit notes are generated (their ``seq`` is taken) but left out of the GET feeds until
    the code is removed, so they appear after documents with a higher ``seq`` - an ERP publishing out of order.
    ``feed_override``: per order code, fields replaced (or, with ``null``, removed) in that order's documents as
    the GET feeds list them - a broken or hostile ERP document; the stored document is unchanged.
    """

    invoice_delay_s: float = Field(0.2, ge=0.0, le=3600.0)
    clock_offset_s: float = 0.0
    invoice_prefix: str = "RB2627/"
    credit_note_prefix: str = "RC2627/"
    invoice_hold: list[OrderCode] = Field(default_factory=list, max_length=10_000)
    feed_hold: list[OrderCode] = Field(default_factory=list, max_length=10_000)
    feed_override: dict[OrderCode, dict[str, Any]] = Field(default_factory=dict, max_length=10_000)

    @field_validator("invoice_prefix", "credit_note_prefix")
    @classmethod
    def _valid_series(cls, prefix: str) -> str:
        # The 6-digit counter is appended, so the prefix must keep every number within NIC's rules.
        try:
            einvoice.validate_document_number(f"{prefix}000001")
        except ValueError as exc:
            raise ValueError(f"prefix {prefix!r} would make invalid document numbers: {exc}") from exc
        return prefix


@dataclass
class _Pending:
    due: float  # time.monotonic()
    kind: Literal["invoice", "credit_note"]
    ref: str    # salesOrderId, returnOrderId or creditNoteRequestId
    order_code: str
    held: bool = False  # an invoice waiting while its order code is in ``invoice_hold``


def _money(value: Decimal) -> float:
    return float(value.quantize(Decimal("0.01")))


def _line_json(line: DocumentLine) -> dict[str, Any]:
    return {
        "lineCode": line.line_code, "sku": line.sku, "quantity": line.quantity, "unitPrice": _money(line.unit_price)
    }


def _total(lines: Iterable[DocumentLine]) -> Decimal:
    return sum((line.unit_price * line.quantity for line in lines), Decimal(0))


def _validated(model: type[Any], body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise ApiError(422, "VALIDATION_FAILED", "; ".join(pydantic_problems(exc))) from exc


class ErpState(SandboxState[ErpSandboxConfig]):
    """The ERP's documents and its rules: booking, cancelling, e-invoicing (the "IRP"), returns and credit notes.

    Every write is replayed by its ``Idempotency-Key`` (the same key with another body is a 409); e-invoices and
    credit notes are scheduled ``invoice_delay_s`` after their request and published by :meth:`tick`.
    """

    def __init__(
        self, config: Callable[[], ErpSandboxConfig], *, supplier_gstin: str, buyer_gstin: str, seed: int
    ) -> None:
        self.supplier_gstin = supplier_gstin
        self.buyer_gstin = buyer_gstin
        self.seed = seed
        super().__init__(config)

    def clear(self) -> None:
        self.orders: dict[str, dict[str, Any]] = {}           # salesOrderId -> record
        self.order_ids: dict[str, str] = {}                   # orderCode -> salesOrderId
        self.invoices: dict[str, dict[str, Any]] = {}         # invoiceNumber -> EInvoice JSON
        self.return_orders: dict[str, dict[str, Any]] = {}    # returnOrderId -> record
        self.return_ids: dict[str, str] = {}                  # returnOrderCode -> returnOrderId
        self.credit_requests: dict[str, dict[str, Any]] = {}  # creditNoteRequestId -> record
        self.credit_notes: dict[str, dict[str, Any]] = {}     # creditNoteNumber -> ErpCreditNote JSON
        self.credited: dict[str, Counter[str]] = {}           # invoiceNumber -> units credited per sku
        self.pdfs: dict[str, tuple[str, ...]] = {}            # file name -> lines printed on the PDF
        self.keys: dict[tuple[str, str], tuple[Any, str]] = {}  # (action, key) -> (request, resource id)
        self.pending: dict[int, _Pending] = {}        # ticket -> document waiting for the IRP
        self.queue: list[tuple[float, int]] = []       # (due, ticket), a heap: a tick costs what falls due
        self.waiting_invoices: dict[str, int] = {}     # orderCode -> ticket of its pending invoice
        self.held: set[int] = set()                    # tickets of the invoices held by ``invoice_hold``
        self.counters: Counter[str] = Counter()
        self.duplicates: Counter[str] = Counter()

    def documents(self) -> dict[str, Any]:
        return {
            "sales_orders": [_public(order) for order in self.orders.values()],
            "invoices": [_public(invoice) for invoice in self.invoices.values()],
            "return_orders": [_public(ret) for ret in self.return_orders.values()],
            "credit_note_requests": [_public(req) for req in self.credit_requests.values()],
            "credit_notes": [_public(note) for note in self.credit_notes.values()],
            "pending_documents": len(self.pending),
            "held_invoices": sorted(self.pending[ticket].order_code for ticket in self.held),
            "duplicates": dict(self.duplicates),
        }

    def clock(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.config.clock_offset_s)

    def next_id(self, kind: str, template: str) -> str:
        self.counters[kind] += 1
        return template.format(self.counters[kind])

    def replay(self, action: str, key: str, request: Any) -> str | None:
        """Resource id stored under this key, or None for a new key; 409 when the key came with another body."""
        stored = self.keys.get((action, key))
        if stored is None:
            return None
        if stored[0] != request:
            raise ApiError(
                409, "IDEMPOTENCY_CONFLICT", f"Idempotency-Key {key!r} was already used with a different request"
            )
        self.duplicates[action] += 1
        return stored[1]

    # --- document generation (the "IRP") -------------------------------------------------------

    def register(
        self, doc_type: str, number: str, lines: list[dict[str, Any]], total: Decimal, base_url: str
    ) -> dict[str, Any]:
        at = self.clock()
        irn = einvoice.irn(self.supplier_gstin, financial_year(at), doc_type, number)
        main_line = max(lines, key=lambda line: line["quantity"] * line["unitPrice"])
        self.counters["ack"] += 1
        ack_number = f"1{at.year % 100:02d}{self.seed % 100:02d}{self.counters['ack']:010d}"
        pdf_name = number.replace("/", "-") + ".pdf"
        title = "TAX INVOICE" if doc_type == "INV" else "CREDIT NOTE"
        self.pdfs[pdf_name] = (f"{title} {number}", f"IRN {irn}", f"Ack {ack_number}", f"Total INR {_money(total)}")
        return {
            "irn": irn,
            "ackNumber": ack_number,
            "ackDate": to_omni(at),
            "signedQrCode": einvoice.signed_qr(
                seller_gstin=self.supplier_gstin,
                buyer_gstin=self.buyer_gstin,
                doc_number=number,
                doc_type=doc_type,
                doc_date=at,
                total_value=total,
                item_count=len(lines),
                main_hsn_code=hsn_for(main_line["sku"]),
                irn=irn,
                irn_date=at,
            ),
            "pdfUrl": f"{base_url}/_sandbox/pdf/{pdf_name}",
            "_date": to_omni(at),
        }

    def generate_invoice(self, sales_order_id: str) -> None:
        order = self.orders[sales_order_id]
        if order["status"] != "BOOKED":
            return  # cancelled before the IRP answered: never invoiced
        number = self.next_id("invoice", self.config.invoice_prefix + "{:06d}")
        request: SalesOrderRequest = order["_model"]
        lines = [_line_json(line) for line in request.lines]
        irp = self.register("INV", number, lines, request.total_amount, order["_base_url"])
        self.counters["seq"] += 1
        self.invoices[number] = {
            "seq": self.counters["seq"],
            "invoiceNumber": number,
            "invoiceDate": irp.pop("_date"),
            "salesOrderId": sales_order_id,
            "orderCode": request.order_code,
            "poNumber": request.po_number,
            **irp,
            "lines": lines,
            "totalValue": _money(request.total_amount),
            "status": "ACTIVE",
        }
        self.credited[number] = Counter()
        order["status"] = "INVOICED"
        order["invoiceNumber"] = number

    def generate_credit_note(self, ref: str) -> None:
        source = self.return_orders.get(ref) or self.credit_requests[ref]
        number = self.next_id("credit_note", self.config.credit_note_prefix + "{:06d}")
        lines = source["_lines"]
        total = sum((Decimal(str(line["unitPrice"])) * line["quantity"] for line in lines), Decimal(0))
        irp = self.register("CRN", number, lines, total, source["_base_url"])
        self.counters["seq"] += 1
        self.credit_notes[number] = {
            "seq": self.counters["seq"],
            "creditNoteNumber": number,
            "creditNoteDate": irp.pop("_date"),
            "returnOrderCode": source.get("returnOrderCode"),
            "orderCode": source["orderCode"],
            "invoiceNumber": source["invoiceNumber"],
            **irp,
            "lines": lines,
            "totalValue": _money(total),
        }
        source["creditNoteNumber"] = number
        if "creditNoteRequestId" in source:
            source["status"] = "GENERATED"

    def hold_invoices(self, now: float) -> None:
        """Hold the pending invoices of orders in ``invoice_hold``; a released one is due ``invoice_delay_s`` after
        its release. Costs the length of the hold list, not the number of pending documents."""
        codes = set(self.config.invoice_hold)
        for code in codes:
            ticket = self.waiting_invoices.get(code)
            if ticket is not None:
                self.pending[ticket].held = True
                self.held.add(ticket)
        for ticket in [t for t in self.held if self.pending[t].order_code not in codes]:
            item = self.pending[ticket]
            item.held, item.due = False, now + self.config.invoice_delay_s
            self.held.discard(ticket)
            heapq.heappush(self.queue, (item.due, ticket))

    def tick(self) -> None:
        """Publish every document whose delay has passed, in due order (by the ticker thread and before each
        request)."""
        now = time.monotonic()
        self.hold_invoices(now)
        while self.queue and self.queue[0][0] <= now:
            due, ticket = heapq.heappop(self.queue)
            item = self.pending.get(ticket)
            if item is None or item.held or item.due != due:
                continue  # held after it was queued: queued again, with a new due time, when released
            del self.pending[ticket]
            if item.kind == "invoice":
                del self.waiting_invoices[item.order_code]
                self.generate_invoice(item.ref)
            else:
                self.generate_credit_note(item.ref)

    def schedule(self, kind: Literal["invoice", "credit_note"], ref: str, order_code: str) -> None:
        self.counters["ticket"] += 1
        ticket = self.counters["ticket"]
        self.pending[ticket] = item = _Pending(time.monotonic() + self.config.invoice_delay_s, kind, ref, order_code)
        heapq.heappush(self.queue, (item.due, ticket))
        if kind == "invoice":
            self.waiting_invoices[order_code] = ticket

    # --- views and checks ----------------------------------------------------------------------

    def order_view(self, sales_order_id: str) -> dict[str, Any]:
        order = self.orders[sales_order_id]
        return {k: order[k] for k in ("salesOrderId", "orderCode", "status", "createdAt", "invoiceNumber")}

    def return_view(self, return_order_id: str) -> dict[str, Any]:
        record = self.return_orders[return_order_id]
        return {k: record[k] for k in ("returnOrderId", "returnOrderCode", "status", "creditNoteNumber")}

    def credit_request_view(self, request_id: str) -> dict[str, Any]:
        record = self.credit_requests[request_id]
        return {k: record[k] for k in ("creditNoteRequestId", "status", "invoiceNumber", "creditNoteNumber")}

    def invoice_for_credit(self, invoice_number: str, order_code: str) -> dict[str, Any]:
        invoice = self.invoices.get(invoice_number)
        if invoice is None:
            raise ApiError(422, "VALIDATION_FAILED", f"invoiceNumber {invoice_number!r} is not a known e-invoice")
        if invoice["orderCode"] != order_code:
            raise ApiError(
                422, "VALIDATION_FAILED",
                f"invoice {invoice_number} belongs to order {invoice['orderCode']}, not {order_code}",
            )
        if invoice["status"] != "ACTIVE":
            raise ApiError(422, "VALIDATION_FAILED", f"invoice {invoice_number} is cancelled; nothing to credit")
        return invoice

    def creditable(self, invoice: dict[str, Any]) -> Counter[str]:
        """Units per sku still open for credit: invoiced minus already returned or credited."""
        open_units: Counter[str] = Counter()
        for line in invoice["lines"]:
            open_units[line["sku"]] += line["quantity"]
        open_units.subtract(self.credited[invoice["invoiceNumber"]])
        return open_units

    # --- the contract's writes: (view, created?) -------------------------------------------------

    def book_sales_order(self, key: str, body: Any, base_url: str) -> tuple[dict[str, Any], bool]:
        if existing := self.replay("sales_order", key, body):
            return self.order_view(existing), False
        order: SalesOrderRequest = _validated(SalesOrderRequest, body)
        lines_total = _total(order.lines)
        if abs(order.total_amount - lines_total) > TOTAL_TOLERANCE:
            raise ApiError(
                422, "VALIDATION_FAILED",
                f"totalAmount {_money(order.total_amount):.2f} differs from the sum of the lines "
                f"{_money(lines_total):.2f} by more than {TOTAL_TOLERANCE}",
            )
        if order.order_code in self.order_ids:
            raise ApiError(
                409, "DUPLICATE_ORDER",
                f"order {order.order_code} is already booked as {self.order_ids[order.order_code]}",
            )
        sales_order_id = self.next_id("sales_order", "SO-{:06d}")
        self.orders[sales_order_id] = {
            "salesOrderId": sales_order_id,
            "orderCode": order.order_code,
            "status": "BOOKED",
            "createdAt": to_omni(self.clock()),
            "invoiceNumber": None,
            "request": body,
            "_model": order,
            "_base_url": base_url,
        }
        self.order_ids[order.order_code] = sales_order_id
        self.keys[("sales_order", key)] = (body, sales_order_id)
        self.schedule("invoice", sales_order_id, order.order_code)
        return self.order_view(sales_order_id), True

    def cancel_sales_order(self, sales_order_id: str, key: str) -> dict[str, Any]:
        if self.replay("sales_order_cancel", key, sales_order_id):
            return self.order_view(sales_order_id)
        order = self.orders.get(sales_order_id)
        if order is None:
            raise ApiError(404, "NOT_FOUND", f"sales order {sales_order_id} does not exist")
        invoice = self.invoices.get(order["invoiceNumber"] or "")
        if invoice is not None and invoice["status"] == "ACTIVE":
            raise ApiError(
                409, "ORDER_INVOICED",
                f"order {sales_order_id} has the active e-invoice {invoice['invoiceNumber']}; cancel its IRN first",
            )
        if order["status"] == "CANCELLED":
            self.duplicates["sales_order_cancel"] += 1
        order["status"] = "CANCELLED"
        self.keys[("sales_order_cancel", key)] = (sales_order_id, sales_order_id)
        return self.order_view(sales_order_id)

    def cancel_irn(self, key: str, body: Any) -> dict[str, Any]:
        if (existing := self.replay("irn_cancel", key, body)) is not None:
            return _public(self.invoices[existing])
        _strings(body, ("invoiceNumber", "reason"))
        invoice = self.invoices.get(body["invoiceNumber"])
        if invoice is None:
            raise ApiError(404, "NOT_FOUND", f"e-invoice {body['invoiceNumber']} does not exist")
        if invoice["status"] == "CANCELLED":
            self.duplicates["irn_cancel"] += 1
        else:
            acked = parse_datetime(invoice["ackDate"])
            assert acked is not None
            if self.clock() - acked > IRN_CANCEL_WINDOW:
                raise ApiError(
                    409, "IRN_CANCEL_WINDOW_CLOSED",
                    f"IRN of {invoice['invoiceNumber']} was acknowledged at {invoice['ackDate']}; it can only be "
                    "cancelled within 24 hours - raise a credit note instead",
                )
            invoice["status"] = "CANCELLED"
            invoice["cancelReason"] = body["reason"]
        self.keys[("irn_cancel", key)] = (body, invoice["invoiceNumber"])
        return _public(invoice)

    def create_return_order(self, key: str, body: Any, base_url: str) -> tuple[dict[str, Any], bool]:
        if existing := self.replay("return_order", key, body):
            return self.return_view(existing), False
        ret: ReturnOrderRequest = _validated(ReturnOrderRequest, body)
        if ret.return_order_code in self.return_ids:
            raise ApiError(
                409, "DUPLICATE_RETURN_ORDER",
                f"return {ret.return_order_code} already exists as {self.return_ids[ret.return_order_code]}",
            )
        invoice = self.invoice_for_credit(ret.invoice_number, ret.order_code)
        asked: Counter[str] = Counter()
        for line in ret.lines:
            asked[line.sku] += line.quantity
        open_units = self.creditable(invoice)
        too_many = [
            f"{sku}: {units} asked, {max(open_units[sku], 0)} open"
            for sku, units in asked.items() if units > open_units[sku]
        ]
        if too_many:
            raise ApiError(
                422, "VALIDATION_FAILED",
                f"return lines exceed the invoiced quantity not yet returned ({'; '.join(too_many)})",
            )
        self.credited[invoice["invoiceNumber"]].update(asked)
        return_order_id = self.next_id("return_order", "RO-{:06d}")
        self.return_orders[return_order_id] = {
            "returnOrderId": return_order_id,
            "returnOrderCode": ret.return_order_code,
            "status": "CREATED",
            "creditNoteNumber": None,
            "orderCode": ret.order_code,
            "invoiceNumber": ret.invoice_number,
            "request": body,
            "_lines": [_line_json(line) for line in ret.lines],
            "_base_url": base_url,
        }
        self.return_ids[ret.return_order_code] = return_order_id
        self.keys[("return_order", key)] = (body, return_order_id)
        if ret.raise_credit_note is not False:  # false: the RMS credit-note path (issue 12), no e-credit note
            self.schedule("credit_note", return_order_id, ret.order_code)
        return self.return_view(return_order_id), True

    def request_credit_note(self, key: str, body: Any, base_url: str) -> tuple[dict[str, Any], bool]:
        if existing := self.replay("credit_note_request", key, body):
            return self.credit_request_view(existing), False
        _strings(body, ("invoiceNumber", "orderCode", "reason"))
        invoice = self.invoice_for_credit(body["invoiceNumber"], body["orderCode"])
        open_units = self.creditable(invoice)
        lines = []
        for line in invoice["lines"]:
            units = min(line["quantity"], max(open_units[line["sku"]], 0))
            open_units[line["sku"]] -= units
            if units:
                lines.append({**line, "quantity": units})
        if not lines:
            raise ApiError(422, "VALIDATION_FAILED", f"invoice {invoice['invoiceNumber']} is already fully credited")
        self.credited[invoice["invoiceNumber"]].update({line["sku"]: line["quantity"] for line in lines})
        request_id = self.next_id("credit_note_request", "CNR-{:06d}")
        self.credit_requests[request_id] = {
            "creditNoteRequestId": request_id,
            "status": "PENDING",
            "creditNoteNumber": None,
            "orderCode": body["orderCode"],
            "invoiceNumber": body["invoiceNumber"],
            "request": body,
            "_lines": lines,
            "_base_url": base_url,
        }
        self.keys[("credit_note_request", key)] = (body, request_id)
        self.schedule("credit_note", request_id, body["orderCode"])
        return self.credit_request_view(request_id), True

    def feed(self, documents: Iterable[dict[str, Any]], since: int, limit: int) -> dict[str, Any]:
        """A page of the e-invoice or credit note feed, with ``feed_hold`` and ``feed_override`` applied."""
        return _page(documents, since, limit, hidden=set(self.config.feed_hold), override=self.config.feed_override)


def erp_router(state: ErpState, token: str) -> APIRouter:
    """``/api/v1`` of ``contracts/erp_rest.yaml`` behind a bearer token, and the documents' PDFs."""

    async def authorize(request: Request) -> None:  # async: a plain def runs in the thread pool, one hop per call
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise ApiError(
                401, "UNAUTHORIZED", "a valid 'Authorization: Bearer <token>' header is required",
                headers={"WWW-Authenticate": "Bearer"},
            )
        with state.lock:
            state.tick()

    api = APIRouter(prefix="/api/v1", dependencies=[Depends(authorize)])

    @api.post("/sales-orders")
    async def book_sales_order(request: Request) -> JSONResponse:
        key = _idempotency_key(request)
        body = await read_json(request)
        with state.lock:
            view, created = state.book_sales_order(key, body, _base_url(request))
        return JSONResponse(view, status_code=201 if created else 200)

    @api.get("/sales-orders/{salesOrderId}")
    async def get_sales_order(salesOrderId: str) -> dict[str, Any]:  # noqa: N803 - path name of the contract
        with state.lock:
            if salesOrderId not in state.orders:
                raise ApiError(404, "NOT_FOUND", f"sales order {salesOrderId} does not exist")
            return state.order_view(salesOrderId)

    @api.post("/sales-orders/{salesOrderId}/cancel")
    async def cancel_sales_order(salesOrderId: str, request: Request) -> dict[str, Any]:  # noqa: N803
        key = _idempotency_key(request)
        with state.lock:
            return state.cancel_sales_order(salesOrderId, key)

    @api.get("/e-invoices")
    async def list_e_invoices(
        since: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=MAX_PAGE)
    ) -> dict[str, Any]:
        with state.lock:
            return state.feed(state.invoices.values(), since, limit)

    @api.post("/e-invoices/cancel-irn")
    async def cancel_irn(request: Request) -> dict[str, Any]:
        key = _idempotency_key(request)
        body = await read_json(request)
        with state.lock:
            return state.cancel_irn(key, body)

    @api.post("/return-orders")
    async def create_return_order(request: Request) -> JSONResponse:
        key = _idempotency_key(request)
        body = await read_json(request)
        with state.lock:
            view, created = state.create_return_order(key, body, _base_url(request))
        return JSONResponse(view, status_code=201 if created else 200)

    @api.post("/credit-notes")
    async def request_credit_note(request: Request) -> JSONResponse:
        key = _idempotency_key(request)
        body = await read_json(request)
        with state.lock:
            view, created = state.request_credit_note(key, body, _base_url(request))
        return JSONResponse(view, status_code=201 if created else 200)

    @api.get("/credit-notes")
    async def list_credit_notes(
        since: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=MAX_PAGE)
    ) -> dict[str, Any]:
        with state.lock:
            return state.feed(state.credit_notes.values(), since, limit)

    router = APIRouter()
    router.include_router(api)

    @router.get("/_sandbox/pdf/{name}")  # no auth, like a signed document link
    async def document_pdf(name: str) -> Response:
        with state.lock:
            lines = state.pdfs.get(name)
        if lines is None:
            raise ApiError(404, "NOT_FOUND", f"no document PDF named {name}")
        return Response(tiny_pdf(*lines), media_type="application/pdf")

    return router


def create_erp_sandbox(
    *,
    token: str = "erp-sandbox-token",
    supplier_gstin: str = "29ABCDE1234F1Z5",
    buyer_gstin: str = "27AABCR1718E1ZY",
    invoice_prefix: str = "RB2627/",
    credit_note_prefix: str = "RC2627/",
    invoice_delay_s: float = 0.2,
    seed: int = 0,
) -> FastAPI:
    """Build the ERP sandbox app.

    :param token: the bearer token every ``/api`` call must carry.
    :param supplier_gstin: the seller's GSTIN, hashed into every IRN and printed in the QR.
    :param buyer_gstin: Ajio's GSTIN, printed in the QR.
    :param invoice_prefix: e-invoice number series (a 6-digit counter is appended).
    :param credit_note_prefix: credit note number series.
    :param invoice_delay_s: seconds between booking and the e-invoice (or credit note) becoming visible.
    :param seed: seed of the random source behind ``error_rate`` and ``timeout_rate``.
    :raises ValueError: when a prefix would produce numbers NIC rejects.
    """
    config = ErpSandboxConfig(
        invoice_prefix=invoice_prefix,
        credit_note_prefix=credit_note_prefix,
        invoice_delay_s=invoice_delay_s,
        seed=seed,
    )
    faults = FaultInjector(config, _render)
    state = ErpState(lambda: faults.config, supplier_gstin=supplier_gstin, buyer_gstin=buyer_gstin, seed=seed)
    return sandbox_app("ERP sandbox", faults, state, erp_router(state, token), tick_every_s=TICK_S)


def _idempotency_key(request: Request) -> str:
    key = request.headers.get("Idempotency-Key", "").strip()
    if not key:
        raise ApiError(400, "MISSING_IDEMPOTENCY_KEY", "the Idempotency-Key header is required on this call")
    if len(key) > 255:
        raise ApiError(400, "INVALID_IDEMPOTENCY_KEY", "the Idempotency-Key header is longer than 255 characters")
    return key


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _strings(body: Any, fields: tuple[str, ...]) -> None:
    """Check a small request body: exactly ``fields``, each a non-empty string (422 otherwise)."""
    if not isinstance(body, dict):
        raise ApiError(422, "VALIDATION_FAILED", "the body must be a JSON object")
    problems = [f"{f}: a non-empty string is required" for f in fields if not str(body.get(f) or "").strip()]
    problems += [f"{f}: must be a string" for f in fields if f in body and not isinstance(body[f], str)]
    problems += [f"{f}: unknown field" for f in sorted(set(body) - set(fields))]
    if problems:
        raise ApiError(422, "VALIDATION_FAILED", "; ".join(problems))


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not k.startswith("_")}


def _page(
    documents: Iterable[dict[str, Any]],
    since: int,
    limit: int,
    *,
    hidden: set[str],
    override: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Documents after ``since`` in ``seq`` order, leaving out those of orders in ``feed_hold`` (``hidden``)
    and with the fields of ``feed_override`` (``override``) replaced as listed."""
    visible = (d for d in documents if d["seq"] > since and d["orderCode"] not in hidden)
    items = sorted(visible, key=lambda d: d["seq"])[:limit]
    return {
        "items": [_overridden(_public(d), (override or {}).get(d["orderCode"])) for d in items],
        "nextCursor": items[-1]["seq"] if items else since,
    }


def _overridden(document: dict[str, Any], fields: dict[str, Any] | None) -> dict[str, Any]:
    if not fields:
        return document
    changed = {**document, **fields}
    return {k: v for k, v in changed.items() if not (k in fields and fields[k] is None)}


def _render(status: int, code: str, message: str, description: str | None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
