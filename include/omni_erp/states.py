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
