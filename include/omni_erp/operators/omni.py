"""Operators that upload the ledger's ready ERP documents to Increff Omni, each exactly once (F2, F6)."""

from __future__ import annotations

from collections import Counter
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from omni_erp import settings
from omni_erp.exceptions import PayloadError, RemoteRejectedError
from omni_erp.operators.base import ErpOperator
from omni_erp.operators.documents import as_bool, printable
from omni_erp.states import (
    DOC_CREDIT_NOTE,
    DOC_INVOICE,
    DOC_READY,
    DOC_SKIPPED,
    DOC_UPLOAD_FAILED,
    DOC_UPLOADED,
    ORDER_CANCELLED,
    STAGE_CREDIT_NOTE_UPLOAD,
    STAGE_INVOICE_UPLOAD,
)
from omni_erp.timeutil import now, parse_datetime, to_omni

if TYPE_CHECKING:
    from airflow.sdk import Context
    from pydantic import BaseModel

    from omni_erp.hooks.omni import OmniHook

DOCUMENT_MODES = ("url", "pdf")


class _OmniDocumentUploadOperator(ErpOperator):
    """Upload every ready document of one type to Omni, once per document number.

    The state is checked right before each call, so a retried task or a re-run sends nothing that
    was already uploaded. Omni's 4xx, or a body that cannot be built from the document, marks the
    document failed with the reason (Increff's ``code``, ``message`` and ``description``) and
    dead-letters it, in one transaction; it stays failed until someone fixes the cause and re-triggers
    with ``retry_failed``. 5xx and timeouts are retried by the hook; if Omni stays down the documents
    stay ready for the next run, calls stop after ``max_consecutive_unavailable`` failures in a row.
    Any other error is isolated to its document (``process_each``): the document stays ready with the
    error as its reason and is tried again by the next run, and after ``OMNI_ERP_MAX_ITEM_ATTEMPTS``
    attempts it is marked failed and dead-lettered. The task ends failed whenever any document of the
    run was deferred or failed, so the run is red; the report step lists them.

    :param omni_conn_id: connection of Omni's ajio-vms endpoints.
    :param erp_conn_id: connection of the ERP (only used to download PDFs with ``document="pdf"``).
    :param retry_failed: also upload documents that Omni rejected before (templated).
    :param document: ``"url"`` sends the ERP's public PDF URL, ``"pdf"`` downloads the PDF and sends it base64.
    :param max_consecutive_unavailable: stop calling after this many documents in a row found Omni (or the ERP) down.
    """

    doc_type: ClassVar[str]
    stage: ClassVar[str]
    label: ClassVar[str]
    template_fields = (*ErpOperator.template_fields, "retry_failed")

    def __init__(
        self,
        *,
        omni_conn_id: str = settings.OMNI_CONN_ID,
        retry_failed: bool | str = False,
        document: str = "url",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.omni_conn_id = omni_conn_id
        self.retry_failed = retry_failed
        self.document = document

    @cached_property
    def omni(self) -> OmniHook:
        from omni_erp.hooks.omni import OmniHook

        return OmniHook(self.omni_conn_id, on_attempt=self.record_attempt)

    def build(self, document: dict[str, Any], pdf_base64: str | None) -> BaseModel:
        """The Omni body for a ledger document; raises ``PayloadError``/``ValueError`` when it cannot be built."""
        raise NotImplementedError

    def send(self, body: Any) -> None:
        """POST the body to Omni through the hook."""
        raise NotImplementedError

    def skip_reason(self, document: dict[str, Any]) -> str | None:
        """Why a ready document must not be uploaded any more (None: upload it)."""
        return None

    def execute(self, context: Context) -> dict[str, Any]:
        if self.document not in DOCUMENT_MODES:
            raise ValueError(f"document must be one of {DOCUMENT_MODES}, got {self.document!r}")
        states = [DOC_READY, DOC_UPLOAD_FAILED] if as_bool(self.retry_failed) else [DOC_READY]
        return self.process_each(
            [d["doc_number"] for d in self.ledger.documents(self.doc_type, states=states)],
            lambda number: self._upload_one(number, states),
            defer=self._defer,
            give_up=self._fail,
            attempts=self._earlier_attempts,
            max_consecutive_unavailable=self.max_consecutive_unavailable,
        )

    def _upload_one(self, number: str, states: list[str]) -> str:
        ledger = self.ledger
        document = ledger.get_document(self.doc_type, number)
        if document is None or document["state"] not in states:
            return "skipped"  # uploaded or changed since the list was read: never send twice
        if (reason := self.skip_reason(document)) is not None:
            ledger.update_document(self.doc_type, number, state=DOC_SKIPPED, reason=reason, batch_id=self.batch_id)
            self.log.info("%s %s not uploaded: %s", self.label, number, reason)
            return DOC_SKIPPED
        # Counted before the body is built, so a document that keeps failing in any step reaches the bound.
        ledger.update_document(
            self.doc_type, number, upload_attempts=document["upload_attempts"] + 1, batch_id=self.batch_id
        )
        try:
            pdf = self._pdf(document) if self.document == "pdf" else None
            body = self.build(document, pdf)
        except RemoteRejectedError as exc:
            return self._fail(number, f"PDF download from the ERP refused (HTTP {exc.status}): {exc.message}")
        except (PayloadError, ValueError) as exc:
            return self._fail(number, f"cannot build the {self.label}: {exc}")
        try:
            self.send(body)
        except RemoteRejectedError as exc:
            code = f"{exc.code}: " if exc.code else ""
            return self._fail(number, f"Omni rejected the {self.label} (HTTP {exc.status}) {code}{exc.message}")
        ledger.update_document(
            self.doc_type, number, state=DOC_UPLOADED, uploaded_at=now(), reason=None, batch_id=self.batch_id
        )
        return DOC_UPLOADED

    def _pdf(self, document: dict[str, Any]) -> str:
        """Base64 of the document's PDF, downloaded from the ERP's ``pdfUrl`` through the ERP adapter."""
        import base64

        url = document["payload"].get("pdfUrl")
        if not url:
            raise PayloadError("the ERP gave no pdfUrl")
        return base64.b64encode(self.erp.download_pdf(url, key=f"pdf:{document['doc_number']}")).decode("ascii")

    def _fail(self, number: str, reason: str) -> str:
        """Mark the document failed until a person re-triggers it, and dead-letter it - both or neither."""
        reason = printable(reason)[:2000]
        with self.ledger.transaction():
            self.ledger.update_document(self.doc_type, number, state=DOC_UPLOAD_FAILED, reason=reason, batch_id=self.batch_id)
            self.ledger.record_dead_letter(stage=self.stage, reason=f"{self.label} {number}: {reason}", business_key=number)
        self.log.error("%s %s: %s", self.label, number, reason)
        return DOC_UPLOAD_FAILED

    def _earlier_attempts(self, number: str) -> int:
        """Failed attempts before the current one (``_upload_one`` counted the current one before it failed)."""
        document = self.ledger.get_document(self.doc_type, number)
        return max(0, (document["upload_attempts"] if document else 0) - 1)

    def _defer(self, number: str, reason: str) -> None:
        """Keep the document ready (a re-triggered failed one too), so the next run tries again, and say why."""
        self.ledger.update_document(
            self.doc_type, number, state=DOC_READY, reason=printable(f"waiting for the next run: {reason}")[:2000],
            batch_id=self.batch_id,
        )


class OmniInvoiceUploadOperator(_OmniDocumentUploadOperator):
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

    def build(self, document: dict[str, Any], pdf_base64: str | None) -> BaseModel:
        from omni_erp.models.erp import EInvoice
        from omni_erp.models.omni import B2BInvoice, InvoiceLine

        invoice = EInvoice.model_validate(document["payload"])
        order = self.ledger.get_order(invoice.order_code)
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

    def skip_reason(self, document: dict[str, Any]) -> str | None:
        # F3 may cancel the order between matching and upload (its IRN is then cancelled too).
        order = self.ledger.get_order(document["order_code"])
        if order is not None and order["state"] == ORDER_CANCELLED:
            return f"order {order['order_code']} was cancelled in Omni ({order['cancel_route'] or 'route unknown'})"
        if self.ledger.has_open_posting(document["order_code"], settings.EVENT_CANCEL):
            # Omni cancelled the order and F3 has not finished it yet (e.g. it waits for this very invoice).
            return f"order {document['order_code']} has a cancellation waiting to be processed"
        return None


class OmniCreditNoteUploadOperator(_OmniDocumentUploadOperator):
    """Upload ready credit notes to Omni (F6, domain.md 3.3); ``returnOrderId`` is the return order code (decision 7).

    XCom: ``{batch_id, uploaded, skipped}`` (counts present only when > 0); when any credit note was deferred,
    failed or dead-lettered the task fails instead, naming the counts.
    """

    doc_type = DOC_CREDIT_NOTE
    stage = STAGE_CREDIT_NOTE_UPLOAD
    label = "credit note"

    def build(self, document: dict[str, Any], pdf_base64: str | None) -> BaseModel:
        from omni_erp.models.erp import ErpCreditNote
        from omni_erp.models.omni import CreditNote

        note = ErpCreditNote.model_validate(document["payload"])
        if not note.return_order_code:
            raise PayloadError("a credit note without return order is never uploaded (Ajio seller SOP)")
        ack_date = parse_datetime(note.ack_date)
        if ack_date is None:
            raise PayloadError("the credit note has no ackDate")
        return CreditNote(
            creditNoteNumber=note.credit_note_number,
            returnOrderId=note.return_order_code,
            irnNumber=note.irn,
            ackNumber=note.ack_number,
            ackDate=to_omni(ack_date),
            signedQrCode=note.signed_qr_code,
            signedCreditNotePdf=pdf_base64,
            creditNotePdfUrl=None if pdf_base64 else note.pdf_url,
        )

    def send(self, body: Any) -> None:
        self.omni.post_credit_note(body)
