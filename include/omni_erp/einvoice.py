"""Indian e-invoicing helpers: IRN hash, NIC document-number rules and a sandbox signed QR (domain.md section 6)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from datetime import datetime
from decimal import Decimal
from typing import Any

from omni_erp.timeutil import IST

DOC_TYPES = frozenset({"INV", "CRN", "DBN"})
MAX_DOCUMENT_NUMBER_LENGTH = 16

# The real QR is signed by NIC with RS256; a sandbox cannot do that, so it signs with this HMAC key
# and says so in the header's "kid".
SANDBOX_QR_KEY = b"omni-erp-sandbox-irp"
_QR_HEADER = {"alg": "RS256", "typ": "JWT", "kid": "SANDBOX"}

_ALLOWED = re.compile(r"[A-Z0-9/-]*")
_FINANCIAL_YEAR = re.compile(r"\d{4}-\d{2}")


def validate_document_number(number: str) -> str:
    """Check a document number against NIC's rules and return it unchanged.

    :param number: invoice / credit note / debit note number as printed on the document.
    :raises ValueError: naming the rule that was broken.
    """
    if not isinstance(number, str) or not number:
        raise ValueError("document number must be a non-empty string")
    if len(number) > MAX_DOCUMENT_NUMBER_LENGTH:
        raise ValueError(
            f"document number {number!r} has {len(number)} characters; NIC allows at most {MAX_DOCUMENT_NUMBER_LENGTH}"
        )
    if any(ch.islower() for ch in number):
        raise ValueError(f"document number {number!r} contains lower-case letters; NIC accepts only upper case")
    if not _ALLOWED.fullmatch(number):
        bad = sorted({ch for ch in number if not _ALLOWED.fullmatch(ch)})
        raise ValueError(
            f"document number {number!r} contains {''.join(bad)!r}; only A-Z, 0-9, '/' and '-' are allowed"
        )
    if number[0] in "0/-":
        raise ValueError(f"document number {number!r} must not start with '0', '/' or '-'")
    return number


def irn(supplier_gstin: str, financial_year: str, doc_type: str, doc_number: str) -> str:
    """Invoice Reference Number: SHA-256 hex of GSTIN + financial year + document type + document number.

    :param supplier_gstin: the seller's 15-character GSTIN.
    :param financial_year: ``YYYY-YY``, e.g. ``2026-27`` (see ``timeutil.financial_year``).
    :param doc_type: ``INV``, ``CRN`` or ``DBN``.
    :param doc_number: the document number; must pass :func:`validate_document_number`.
    """
    if doc_type not in DOC_TYPES:
        raise ValueError(f"document type {doc_type!r} is not one of {sorted(DOC_TYPES)}")
    if not _FINANCIAL_YEAR.fullmatch(financial_year):
        raise ValueError(f"financial year {financial_year!r} is not in the form YYYY-YY")
    validate_document_number(doc_number)
    return hashlib.sha256(f"{supplier_gstin}{financial_year}{doc_type}{doc_number}".encode()).hexdigest()


def signed_qr(
    *,
    seller_gstin: str,
    buyer_gstin: str,
    doc_number: str,
    doc_type: str,
    doc_date: datetime,
    total_value: Decimal | float,
    item_count: int,
    main_hsn_code: str,
    irn: str,
    irn_date: datetime,
    key: bytes = SANDBOX_QR_KEY,
) -> str:
    """A JWT-shaped signed QR with NIC's payload fields, signed with HMAC-SHA256 (sandbox only).

    :param doc_date: document date; printed as ``dd/MM/yyyy`` in IST.
    :param total_value: total invoice value, tax included.
    :param main_hsn_code: HSN code of the highest-value line.
    :param irn_date: when the IRN was generated; printed as ``yyyy-MM-dd HH:mm:ss`` in IST.
    """
    data = {
        "SellerGstin": seller_gstin,
        "BuyerGstin": buyer_gstin,
        "DocNo": doc_number,
        "DocTyp": doc_type,
        "DocDt": doc_date.astimezone(IST).strftime("%d/%m/%Y"),
        "TotInvVal": float(total_value),
        "ItemCnt": item_count,
        "MainHsnCode": main_hsn_code,
        "Irn": irn,
        "IrnDt": irn_date.astimezone(IST).strftime("%Y-%m-%d %H:%M:%S"),
    }
    payload = {"data": json.dumps(data, separators=(",", ":")), "iss": "NIC"}
    signing_input = f"{_b64(_compact(_QR_HEADER))}.{_b64(_compact(payload))}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def decode_qr_payload(token: str) -> dict[str, Any]:
    """The QR's payload with its ``data`` string parsed, e.g. ``{"data": {"DocNo": ...}, "iss": "NIC"}``.

    The signature is not checked; use :func:`verify_signed_qr` for that.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("a signed QR has three dot-separated parts")
    payload = json.loads(_unb64(parts[1]))
    if isinstance(payload.get("data"), str):
        payload["data"] = json.loads(payload["data"])
    return payload


def verify_signed_qr(token: str, key: bytes = SANDBOX_QR_KEY) -> bool:
    """True when the token's HMAC signature matches (sandbox-signed QRs only)."""
    signing_input, _, signature = token.rpartition(".")
    expected = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    try:
        return hmac.compare_digest(expected, _unb64(signature))
    except ValueError:
        return False


def _compact(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
