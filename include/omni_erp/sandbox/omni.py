"""Strict sandbox of Increff's inbound ``ajio-vms`` invoice and credit note endpoints (domain.md 3.2, 3.3, 4.3)."""

from __future__ import annotations

import base64
import binascii
import difflib
import hmac
import re
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, FastAPI, Request

from omni_erp.sandbox.base import SandboxState, sandbox_app
from omni_erp.sandbox.faults import ApiError, FaultConfig, FaultInjector, read_json
from omni_erp.settings import MAX_STRING_LENGTH
from omni_erp.timeutil import to_omni

# A value check returns the problem in Java-validator wording, or None when the value is fine.
Check = Callable[[Any], "str | None"]

# ISO zoned date-time as Java's ZonedDateTime parses it: the offset (or Z) is mandatory.
_ZONED = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})(\[[\w/+-]+\])?")
_IRN = re.compile(r"[0-9a-fA-F]{64}")
_ZONED_HINT = "must be a zoned date-time like 2026-11-20T11:00:00.000+05:30"


def _text(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if not value.strip():
        return "may not be empty"
    if len(value) > MAX_STRING_LENGTH:
        return f"size must be between 1 and {MAX_STRING_LENGTH}"
    return None


def _token(value: Any) -> str | None:
    # Signed QR codes are JWTs of a kilobyte or more, so Increff's 255-character limit cannot apply to them.
    if not isinstance(value, str):
        return "must be a string"
    return None if value.strip() else "may not be empty"


def _zoned(value: Any) -> str | None:
    if not isinstance(value, str) or not _ZONED.fullmatch(value):
        return _ZONED_HINT
    try:
        datetime.fromisoformat(value.split("[")[0].replace("Z", "+00:00"))
    except ValueError:
        return _ZONED_HINT
    return None


def _irn(value: Any) -> str | None:
    return None if isinstance(value, str) and _IRN.fullmatch(value) else "must be 64 hexadecimal characters"


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be a boolean (true or false)"


def _pdf(value: Any) -> str | None:
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except (binascii.Error, ValueError):
        raw = b""
    return None if raw.startswith(b"%PDF") else "must be the base64 encoding of a PDF document"


def _url(value: Any) -> str | None:
    parts = urlsplit(value) if isinstance(value, str) else None
    ok = parts is not None and parts.scheme in ("http", "https") and bool(parts.netloc)
    return None if ok else "must be an http or https URL"


def _quantity(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    return None if ok else "must be an integer greater than 0"


def _check_fields(
    body: dict[str, Any], prefix: str, required: dict[str, Check], optional: set[str], problems: list[str]
) -> None:
    for field, check in required.items():
        value = body.get(field)
        problem = "may not be null" if value is None else check(value)
        if problem:
            problems.append(f"{prefix}{field}: {problem}")
    known = set(required) | optional
    for field in body:
        if field not in known:
            # Close misspellings (invoiceUrl for invoiceURL) are the usual cause, so name the right one.
            by_lower = {name.lower(): name for name in known}
            guess = by_lower.get(field.lower()) or next(iter(difflib.get_close_matches(field, known, n=1)), None)
            hint = f" (did you mean {guess}?)" if guess else ""
            problems.append(f"{prefix}{field}: unknown field{hint}")


def _check_document(body: dict[str, Any], pdf_field: str, url_field: str, problems: list[str]) -> None:
    present = [field for field in (pdf_field, url_field) if body.get(field) is not None]
    if len(present) != 1:
        problems.append(f"{pdf_field}: exactly one of {pdf_field} and {url_field} is required")
    for field, check in ((pdf_field, _pdf), (url_field, _url)):
        if body.get(field) is not None and (problem := check(body[field])):
            problems.append(f"{field}: {problem}")


def validate_b2b_invoice(body: dict[str, Any]) -> list[str]:
    """Every problem with a ``b2bInvoice/posting`` body, as ``"field: message"`` (empty when valid)."""
    problems: list[str] = []
    required = {
        "invoiceNumber": _text,
        "invoiceDate": _zoned,
        "forwardPurchaseOrder": _text,
        "irnNumber": _irn,
        "qrCode": _token,
        "isPartialInvoice": _boolean,
    }
    _check_fields(body, "", required, {"invoiceLineEntries", "invoicePdf", "invoiceURL"}, problems)
    entries = body.get("invoiceLineEntries")
    partial = body.get("isPartialInvoice")
    if partial is True and not entries:
        problems.append("invoiceLineEntries: may not be empty when isPartialInvoice is true")
    elif partial is False and entries:
        problems.append("invoiceLineEntries: must be absent when isPartialInvoice is false")
    if entries is not None and not isinstance(entries, list):
        problems.append("invoiceLineEntries: must be an array")
    elif entries:
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                problems.append(f"invoiceLineEntries[{i}]: must be an object")
                continue
            line_checks = {"channelSkuCode": _text, "quantity": _quantity}
            _check_fields(entry, f"invoiceLineEntries[{i}].", line_checks, set(), problems)
    _check_document(body, "invoicePdf", "invoiceURL", problems)
    return problems


def validate_credit_note(body: dict[str, Any]) -> list[str]:
    """Every problem with a ``creditNote/posting`` body, as ``"field: message"`` (empty when valid)."""
    problems: list[str] = []
    required = {
        "creditNoteNumber": _text,
        "returnOrderId": _text,
        "irnNumber": _irn,
        "ackNumber": _text,
        "ackDate": _zoned,
        "signedQrCode": _token,
    }
    _check_fields(body, "", required, {"signedCreditNotePdf", "creditNotePdfUrl"}, problems)
    _check_document(body, "signedCreditNotePdf", "creditNotePdfUrl", problems)
    return problems


class OmniState(SandboxState[FaultConfig]):
    """The invoices and credit notes Omni has accepted, by number, and how often one was posted again."""

    def clear(self) -> None:
        self.received: dict[str, dict[str, dict[str, Any]]] = {"invoice": {}, "credit_note": {}}
        self.duplicates: Counter[str] = Counter()

    def documents(self) -> dict[str, Any]:
        return {
            "invoices": list(self.received["invoice"].values()),
            "credit_notes": list(self.received["credit_note"].values()),
            "duplicates": dict(self.duplicates),
        }

    def accept(self, kind: str, number_field: str, body: dict[str, Any]) -> None:
        """Keep a valid document; the same one again is a duplicate, another one under its number is refused."""
        number = body[number_field]
        known = self.received[kind].get(number)
        if known is None:
            self.received[kind][number] = {"receivedAt": to_omni(datetime.now(UTC)), "body": body}
        elif known["body"] == body:
            self.duplicates[kind] += 1
        else:
            label = "invoice" if kind == "invoice" else "credit note"
            raise ApiError(
                400, f"DUPLICATE_{kind.upper()}", f"A {label} with this number already exists",
                description=f"[{number_field}: {number} was already posted with different content]",
            )


def omni_router(state: OmniState, username: str, password: str) -> APIRouter:
    """``/ajio-vms``: the invoice and credit note postings, behind Increff's header credentials."""

    async def authorize(request: Request) -> None:  # async: a plain def runs in the thread pool, one hop per call
        given_user = request.headers.get("authUsername", "")
        given_password = request.headers.get("authPassword", "")
        # Both compared, always, so a wrong user name takes as long as a wrong password.
        user_ok = hmac.compare_digest(given_user.encode(), username.encode())
        password_ok = hmac.compare_digest(given_password.encode(), password.encode())
        if not (user_ok and password_ok):
            raise ApiError(401, "UNAUTHORIZED", "Invalid credentials")

    async def receive(
        request: Request, kind: str, number_field: str, validate: Callable[[dict[str, Any]], list[str]]
    ) -> dict[str, Any]:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "BAD_DATA", "Input validation failed", description="[body: must be a JSON object]")
        problems = validate(body)
        if problems:
            raise ApiError(400, "BAD_DATA", "Input validation failed", description=f"[{', '.join(problems)}]")
        with state.lock:
            state.accept(kind, number_field, body)
        return {}

    api = APIRouter(prefix="/ajio-vms", dependencies=[Depends(authorize)])

    @api.post("/b2bInvoice/posting")
    async def post_b2b_invoice(request: Request) -> dict[str, Any]:
        return await receive(request, "invoice", "invoiceNumber", validate_b2b_invoice)

    @api.post("/creditNote/posting")
    async def post_credit_note(request: Request) -> dict[str, Any]:
        return await receive(request, "credit_note", "creditNoteNumber", validate_credit_note)

    return api


def create_omni_sandbox(
    *, username: str = "omni-sandbox-user", password: str = "omni-sandbox-pass", seed: int = 0
) -> FastAPI:
    """Build the Omni sandbox app.

    :param username: expected ``authUsername`` header.
    :param password: expected ``authPassword`` header.
    :param seed: seed of the random source behind ``error_rate`` and ``timeout_rate``.
    """
    faults = FaultInjector(
        FaultConfig(seed=seed), _render, codes={400: "BAD_DATA", 422: "BAD_DATA"}, validation_status=400
    )
    state = OmniState(lambda: faults.config)
    return sandbox_app("Increff Omni sandbox", faults, state, omni_router(state, username, password))


def _render(status: int, code: str, message: str, description: str | None) -> dict[str, Any]:
    return {"code": code, "message": message, "description": description}
