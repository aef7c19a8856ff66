"""Idempotency keys: one per business action on one document (domain.md decision 9).

The same action always gets the same key, so a re-delivered posting, a retried task or a re-run
makes the ERP return the existing document instead of creating a second one. They are also how the
ledger's ``outbound_call`` rows are searched when an order is stuck.

**Encoding.** A key is ``<action>:<value>`` and travels as the ``Idempotency-Key`` HTTP header, so it
must fit a header whatever the business value holds (Increff sends any Unicode in codes). The value
is written as is when it is printable ASCII other than ``%`` (``!`` to ``~``, so ``create:FN1234567890``
is exactly the key earlier versions sent); every other character - ``%`` itself, space, control and
non-ASCII characters - becomes the percent-encoded bytes of its UTF-8 form, upper-case hex
(``create:FN%E2%80%AE01`` for ``FN\\u202e01``). Because ``%`` is always encoded the mapping is
one-to-one, and it is a pure function of the value, so retries repeat the key exactly.

A key longer than the ERP contract's 255 characters keeps the first part of the encoded value and
ends in ``%~`` and the SHA-256 of the value's UTF-8 bytes (64 hex digits). ``%~`` never occurs in a
short key (there ``%`` is always followed by two hex digits), so short and long keys cannot collide.
"""

from __future__ import annotations

import hashlib

MAX_KEY_LENGTH = 255  # Idempotency-Key maxLength in contracts/erp_rest.yaml
_LONG_KEY_MARK = "%~"
_SAFE = frozenset(chr(code) for code in range(0x21, 0x7F)) - {"%"}  # visible ASCII except the escape character


def encode_value(value: str) -> str:
    """Header-safe, one-to-one form of a business value: visible ASCII kept, everything else percent-encoded.

    Lone surrogates (which JSON's ``\\ud800`` escapes can produce) are encoded as their own code units.
    """
    return "".join(
        char if char in _SAFE else "".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
        for char in value
    )


def idempotency_key(action: str, value: str) -> str:
    """``<action>:<encoded value>``, at most ``MAX_KEY_LENGTH`` characters, printable ASCII only.

    :param action: a fixed ASCII word such as ``create`` (never business data).
    :param value: the business value (order code, invoice number, ...), any Unicode.
    """
    encoded = encode_value(value)
    key = f"{action}:{encoded}"
    if len(key) <= MAX_KEY_LENGTH:
        return key
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    room = MAX_KEY_LENGTH - len(action) - 1 - len(_LONG_KEY_MARK) - len(digest)
    head = encoded[:room]
    if "%" in head[-2:]:  # never cut an escape in half: the head stays readable and unambiguous
        head = head[: head.rindex("%")]
    return f"{action}:{head}{_LONG_KEY_MARK}{digest}"


def create_sales_order(order_code: str) -> str:
    return idempotency_key("create", order_code)


def cancel_sales_order(order_code: str) -> str:
    return idempotency_key("cancel", order_code)


def cancel_irn(invoice_number: str) -> str:
    return idempotency_key("cancel-irn", invoice_number)


def credit_note_for_invoice(invoice_number: str) -> str:
    return idempotency_key("credit-note", invoice_number)


def return_order(return_order_code: str) -> str:
    return idempotency_key("return", return_order_code)


def omni_invoice(invoice_number: str) -> str:
    """Names a B2B invoice upload in logs and ``outbound_call`` (Omni takes no key header)."""
    return idempotency_key("invoice", invoice_number)


def omni_credit_note(credit_note_number: str) -> str:
    """Names a credit note upload in logs and ``outbound_call`` (Omni takes no key header)."""
    return idempotency_key("credit_note", credit_note_number)


def pdf(document_number: str) -> str:
    """Names a PDF download from the ERP in logs and ``outbound_call``."""
    return idempotency_key("pdf", document_number)
