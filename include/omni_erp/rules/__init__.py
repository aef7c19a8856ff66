"""The flows' business rules, one module per flow: pure functions of their inputs (domain.md decisions).

No Airflow, no I/O, no ledger, hooks or operators here (tests/test_layering.py checks it): operators
claim the work, call a rule, call the ERP or Omni, and record the outcome.

* ``order_posting`` - F1: an ``OUTWARD_ORDER_CREATE`` posting -> ERP sales order.
* ``invoice_upload`` - F2: does an ERP e-invoice agree with its order?
* ``cancellation`` - F3: which route a cancellation takes.
* ``completion`` - F4: what an ``OUTWARD_ORDER_COMPLETE`` posting means for its order.
* ``returns`` - F5: a return posting -> credited units and units settled by hand.
* ``credit_notes`` - F6: what happens to an ERP credit note.
"""

from __future__ import annotations

Classified = tuple[str, "str | None"]  # a feed document's (document state, reason), from invoice_upload and credit_notes
