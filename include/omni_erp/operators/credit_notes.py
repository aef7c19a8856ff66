"""F6, credit note upload: read the ERP's credit note feed into the ledger, then upload each return's credit note to Omni once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from omni_erp.exceptions import PayloadError
from omni_erp.operators.document_feed import DocumentRead, ErpDocumentFetchOperator, upload_partial_cancel_credit_notes
from omni_erp.operators.document_upload import OmniDocumentUploadOperator
from omni_erp.rules.credit_notes import match_credit_note
from omni_erp.rules.rms import erp_credit_note_on_rms_path
from omni_erp.states import DOC_CREDIT_NOTE, DOC_KEPT_IN_ERP, DOC_READY, STAGE_CREDIT_NOTE_UPLOAD
from omni_erp.timeutil import parse_datetime, to_omni

if TYPE_CHECKING:
    from pydantic import BaseModel

    from omni_erp.models.erp import CreditNotePage, ErpCreditNote


class ErpCreditNoteFetchOperator(ErpDocumentFetchOperator):
    """Record the ERP's new credit notes and classify each by its return order (F6).

    Customer returns and RTOs -> ready to upload (the return order gets the credit note number, in one
    transaction with the credit note's row); partial cancellations after e-invoicing -> kept in the ERP
    unless ``$OMNI_ERP_UPLOAD_PARTIAL_CANCEL_CREDIT_NOTES`` is true; full credit notes without return
    order (F3) -> kept in the ERP (Ajio seller SOP); unknown return orders -> unmatched and dead-lettered.
    A known credit note number for another order, return order, IRN or amount is a conflict (see the base
    class). XCom: ``{batch_id, read, new, cursor, <state>: n, conflict: n}``.
    """

    doc_type = DOC_CREDIT_NOTE
    cursor_name = "erp_credit_note_seq"
    stage = STAGE_CREDIT_NOTE_UPLOAD
    label = "credit note"
    number_alias = "creditNoteNumber"
    identity_fields = (
        ("order", "orderCode"), ("return order", "returnOrderCode"), ("IRN", "irn"), ("total", "totalValue")
    )

    def read_page(self, since: int) -> CreditNotePage:
        return self.erp.credit_notes_since(since, limit=self.page_size)

    def number(self, document: ErpCreditNote) -> str:
        return document.credit_note_number

    def related_code(self, payload: dict[str, Any]) -> Any:
        return payload.get("returnOrderCode") or payload.get("invoiceNumber")

    def classify(self, document: ErpCreditNote) -> tuple[str, str | None]:
        ledger = self.ledger
        code = document.return_order_code
        return_order = ledger.get_return_order(code) if code else None
        state, reason = match_credit_note(
            document, return_order, upload_partial_cancel=upload_partial_cancel_credit_notes()
        )
        if return_order is not None and ledger.get_rms_return(return_order["return_order_code"]) is not None:
            # RMS path (issue 12): RMS raises this return's e-credit note; nothing from the ERP is uploaded for it.
            state, reason = erp_credit_note_on_rms_path(document.credit_note_number, return_order["return_order_code"])
        return state, reason

    def would_also(self, document: ErpCreditNote, state: str) -> str:
        code = document.return_order_code
        if state not in (DOC_READY, DOC_KEPT_IN_ERP) or not code or self.ledger.get_return_order(code) is None:
            return ""
        return f"return order {code} would get credit note {document.credit_note_number}"

    def match_and_record(self, document: ErpCreditNote, *, replace: bool) -> DocumentRead:
        ledger = self.ledger
        code = document.return_order_code
        state, reason = self.classify(document)
        return_order = ledger.get_return_order(code) if code else None
        if not self._store(document, state, reason, related_code=code or document.invoice_number, replace=replace):
            return DocumentRead()  # another run recorded it a moment ago
        if return_order is not None and state in (DOC_READY, DOC_KEPT_IN_ERP):
            ledger.update_return_order(return_order["return_order_code"], credit_note_number=document.credit_note_number)
        return self._refused(document.credit_note_number, state, reason)


class OmniCreditNoteUploadOperator(OmniDocumentUploadOperator):
    """Upload ready credit notes to Omni (F6, domain.md 3.3); ``returnOrderId`` is the return order code (decision 7).

    XCom: ``{batch_id, uploaded, skipped}`` (counts present only when > 0); when any credit note was deferred,
    failed or dead-lettered the task fails instead, naming the counts.
    """

    doc_type = DOC_CREDIT_NOTE
    stage = STAGE_CREDIT_NOTE_UPLOAD
    label = "credit note"
    pdf_field = "signedCreditNotePdf"

    def build(self, document: dict[str, Any], pdf_base64: str | None, context: Any = None) -> BaseModel:
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

    def endpoint_and_key(self, number: str) -> tuple[str, str]:
        from omni_erp import keys
        from omni_erp.hooks.omni import CREDIT_NOTE_ENDPOINT

        return CREDIT_NOTE_ENDPOINT, keys.omni_credit_note(number)
