"""Idempotency keys: one per business action on one document (domain.md decision 9).

The same action always gets the same key, so a re-delivered posting, a retried task or a re-run
makes the ERP return the existing document instead of creating a second one. They are also how the
ledger's ``outbound_call`` rows are searched when an order is stuck.
"""

from __future__ import annotations


def create_sales_order(order_code: str) -> str:
    return f"create:{order_code}"


def cancel_sales_order(order_code: str) -> str:
    return f"cancel:{order_code}"


def cancel_irn(invoice_number: str) -> str:
    return f"cancel-irn:{invoice_number}"


def credit_note_for_invoice(invoice_number: str) -> str:
    return f"credit-note:{invoice_number}"


def return_order(return_order_code: str) -> str:
    return f"return:{return_order_code}"
