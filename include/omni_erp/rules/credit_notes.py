"""F6 business rule: what happens to an ERP credit note, by its return order (domain.md decisions 5-7)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from omni_erp.rules import Classified
from omni_erp.states import (
    DOC_KEPT_IN_ERP,
    DOC_MISMATCH,
    DOC_READY,
    DOC_UNMATCHED,
    RETURN_CUSTOMER,
    RETURN_PARTIAL_CANCEL,
    RETURN_RTO,
)

if TYPE_CHECKING:
    from omni_erp.models.erp import ErpCreditNote

# The deployment switch of domain.md decision 6 (the operator reads it; the rule names it in its reason).
UPLOAD_PARTIAL_CANCEL_ENV = "OMNI_ERP_UPLOAD_PARTIAL_CANCEL_CREDIT_NOTES"
SOP_KEPT_IN_ERP = "Ajio seller SOP: kept in the ERP, not uploaded"


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
