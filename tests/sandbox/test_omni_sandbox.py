"""The Omni sandbox is as strict as Increff: it accepts what our models send and rejects each broken field by name."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from omni_erp import einvoice
from omni_erp.models.omni import B2BInvoice, CreditNote, InvoiceLine
from omni_erp.sandbox.pdf import tiny_pdf

INVOICE_PATH = "/ajio-vms/b2bInvoice/posting"
CREDIT_NOTE_PATH = "/ajio-vms/creditNote/posting"
SKU = "460491724004"
AT = datetime(2026, 11, 20, 5, 30, tzinfo=UTC)
PDF_B64 = base64.b64encode(tiny_pdf("TAX INVOICE RB2627/000001")).decode()
QR = einvoice.signed_qr(
    seller_gstin="29ABCDE1234F1Z5", buyer_gstin="27AABCR1718E1ZY", doc_number="RB2627/000001", doc_type="INV",
    doc_date=AT, total_value=2240, item_count=1, main_hsn_code="6205", irn="0" * 64, irn_date=AT,
)


def invoice(**changes: Any) -> dict[str, Any]:
    """A full-invoice body built by our own model, then changed key by key (None deletes the key)."""
    body = B2BInvoice(
        invoice_number="RB2627/000001",
        invoice_date="2026-11-20T11:00:00.000+05:30",
        forward_purchase_order="4042640641",
        irn_number=einvoice.irn("29ABCDE1234F1Z5", "2026-27", "INV", "RB2627/000001"),
        qr_code=QR,
        is_partial_invoice=False,
        invoice_url="http://127.0.0.1:8081/_sandbox/pdf/RB2627-000001.pdf",
    ).to_json_dict()
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def credit_note(**changes: Any) -> dict[str, Any]:
    body = CreditNote(
        credit_note_number="RC2627/000001",
        return_order_id="RTN-88123401",
        irn_number=einvoice.irn("29ABCDE1234F1Z5", "2026-27", "CRN", "RC2627/000001"),
        ack_number="126000000000001",
        ack_date="2026-11-28T15:30:00.000+05:30",
        signed_qr_code=QR,
        signed_credit_note_pdf=PDF_B64,
    ).to_json_dict()
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authUsername": "test-omni-user", "authPassword": "wrong"},
        {"authUsername": "x", "authPassword": "test-omni-pass"},
    ],
    ids=["no-credentials", "wrong-password", "wrong-user"],
)
def test_wrong_credentials_get_increffs_401(omni: Any, headers: dict[str, str]) -> None:
    response = requests.post(omni.url + INVOICE_PATH, json=invoice(), headers=headers, timeout=5)

    assert response.status_code == 401
    assert response.json() == {"code": "UNAUTHORIZED", "message": "Invalid credentials", "description": None}


def test_full_invoice_from_our_model_is_accepted_and_recorded(omni: Any) -> None:
    response = omni.post(INVOICE_PATH, invoice())

    assert response.status_code == 200
    assert response.json() == {}
    [recorded] = omni.state()["invoices"]
    assert recorded["body"] == invoice()


def test_partial_invoice_with_lines_and_a_pdf_is_accepted(omni: Any) -> None:
    body = B2BInvoice(
        invoice_number="RB2627/000002",
        invoice_date="2026-11-20T11:00:00Z",
        forward_purchase_order="4042640642",
        irn_number="a" * 64,
        qr_code=QR,
        is_partial_invoice=True,
        invoice_line_entries=[InvoiceLine(channel_sku_code="460491724004", quantity=1)],
        invoice_pdf=PDF_B64,
    ).to_json_dict()

    assert omni.post(INVOICE_PATH, body).status_code == 200


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"forwardPurchaseOrder": None}, "forwardPurchaseOrder: may not be null"),
        ({"invoiceNumber": ""}, "invoiceNumber: may not be empty"),
        ({"invoiceDate": "2026-11-20T11:00:00.000"}, "invoiceDate: must be a zoned date-time"),
        ({"invoiceDate": "20-11-2026T11:00:00+05:30"}, "invoiceDate: must be a zoned date-time"),
        ({"irnNumber": "f" * 63}, "irnNumber: must be 64 hexadecimal characters"),
        ({"isPartialInvoice": "false"}, "isPartialInvoice: must be a boolean"),
        ({"isPartialInvoice": True}, "invoiceLineEntries: may not be empty when isPartialInvoice is true"),
        (
            {"invoiceLineEntries": [{"channelSkuCode": SKU, "quantity": 1}]},
            "invoiceLineEntries: must be absent when isPartialInvoice is false",
        ),
        (
            {"isPartialInvoice": True, "invoiceLineEntries": [{"channelSkuCode": None, "quantity": 1}]},
            "invoiceLineEntries[0].channelSkuCode: may not be null",
        ),
        (
            {"isPartialInvoice": True, "invoiceLineEntries": [{"channelSkuCode": SKU, "quantity": 1.5}]},
            "invoiceLineEntries[0].quantity: must be an integer greater than 0",
        ),
        ({"invoicePdf": PDF_B64}, "invoicePdf: exactly one of invoicePdf and invoiceURL is required"),
        ({"invoiceURL": None}, "invoicePdf: exactly one of invoicePdf and invoiceURL is required"),
        (
            {"invoiceURL": None, "invoicePdf": base64.b64encode(b"<html>").decode()},
            "invoicePdf: must be the base64 encoding of a PDF",
        ),
        ({"invoiceURL": "ftp://files.example/inv.pdf"}, "invoiceURL: must be an http or https URL"),
        (
            {"invoiceURL": None, "invoiceUrl": "https://files.example/inv.pdf"},
            "invoiceUrl: unknown field (did you mean invoiceURL?)",
        ),
    ],
    ids=[
        "no-po", "empty-number", "date-without-offset", "date-dd-mm-yyyy", "short-irn", "boolean-as-string",
        "partial-without-lines", "full-with-lines", "line-without-sku", "fractional-quantity", "pdf-and-url",
        "neither-pdf-nor-url", "pdf-not-a-pdf", "ftp-url", "invoiceUrl-typo",
    ],
)
def test_invalid_invoice_is_rejected_naming_the_field(omni: Any, changes: dict[str, Any], problem: str) -> None:
    response = omni.post(INVOICE_PATH, invoice(**changes))

    assert response.status_code == 400
    body = response.json()
    assert (body["code"], body["message"]) == ("BAD_DATA", "Input validation failed")
    assert problem in body["description"]
    assert omni.state()["invoices"] == []


def test_every_problem_is_listed_in_java_validator_style(omni: Any) -> None:
    response = omni.post(INVOICE_PATH, invoice(forwardPurchaseOrder=None, qrCode=None))

    assert response.json()["description"] == "[forwardPurchaseOrder: may not be null, qrCode: may not be null]"
    assert omni.state()["rejected"][0]["description"] == response.json()["description"]


def test_body_that_is_not_json_is_bad_data(omni: Any) -> None:
    response = omni.session.post(omni.url + INVOICE_PATH, data="invoiceNumber=1", timeout=5)

    assert response.status_code == 400
    assert response.json()["code"] == "BAD_DATA"


def test_same_invoice_again_is_a_counted_duplicate_but_changed_content_is_refused(omni: Any) -> None:
    assert omni.post(INVOICE_PATH, invoice()).status_code == 200
    again = omni.post(INVOICE_PATH, invoice())
    changed = omni.post(INVOICE_PATH, invoice(forwardPurchaseOrder="4042699999"))

    assert again.status_code == 200
    assert changed.status_code == 400 and changed.json()["code"] == "DUPLICATE_INVOICE"
    state = omni.state()
    assert len(state["invoices"]) == 1 and state["duplicates"] == {"invoice": 1}


def test_credit_note_from_our_model_is_accepted(omni: Any) -> None:
    assert omni.post(CREDIT_NOTE_PATH, credit_note()).status_code == 200
    assert omni.post(CREDIT_NOTE_PATH, credit_note()).status_code == 200

    state = omni.state()
    assert [c["body"]["creditNoteNumber"] for c in state["credit_notes"]] == ["RC2627/000001"]
    assert state["duplicates"] == {"credit_note": 1}


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"returnOrderId": None}, "returnOrderId: may not be null"),
        ({"ackDate": "2026-11-28 15:30:00"}, "ackDate: must be a zoned date-time"),
        ({"signedQrCode": None}, "signedQrCode: may not be null"),
        ({"creditNotePdfUrl": "https://files.example/cn.pdf"}, "signedCreditNotePdf: exactly one of"),
        ({"ackNo": "1"}, "ackNo: unknown field"),
    ],
    ids=["no-return-order", "date-without-zone", "no-qr", "pdf-and-url", "unknown-field"],
)
def test_invalid_credit_note_is_rejected_naming_the_field(omni: Any, changes: dict[str, Any], problem: str) -> None:
    response = omni.post(CREDIT_NOTE_PATH, credit_note(**changes))

    assert response.status_code == 400
    assert response.json()["code"] == "BAD_DATA"
    assert problem in response.json()["description"]


def test_credit_note_number_reused_with_other_content_is_refused(omni: Any) -> None:
    omni.post(CREDIT_NOTE_PATH, credit_note())

    response = omni.post(CREDIT_NOTE_PATH, credit_note(returnOrderId="RTN-2"))

    assert response.status_code == 400
    assert response.json()["code"] == "DUPLICATE_CREDIT_NOTE"
