"""The ERP seam: ``ErpAdapter`` (what the flows need from any ERP) and ``ErpHook``, the reference
adapter for a generic JSON REST ERP (contract: ``omni_erp/contracts/erp_rest.yaml``).

A seller whose ERP speaks another API implements ``ErpAdapter`` for it; operators depend only on
the interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from omni_erp import settings
from omni_erp.exceptions import PayloadError
from omni_erp.hooks.base import (
    AttemptObserver,
    ConnectionConfigError,
    RetryingJsonHook,
    RetryPolicy,
    is_header_safe,
    path_segment,
)
from omni_erp.models.erp import (
    CreditNotePage,
    EInvoice,
    EInvoicePage,
    ErpErrorBody,
    ReturnOrder,
    ReturnOrderRequest,
    SalesOrder,
    SalesOrderRequest,
)


@dataclass(frozen=True)
class Booking:
    """Result of an idempotent create: the document, and whether the ERP already had it (a replay)."""

    document: Any
    replayed: bool


class ErpAdapter(ABC):
    """Everything the six flows ask of the seller's ERP. Every write takes an idempotency key."""

    # Whether create_return_order honours ``raiseCreditNote: false`` (the RMS credit-note path, issue 12):
    # the return is booked and no e-credit note raised. An adapter that cannot must keep False; F5 then
    # refuses the rms path rather than let the ERP and RMS both credit a return.
    books_returns_without_credit_note: bool = False

    @abstractmethod
    def create_sales_order(self, order: SalesOrderRequest, *, idempotency_key: str) -> Booking:
        """Book a sales order; the same key returns the existing order instead of a second one."""

    @abstractmethod
    def einvoices_since(self, cursor: int, *, limit: int = 100) -> EInvoicePage:
        """Visible e-invoices with ``seq > cursor`` in seq order; a document may appear after higher seqs."""

    @abstractmethod
    def cancel_sales_order(self, sales_order_id: str, *, idempotency_key: str) -> SalesOrder:
        """Cancel a booked (not e-invoiced) sales order."""

    @abstractmethod
    def cancel_irn(self, invoice_number: str, reason: str, *, idempotency_key: str) -> EInvoice:
        """Cancel an e-invoice's IRN (possible only within 24 hours, domain.md section 6)."""

    @abstractmethod
    def create_return_order(self, request: ReturnOrderRequest, *, idempotency_key: str) -> Booking:
        """Book a return order; the ERP raises the credit note for it."""

    @abstractmethod
    def request_credit_note(self, invoice_number: str, order_code: str, reason: str, *, idempotency_key: str) -> Booking:
        """Have the ERP raise a full credit note against an invoice."""

    @abstractmethod
    def credit_notes_since(self, cursor: int, *, limit: int = 100) -> CreditNotePage:
        """Visible credit notes with ``seq > cursor`` in seq order; a document may appear after higher seqs."""

    @abstractmethod
    def download_pdf(self, url: str, *, key: str) -> bytes:
        """The signed PDF of an invoice or credit note (for uploads that send the PDF itself)."""


class BearerAuth:
    """``Authorization: Bearer <token>``; the token is the connection's password."""

    def __init__(self, token: str) -> None:
        if not is_header_safe(token):
            raise ConnectionConfigError("the ERP API token holds characters an HTTP header cannot carry")
        self.token = token

    def __call__(self, request: Any) -> Any:
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request

    def __repr__(self) -> str:  # never show the token
        return "BearerAuth(****)"


class ErpHook(RetryingJsonHook, ErpAdapter):
    """Reference ``ErpAdapter`` for the generic JSON REST ERP.

    The connection (``erp_default``, conn type http) holds the base URL and, in its password, the API token.

    :param erp_conn_id: Airflow connection id.
    :param retry_policy: attempts, backoff and timeouts.
    :param on_attempt: observer called after every HTTP attempt.
    """

    conn_name_attr = "erp_conn_id"
    default_conn_name = settings.ERP_CONN_ID
    conn_type = "erp_rest"  # registered by omni_erp.provider; conn type http picks this adapter too
    hook_name = "Seller ERP (generic REST)"
    system = "erp"
    books_returns_without_credit_note = True  # the contract's raiseCreditNote: false

    def __init__(
        self,
        erp_conn_id: str = settings.ERP_CONN_ID,
        *,
        retry_policy: RetryPolicy | None = None,
        on_attempt: AttemptObserver | None = None,
    ) -> None:
        super().__init__(erp_conn_id, retry_policy=retry_policy, on_attempt=on_attempt)
        self.erp_conn_id = erp_conn_id

    def _extract_auth(self, connection: Any) -> Any:
        if not connection.password:
            raise ConnectionConfigError(f"connection {self.erp_conn_id!r} needs the ERP API token in 'password'")
        return BearerAuth(connection.password)

    def error_message(self, response: Any) -> tuple[str | None, str]:
        try:
            error = ErpErrorBody.model_validate(response.json()).error or {}
        except ValueError:
            return None, (response.text or response.reason or "")[:500]
        return error.get("code"), str(error.get("message") or "")[:500]

    def test_connection(self) -> tuple[bool, str]:
        """The connection form's "Test": read an empty page of the e-invoice feed (token and URL checked, nothing read)."""
        from omni_erp.hooks.probe import PROBE_CURSOR, probe

        return probe(
            self, "the ERP", lambda: self.einvoices_since(PROBE_CURSOR, limit=1),
            ok_message="the ERP accepted the token and answered the e-invoice feed",
        )

    def _write(self, endpoint: str, operation: str, body: Any, key: str) -> Any:
        return self.call(
            "POST", endpoint, operation=operation, json=body, idempotency_key=key, headers={"Idempotency-Key": key}
        )

    def create_sales_order(self, order: SalesOrderRequest, *, idempotency_key: str) -> Booking:
        response = self._write("/api/v1/sales-orders", "create_sales_order", order.to_json_dict(), idempotency_key)
        return Booking(SalesOrder.model_validate(response.json()), replayed=response.status_code == 200)

    def einvoices_since(self, cursor: int, *, limit: int = 100) -> EInvoicePage:
        response = self.call(
            "GET", "/api/v1/e-invoices", operation="list_einvoices", params={"since": cursor, "limit": limit}
        )
        return EInvoicePage.model_validate(response.json())

    def cancel_sales_order(self, sales_order_id: str, *, idempotency_key: str) -> SalesOrder:
        endpoint = f"/api/v1/sales-orders/{path_segment(sales_order_id)}/cancel"
        response = self._write(endpoint, "cancel_sales_order", {}, idempotency_key)
        return SalesOrder.model_validate(response.json())

    def cancel_irn(self, invoice_number: str, reason: str, *, idempotency_key: str) -> EInvoice:
        body = {"invoiceNumber": invoice_number, "reason": reason}
        response = self._write("/api/v1/e-invoices/cancel-irn", "cancel_irn", body, idempotency_key)
        return EInvoice.model_validate(response.json())

    def create_return_order(self, request: ReturnOrderRequest, *, idempotency_key: str) -> Booking:
        response = self._write("/api/v1/return-orders", "create_return_order", request.to_json_dict(), idempotency_key)
        return Booking(ReturnOrder.model_validate(response.json()), replayed=response.status_code == 200)

    def request_credit_note(self, invoice_number: str, order_code: str, reason: str, *, idempotency_key: str) -> Booking:
        body = {"invoiceNumber": invoice_number, "orderCode": order_code, "reason": reason}
        response = self._write("/api/v1/credit-notes", "request_credit_note", body, idempotency_key)
        return Booking(response.json(), replayed=response.status_code == 200)

    def credit_notes_since(self, cursor: int, *, limit: int = 100) -> CreditNotePage:
        response = self.call(
            "GET", "/api/v1/credit-notes", operation="list_credit_notes", params={"since": cursor, "limit": limit}
        )
        return CreditNotePage.model_validate(response.json())

    def download_pdf(self, url: str, *, key: str) -> bytes:
        """Download a PDF from the ERP's own host only: the hook authenticates every call, so the token
        must never be sent to another host.

        :raises PayloadError: the URL is on another host, or the answer is not a PDF.
        """
        from urllib.parse import urlsplit

        base, target = urlsplit(self.url_from_endpoint("")), urlsplit(url)
        base_path = base.path.rstrip("/")
        if (target.scheme, target.netloc) != (base.scheme, base.netloc) or not target.path.startswith(base_path):
            raise PayloadError(f"pdfUrl is not on the ERP connection's host ({target.netloc}); use document='url'")
        endpoint = target.path[len(base_path) :] + (f"?{target.query}" if target.query else "")
        response = self.call("GET", endpoint, operation="download_pdf", idempotency_key=key)
        if not response.content.startswith(b"%PDF"):
            raise PayloadError(f"pdfUrl did not return a PDF (content type {response.headers.get('content-type')})")
        return response.content
