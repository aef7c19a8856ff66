"""Operators that read the ERP's e-invoice and credit note feeds into the ledger and match each document (F2, F6)."""

from __future__ import annotations

import os
from collections import Counter
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk.exceptions import AirflowFailException

from omni_erp.exceptions import RemoteRejectedError
from omni_erp.operators.base import ErpOperator
from omni_erp.states import (
    DOC_CREDIT_NOTE,
    DOC_INVOICE,
    DOC_KEPT_IN_ERP,
    DOC_MISMATCH,
    DOC_READY,
    DOC_SKIPPED,
    DOC_UNMATCHED,
    ORDER_BOOKED,
    ORDER_CANCELLED,
    ORDER_INVOICED,
    ORDER_READY,
    RETURN_CUSTOMER,
    RETURN_PARTIAL_CANCEL,
    RETURN_RTO,
    STAGE_CREDIT_NOTE_UPLOAD,
    STAGE_INVOICE_UPLOAD,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from omni_erp.models.erp import CreditNotePage, EInvoice, EInvoicePage, ErpCreditNote

TOTAL_TOLERANCE = Decimal("1.00")  # domain.md decision 4: one rupee per invoice for rounding
UPLOAD_PARTIAL_CANCEL_ENV = "OMNI_ERP_UPLOAD_PARTIAL_CANCEL_CREDIT_NOTES"
SOP_KEPT_IN_ERP = "Ajio seller SOP: kept in the ERP, not uploaded"

Classified = tuple[str, "str | None"]  # (document state, reason)


def as_bool(value: Any) -> bool:
    """A templated flag as a bool: ``"True"``, ``"true"``, ``"1"``, ``"yes"`` are true; ``None`` and ``""`` false."""
    if isinstance(value, bool):
        return value
    text = str(value if value is not None else "").strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", "", "none", "null"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def as_optional_seq(value: Any) -> int | None:
    """A templated sequence number: ``None`` (also rendered as ``"None"`` or ``""``) or an integer >= 0."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    if isinstance(value, bool):
        raise ValueError(f"since_seq must be an integer, got {value!r}")
    seq = int(str(value).strip())
    if seq < 0:
        raise ValueError(f"since_seq must be >= 0, got {seq}")
    return seq


def upload_partial_cancel_credit_notes() -> bool:
    """Deployment switch of domain.md decision 6 (read at run time, never at parse time)."""
    return as_bool(os.environ.get(UPLOAD_PARTIAL_CANCEL_ENV) or False)


# --- matching rules (pure: no I/O, easy to read next to domain.md) ---------------------------------


def match_invoice(invoice: EInvoice, order: dict[str, Any] | None) -> Classified:
    """Decide what happens to an e-invoice given its order in the ledger (None when unknown).

    Ready only when the invoice is for an order waiting for it and agrees with it: same Ajio PO, only
    SKUs of the order, no SKU above its booked quantity, and a total within one rupee of the invoiced
    quantities at the order's prices (domain.md decision 4).
    """
    if order is None:
        return DOC_UNMATCHED, f"no order {invoice.order_code} in the ledger for e-invoice {invoice.invoice_number}"
    if order["state"] == ORDER_CANCELLED:
        return DOC_SKIPPED, f"order {order['order_code']} was cancelled in Omni ({order['cancel_route'] or 'route unknown'})"
    if invoice.status != "ACTIVE":
        return DOC_SKIPPED, f"e-invoice is {invoice.status} in the ERP"
    known = order["erp_invoice_number"]
    if known and known != invoice.invoice_number:
        return DOC_MISMATCH, f"order {order['order_code']} is already invoiced as {known}"
    if order["state"] not in (ORDER_READY, ORDER_BOOKED, ORDER_INVOICED):
        return DOC_MISMATCH, f"order {order['order_code']} is {order['state']}, not waiting for an e-invoice"
    if order["erp_sales_order_id"] and order["erp_sales_order_id"] != invoice.sales_order_id:
        return DOC_MISMATCH, (
            f"e-invoice is for sales order {invoice.sales_order_id}, the order was booked as {order['erp_sales_order_id']}"
        )

    problems = []
    if invoice.po_number != order["po_number"]:
        problems.append(f"PO {invoice.po_number} differs from the order's PO {order['po_number']}")
    booked: Counter[str] = Counter()
    price_by_sku: dict[str, Decimal] = {}
    price_by_line: dict[str, Decimal] = {}
    for line in order["lines"]:
        booked[line["sku"]] += int(line["quantity"])
        price_by_sku.setdefault(line["sku"], Decimal(str(line["unitPrice"])))
        price_by_line[line["lineCode"]] = Decimal(str(line["unitPrice"]))
    invoiced: Counter[str] = Counter()
    for line in invoice.lines:
        invoiced[line.sku] += line.quantity
    unknown = sorted(sku for sku in invoiced if sku not in booked)
    if unknown:
        problems.append(f"SKU not in the order: {', '.join(unknown)}")
    problems += [
        f"SKU {sku}: {units} invoiced, {booked[sku]} booked" for sku, units in invoiced.items() if sku in booked and units > booked[sku]
    ]
    if not unknown:
        expected = sum(
            (line.quantity * price_by_line.get(line.line_code or "", price_by_sku[line.sku]) for line in invoice.lines),
            Decimal(0),
        )
        if abs(invoice.total_value - expected) > TOTAL_TOLERANCE:
            problems.append(
                f"totalValue {invoice.total_value:.2f} differs from {expected:.2f} (invoiced units at the order's prices) "
                f"by {abs(invoice.total_value - expected):.2f}, more than {TOTAL_TOLERANCE}"
            )
    if problems:
        return DOC_MISMATCH, "; ".join(problems)
    return DOC_READY, None


def match_credit_note(note: ErpCreditNote, return_order: dict[str, Any] | None, *, upload_partial_cancel: bool) -> Classified:
    """Decide what happens to a credit note given its return order in the ledger.

    Customer returns and RTOs are uploaded with ``returnOrderId`` = the return order code (decision 7);
    partial cancellations after e-invoicing stay in the ERP unless the deployment turns the upload on
    (decision 6); a full credit note without return order (F3, invoice older than 24 h) stays in the ERP
    by the Ajio seller SOP (decision 5).
    """
    if note.return_order_code is None:
        return DOC_KEPT_IN_ERP, SOP_KEPT_IN_ERP
    if return_order is None:
        return DOC_UNMATCHED, (
            f"no return order {note.return_order_code} in the ledger for credit note {note.credit_note_number}"
        )
    if return_order["order_code"] != note.order_code:
        return DOC_MISMATCH, (
            f"credit note is for order {note.order_code}, return order {note.return_order_code} "
            f"belongs to {return_order['order_code']}"
        )
    known = return_order["credit_note_number"]
    if known and known != note.credit_note_number:
        return DOC_MISMATCH, f"return order {note.return_order_code} already has credit note {known}"
    if return_order["kind"] in (RETURN_CUSTOMER, RETURN_RTO):
        return DOC_READY, None
    if return_order["kind"] == RETURN_PARTIAL_CANCEL:
        if upload_partial_cancel:
            return DOC_READY, None
        return DOC_KEPT_IN_ERP, (
            f"partial cancellation after e-invoicing: kept in the ERP (set {UPLOAD_PARTIAL_CANCEL_ENV}=true to upload)"
        )
    return DOC_MISMATCH, f"return order {note.return_order_code} has unknown kind {return_order['kind']}"


# --- operators -------------------------------------------------------------------------------------


class _ErpDocumentFetchOperator(ErpOperator):
    """Read one ERP document feed into the ledger, once per document number, and match each document.

    The feed is read page by page from ``max(0, cursor - lookback)``: the ERP can publish a document
    after documents with a higher ``seq`` (contracts/erp_rest.yaml), so every run looks ``lookback``
    sequence numbers behind its cursor; documents already in the ledger are skipped, so re-reading
    never duplicates anything. The cursor moves forward only, to the highest ``seq`` recorded.

    :param erp_conn_id: connection of the ERP.
    :param since_seq: read from this sequence number instead of the stored cursor (templated; None or
        "None" = use the cursor) - for re-reads and backfills.
    :param lookback: sequence numbers re-read behind the cursor; must exceed how far the ERP can publish
        out of order.
    :param page_size: documents per feed request.
    """

    doc_type: ClassVar[str]
    cursor_name: ClassVar[str]
    stage: ClassVar[str]
    template_fields = (*ErpOperator.template_fields, "since_seq")

    def __init__(
        self,
        *,
        since_seq: int | str | None = None,
        lookback: int = 200,
        page_size: int = 100,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.since_seq = since_seq
        self.lookback = lookback
        self.page_size = page_size

    def read_page(self, since: int) -> EInvoicePage | CreditNotePage:
        """One page of the feed after ``since``."""
        raise NotImplementedError

    def number(self, document: Any) -> str:
        """The document's number (its key in the ledger)."""
        raise NotImplementedError

    def record(self, document: Any) -> str | None:
        """Match a document that is not in the ledger yet and record it; return its state (None if it raced in)."""
        raise NotImplementedError

    def execute(self, context: Context) -> dict[str, Any]:
        if self.lookback < 0 or self.page_size < 1:
            raise ValueError("lookback must be >= 0 and page_size >= 1")
        override = as_optional_seq(self.since_seq)
        cursor = int(self.ledger.get_cursor(self.cursor_name, "0") or 0)
        since = override if override is not None else max(0, cursor - self.lookback)
        self.log.info("Reading %s feed from seq %d (cursor %d, lookback %d)", self.doc_type, since, cursor, self.lookback)
        read = 0
        states: Counter[str] = Counter()
        while True:
            try:
                page = self.read_page(since)
            except RemoteRejectedError as exc:
                # A 4xx on a read is configuration (token, URL), not data: retrying the task will not help.
                raise AirflowFailException(f"the ERP refused to list {self.doc_type}s: {exc}") from exc
            for document in page.items:
                read += 1
                if self.ledger.get_document(self.doc_type, self.number(document)) is None:
                    state = self.record(document)
                    if state is not None:
                        states[state] += 1
            if page.items:
                # Every document of the page is in the ledger now (recorded before or just now).
                cursor = self.ledger.advance_cursor(self.cursor_name, max(d.seq for d in page.items))
            if len(page.items) < self.page_size or page.next_cursor <= since:
                break
            since = page.next_cursor
        summary = {"batch_id": self.batch_id, "read": read, "new": sum(states.values()), "cursor": cursor}
        summary.update({k: states[k] for k in sorted(states)})
        self.log.info("Read %s feed: %s", self.doc_type, summary)
        return summary

    def _dead_letter(self, number: str, reason: str) -> None:
        self.ledger.record_dead_letter(stage=self.stage, reason=reason, business_key=number)
        self.log.warning("%s %s: %s", self.doc_type, number, reason)


class ErpEInvoiceFetchOperator(_ErpDocumentFetchOperator):
    """Record the ERP's new e-invoices and match each to its order (F2).

    A matched invoice is ready to upload and its order becomes invoiced with the e-invoice number, IRN
    and ``invoiced_at`` = the IRN acknowledgement time (F3's 24-hour window starts there, domain.md 6).
    Unknown orders and mismatches are recorded with the reason and dead-lettered; invoices of orders
    cancelled in Omni are recorded and not uploaded. Orders booked longer than ``overdue_after_minutes``
    without an e-invoice are named in a warning (picking waits for the invoice).
    XCom: ``{batch_id, read, new, cursor, <state>: n}`` plus ``overdue_einvoices`` when there are any.

    :param overdue_after_minutes: how long after booking a missing e-invoice is worth a warning.
    """

    doc_type = DOC_INVOICE
    cursor_name = "erp_einvoice_seq"
    stage = STAGE_INVOICE_UPLOAD

    def __init__(self, *, overdue_after_minutes: int = 60, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.overdue_after_minutes = overdue_after_minutes

    def execute(self, context: Context) -> dict[str, Any]:
        summary = super().execute(context)
        if overdue := self._report_overdue():
            summary["overdue_einvoices"] = overdue
        return summary

    def _report_overdue(self) -> int:
        """Warn about orders booked long ago with no e-invoice yet: the warehouse cannot pick them (domain.md 1)."""
        from datetime import timedelta

        from omni_erp.timeutil import now

        overdue = self.ledger.orders_in_state(
            ORDER_BOOKED, unchanged_since=now() - timedelta(minutes=self.overdue_after_minutes)
        )
        if overdue:
            self.log.warning(
                "%d order(s) booked more than %d minutes ago still have no e-invoice, so the warehouse cannot pick "
                "them; check the ERP's e-invoicing: %s",
                len(overdue),
                self.overdue_after_minutes,
                ", ".join(f"{o['order_code']} (booked {o['updated_at']:%Y-%m-%d %H:%M} UTC)" for o in overdue[:20]),
            )
        return len(overdue)

    def read_page(self, since: int) -> EInvoicePage:
        return self.erp.einvoices_since(since, limit=self.page_size)

    def number(self, document: EInvoice) -> str:
        return document.invoice_number

    def record(self, document: EInvoice) -> str | None:
        from omni_erp.timeutil import parse_datetime

        ledger = self.ledger
        order = ledger.get_order(document.order_code)
        state, reason = match_invoice(document, order)
        if state == DOC_READY:
            assert order is not None
            # The order first: if the worker dies before the document row is written, the re-read
            # finds the order invoiced with this very number and matches it again.
            ledger.update_order(
                order["order_code"],
                state=ORDER_INVOICED,
                erp_sales_order_id=document.sales_order_id,
                erp_invoice_number=document.invoice_number,
                irn=document.irn,
                invoiced_at=parse_datetime(document.ack_date),
            )
        new = ledger.record_document(
            doc_type=DOC_INVOICE,
            doc_number=document.invoice_number,
            order_code=document.order_code,
            related_code=document.sales_order_id,
            seq=document.seq,
            payload=document.model_dump(mode="json", by_alias=True),
            state=state,
            reason=reason,
            batch_id=self.batch_id,
        )
        if new and state in (DOC_UNMATCHED, DOC_MISMATCH):
            self._dead_letter(document.invoice_number, f"e-invoice {document.invoice_number} not uploaded: {reason}")
        return state if new else None


class ErpCreditNoteFetchOperator(_ErpDocumentFetchOperator):
    """Record the ERP's new credit notes and classify each by its return order (F6).

    Customer returns and RTOs -> ready to upload (the return order gets the credit note number);
    partial cancellations after e-invoicing -> kept in the ERP unless ``$OMNI_ERP_UPLOAD_PARTIAL_CANCEL_CREDIT_NOTES``
    is true; full credit notes without return order (F3) -> kept in the ERP (Ajio seller SOP); unknown
    return orders -> unmatched and dead-lettered. XCom: ``{batch_id, read, new, cursor, <state>: n}``.
    """

    doc_type = DOC_CREDIT_NOTE
    cursor_name = "erp_credit_note_seq"
    stage = STAGE_CREDIT_NOTE_UPLOAD

    def read_page(self, since: int) -> CreditNotePage:
        return self.erp.credit_notes_since(since, limit=self.page_size)

    def number(self, document: ErpCreditNote) -> str:
        return document.credit_note_number

    def record(self, document: ErpCreditNote) -> str | None:
        ledger = self.ledger
        code = document.return_order_code
        return_order = ledger.get_return_order(code) if code else None
        state, reason = match_credit_note(
            document, return_order, upload_partial_cancel=upload_partial_cancel_credit_notes()
        )
        if return_order is not None and state in (DOC_READY, DOC_KEPT_IN_ERP):
            ledger.update_return_order(return_order["return_order_code"], credit_note_number=document.credit_note_number)
        new = ledger.record_document(
            doc_type=DOC_CREDIT_NOTE,
            doc_number=document.credit_note_number,
            order_code=document.order_code,
            related_code=code or document.invoice_number,
            seq=document.seq,
            payload=document.model_dump(mode="json", by_alias=True),
            state=state,
            reason=reason,
            batch_id=self.batch_id,
        )
        if new and state in (DOC_UNMATCHED, DOC_MISMATCH):
            self._dead_letter(document.credit_note_number, f"credit note {document.credit_note_number} not uploaded: {reason}")
        return state if new else None
