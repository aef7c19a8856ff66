"""F2, e-invoice upload: read the ERP's e-invoice feed into the ledger, then upload each matched e-invoice to Omni once."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omni_erp import settings
from omni_erp.exceptions import PayloadError
from omni_erp.operators.document_feed import DocumentRead, ErpDocumentFetchOperator
from omni_erp.operators.document_upload import OmniDocumentUploadOperator
from omni_erp.rules.invoice_upload import match_invoice
from omni_erp.states import DOC_INVOICE, DOC_READY, ORDER_BOOKED, ORDER_CANCELLED, ORDER_INVOICED, STAGE_INVOICE_UPLOAD
from omni_erp.timeutil import now, parse_datetime, to_omni

if TYPE_CHECKING:
    from pydantic import BaseModel

    from omni_erp.models.erp import EInvoice, EInvoicePage


class ErpEInvoiceFetchOperator(ErpDocumentFetchOperator):
    """Record the ERP's new e-invoices and match each to its order (F2).

    A matched invoice is ready to upload and its order becomes invoiced with the e-invoice number, IRN
    and ``invoiced_at`` = the IRN acknowledgement time (F3's 24-hour window starts there, domain.md 6),
    in one transaction with the invoice's row. Unknown orders and mismatches are recorded with the
    reason and dead-lettered; invoices of orders cancelled in Omni are recorded and not uploaded. A known
    invoice number for another order, IRN or amount is a conflict (see the base class). Orders booked
    longer than ``overdue_after_minutes`` without an e-invoice are named in a warning (picking waits for
    the invoice).
    XCom: ``{batch_id, read, new, cursor, <state>: n, conflict: n}`` plus ``overdue_einvoices`` when there are any.

    :param overdue_after_minutes: how long after booking a missing e-invoice is worth a warning.
    """

    doc_type = DOC_INVOICE
    cursor_name = "erp_einvoice_seq"
    stage = STAGE_INVOICE_UPLOAD
    label = "e-invoice"
    number_alias = "invoiceNumber"
    identity_fields = (("order", "orderCode"), ("IRN", "irn"), ("total", "totalValue"))

    def __init__(self, *, overdue_after_minutes: int = 60, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.overdue_after_minutes = overdue_after_minutes

    def extend_summary(self, summary: dict[str, Any]) -> None:
        if overdue := self._report_overdue():
            summary["overdue_einvoices"] = overdue

    def _report_overdue(self) -> int:
        """Warn about orders booked long ago with no e-invoice yet: the warehouse cannot pick them (domain.md 1)."""
        from datetime import timedelta


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

    def related_code(self, payload: dict[str, Any]) -> Any:
        return payload.get("salesOrderId")

    def classify(self, document: EInvoice) -> tuple[str, str | None]:
        state, reason = match_invoice(document, self.ledger.get_order(document.order_code))
        # Checked before anything is written: F3's 24-hour window needs the acknowledgement time.
        if state == DOC_READY and parse_datetime(document.ack_date) is None:
            raise PayloadError("the e-invoice has no ackDate (IRN acknowledgement time)")
        return state, reason

    def would_also(self, document: EInvoice, state: str) -> str:
        if state != DOC_READY:
            return ""
        return f"order {document.order_code} would become {ORDER_INVOICED} (IRN {document.irn}, acknowledged {document.ack_date})"

    def match_and_record(self, document: EInvoice, *, replace: bool) -> DocumentRead:
        ledger = self.ledger
        state, reason = self.classify(document)
        invoiced_at = parse_datetime(document.ack_date) if state == DOC_READY else None
        if not self._store(document, state, reason, related_code=document.sales_order_id, replace=replace):
            return DocumentRead()  # another run recorded it a moment ago
        if state == DOC_READY:
            ledger.update_order(
                document.order_code,
                state=ORDER_INVOICED,
                erp_sales_order_id=document.sales_order_id,
                erp_invoice_number=document.invoice_number,
                irn=document.irn,
                invoiced_at=invoiced_at,
            )
        return self._refused(document.invoice_number, state, reason)


class OmniInvoiceUploadOperator(OmniDocumentUploadOperator):
    """Upload ready e-invoices as Increff B2B invoices (F2, domain.md 3.2).

    ``forwardPurchaseOrder`` is the order's Ajio PO; ``isPartialInvoice`` is true when fewer units were
    invoiced than the PO ordered, and then ``invoiceLineEntries`` list the invoiced units per
    ``channelSkuCode``. An invoice whose order was cancelled after matching (F3) is not uploaded.
    XCom: ``{batch_id, uploaded, not_uploaded_order_cancelled, skipped}`` (counts > 0 only); when any invoice
    was deferred, failed or dead-lettered the task fails instead, naming the counts.
    """

    doc_type = DOC_INVOICE
    stage = STAGE_INVOICE_UPLOAD
    label = "invoice"
    pdf_field = "invoicePdf"

    def page_context(self, documents: list[dict[str, Any]]) -> _Orders:
        codes = [d["order_code"] for d in documents]
        return _Orders(self.ledger.orders_by_code(codes), self.ledger.orders_with_open_postings(codes, settings.EVENT_CANCEL))

    def build(self, document: dict[str, Any], pdf_base64: str | None, context: _Orders | None = None) -> BaseModel:
        from omni_erp.models.erp import EInvoice
        from omni_erp.models.omni import B2BInvoice, InvoiceLine

        invoice = EInvoice.model_validate(document["payload"])
        order = _order(self.ledger, context, invoice.order_code)
        if order is None or not order["po_number"]:
            raise PayloadError(f"order {invoice.order_code} or its Ajio PO is no longer in the ledger")
        invoiced: Counter[str] = Counter()
        for line in invoice.lines:
            invoiced[line.sku] += line.quantity
        po_units = sum(int(line["ordered"]) for line in order["lines"])
        partial = sum(invoiced.values()) < po_units
        invoice_date = parse_datetime(invoice.invoice_date)
        if invoice_date is None:
            raise PayloadError("the e-invoice has no invoiceDate")
        return B2BInvoice(
            invoiceNumber=invoice.invoice_number,
            invoiceDate=to_omni(invoice_date),
            forwardPurchaseOrder=order["po_number"],
            irnNumber=invoice.irn,
            qrCode=invoice.signed_qr_code,
            isPartialInvoice=partial,
            invoiceLineEntries=[InvoiceLine(channelSkuCode=sku, quantity=n) for sku, n in invoiced.items()] if partial else None,
            invoicePdf=pdf_base64,
            invoiceURL=None if pdf_base64 else invoice.pdf_url,
        )

    def send(self, body: Any) -> None:
        self.omni.post_b2b_invoice(body)

    def endpoint_and_key(self, number: str) -> tuple[str, str]:
        from omni_erp import keys
        from omni_erp.hooks.omni import B2B_INVOICE_ENDPOINT

        return B2B_INVOICE_ENDPOINT, keys.omni_invoice(number)

    def skip_reason(self, document: dict[str, Any], context: _Orders | None = None) -> str | None:
        # F3 may cancel the order between matching and upload (its IRN is then cancelled too).
        code = document["order_code"]
        order = _order(self.ledger, context, code)
        if order is not None and order["state"] == ORDER_CANCELLED:
            return f"order {order['order_code']} was cancelled in Omni ({order['cancel_route'] or 'route unknown'})"
        cancelling = code in context.cancelling if context is not None else self.ledger.has_open_posting(code, settings.EVENT_CANCEL)
        if cancelling:
            # Omni cancelled the order and F3 has not finished it yet (e.g. it waits for this very invoice).
            return f"order {document['order_code']} has a cancellation waiting to be processed"
        return None


@dataclass(frozen=True)
class _Orders:
    """``page_context`` of e-invoices: the page's orders by code, and those with a cancellation waiting for F3."""

    by_code: dict[str, dict[str, Any]]
    cancelling: set[str]


def _order(ledger: Any, context: _Orders | None, order_code: str) -> dict[str, Any] | None:
    """The order as the page read it (or from the ledger, outside a page or for a code the page did not hold)."""
    if context is not None and order_code in context.by_code:
        return context.by_code[order_code]
    return ledger.get_order(order_code)
