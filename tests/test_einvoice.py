"""IRN hashing, NIC document-number rules and the sandbox signed QR (domain.md section 6)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from omni_erp import einvoice

GSTIN = "29ABCDE1234F1Z5"
# sha256("29ABCDE1234F1Z5" + "2026-27" + "INV" + "RB2627/000001"), computed independently.
KNOWN_IRN = "6cbfd01b1011e417c65260e39b469c1a0a4d13180dbaf2450a86c22d748cc8ef"


def test_irn_is_the_sha256_of_gstin_year_type_and_number() -> None:
    assert einvoice.irn(GSTIN, "2026-27", "INV", "RB2627/000001") == KNOWN_IRN


def test_irn_differs_per_document_type() -> None:
    irns = {einvoice.irn(GSTIN, "2026-27", doc_type, "RB2627/000001") for doc_type in ("INV", "CRN", "DBN")}

    assert len(irns) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((GSTIN, "2026-27", "INVOICE", "RB2627/000001"), "document type"),
        ((GSTIN, "2026", "INV", "RB2627/000001"), "financial year"),
        ((GSTIN, "2026-27", "INV", "rb2627/000001"), "lower-case"),
    ],
    ids=["unknown-type", "bad-year", "bad-number"],
)
def test_irn_refuses_inputs_the_irp_would_refuse(args: tuple[str, str, str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        einvoice.irn(*args)


@pytest.mark.parametrize(
    "number",
    ["RB2627/000001", "A", "INV-2026-27-0001", "9", "ABCDEFGHIJKLMNOP"],
    ids=["series", "one-char", "dashes", "digit-start", "sixteen-chars"],
)
def test_valid_document_numbers_pass_unchanged(number: str) -> None:
    assert einvoice.validate_document_number(number) == number


@pytest.mark.parametrize(
    ("number", "message"),
    [
        ("", "non-empty"),
        ("ABCDEFGHIJKLMNOPQ", "at most 16"),
        ("Rb2627/1", "lower-case"),
        ("RB 2627", "' '"),
        ("RB_2627", "'_'"),
        ("0RB2627", "must not start"),
        ("/RB2627", "must not start"),
        ("-RB2627", "must not start"),
    ],
    ids=[
        "empty", "seventeen-chars", "lower-case", "space", "underscore", "leading-zero", "leading-slash", "leading-dash"
    ],
)
def test_invalid_document_numbers_say_which_rule_they_break(number: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        einvoice.validate_document_number(number)


def make_qr(**overrides: object) -> str:
    at = datetime(2027, 3, 31, 19, 0, tzinfo=UTC)  # already 1 April 2027 in IST
    args: dict[str, object] = {
        "seller_gstin": GSTIN, "buyer_gstin": "27AABCR1718E1ZY", "doc_number": "RB2627/000001", "doc_type": "INV",
        "doc_date": at, "total_value": Decimal("5539.00"), "item_count": 2, "main_hsn_code": "6203",
        "irn": KNOWN_IRN, "irn_date": at,
    }
    return einvoice.signed_qr(**{**args, **overrides})  # type: ignore[arg-type]


def test_signed_qr_is_a_jwt_with_nics_header_and_payload() -> None:
    header_b64, _, _ = make_qr().split(".")

    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
    payload = einvoice.decode_qr_payload(make_qr())

    assert header == {"alg": "RS256", "typ": "JWT", "kid": "SANDBOX"}
    assert payload["iss"] == "NIC"
    assert payload["data"] == {
        "SellerGstin": GSTIN, "BuyerGstin": "27AABCR1718E1ZY", "DocNo": "RB2627/000001", "DocTyp": "INV",
        "DocDt": "01/04/2027", "TotInvVal": 5539.0, "ItemCnt": 2, "MainHsnCode": "6203", "Irn": KNOWN_IRN,
        "IrnDt": "2027-04-01 00:30:00",
    }


def test_qr_signature_detects_tampering() -> None:
    token = make_qr()
    header, payload, signature = token.split(".")
    forged_payload = base64.urlsafe_b64encode(b'{"data":"{}","iss":"NIC"}').rstrip(b"=").decode()

    assert einvoice.verify_signed_qr(token)
    assert not einvoice.verify_signed_qr(f"{header}.{forged_payload}.{signature}")
    assert not einvoice.verify_signed_qr(token, key=b"another-key")


def test_decode_refuses_something_that_is_not_a_jwt() -> None:
    with pytest.raises(ValueError, match="three"):
        einvoice.decode_qr_payload("not-a-token")
