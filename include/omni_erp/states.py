"""State names of postings and orders in the ledger (kept dependency-free so DAG parsing stays cheap)."""

from __future__ import annotations

# inbox_message.state
PENDING = "pending"    # stored, waiting for a run
CLAIMED = "claimed"    # taken by a run (batch_id, lease_until)
DONE = "done"          # processed; `outcome` says how
DEAD = "dead"          # cannot be processed; see dead_letter
IGNORED = "ignored"    # stored, but an event type we do not process

# ajio_order.state (F1)
ORDER_READY = "ready_to_book"                    # mapped; the ERP request is stored, not yet booked
ORDER_BOOKED = "booked"                          # the ERP holds the sales order
ORDER_NOTHING_TO_INVOICE = "nothing_to_invoice"  # every unit cancelled before posting
ORDER_REJECTED = "rejected_by_erp"               # the ERP refused it (4xx): a person must look

# dead_letter.stage
STAGE_INBOX = "inbox"
STAGE_ORDER_POSTING = "order_posting"

# ajio_order.state after booking (F2-F6)
ORDER_INVOICED = "invoiced"                        # the ERP's e-invoice is recorded (IRN, ack date)
ORDER_CANCELLED = "cancelled"                      # OUTWARD_ORDER_CANCEL handled; `cancel_route` says how
ORDER_COMPLETED = "completed"                      # every invoiced unit shipped
ORDER_COMPLETED_WITH_RETURN = "completed_with_return"  # every invoiced unit shipped or, cancelled after e-invoicing, on a return order
ORDER_PARTIALLY_SHIPPED = "partially_shipped"      # some invoiced units shipped, the rest not yet shipped or cancelled

# ajio_order.cancel_route (F3, domain.md decision 5)
CANCEL_NOT_BOOKED = "not_booked"                   # nothing in the ERP: nothing to call
CANCEL_SALES_ORDER = "sales_order_cancelled"       # booked, not e-invoiced
CANCEL_IRN = "irn_cancelled"                       # e-invoiced < 24 h ago: IRN and order cancelled
CANCEL_CREDIT_NOTE = "credit_note"                 # e-invoiced >= 24 h ago: credit note kept in the ERP

# erp_document.doc_type and .state (F2, F6)
DOC_INVOICE = "invoice"
DOC_CREDIT_NOTE = "credit_note"
DOC_READY = "ready_to_upload"      # recorded and matched; the next upload sends it
DOC_UPLOADED = "uploaded"          # Omni answered 200
DOC_UPLOAD_FAILED = "upload_failed"  # Omni answered 4xx: a person fixes it and re-triggers
DOC_UNMATCHED = "unmatched"        # no order (or return order) in the ledger for it
DOC_MISMATCH = "mismatch"          # totals or quantities disagree with the order
DOC_SKIPPED = "not_uploaded_order_cancelled"  # the order was cancelled in Omni
DOC_KEPT_IN_ERP = "kept_in_erp"    # credit notes the SOP keeps out of Omni (F3 >= 24 h, F4 partial cancel)
DOC_INVALID = "invalid"            # the ERP's document breaks the contract or could not be matched: never uploaded

# return_order.kind and .state (F4, F5)
RETURN_CUSTOMER = "CUSTOMER_RETURN"
RETURN_RTO = "RETURN_TO_ORIGIN"
RETURN_PARTIAL_CANCEL = "PARTIAL_CANCEL_AFTER_INVOICE"
RETURN_READY = "ready_to_book"
RETURN_BOOKED = "booked"
RETURN_MANUAL_ONLY = "manual_settlement_only"  # no unit passed QC: nothing to credit automatically
RETURN_REJECTED = "rejected_by_erp"

# dead_letter.stage for the other flows
STAGE_INVOICE_UPLOAD = "invoice_upload"
STAGE_CANCELLATION = "order_cancellation"
STAGE_COMPLETION = "order_completion"
STAGE_RETURN = "return_posting"
STAGE_CREDIT_NOTE_UPLOAD = "credit_note_upload"
