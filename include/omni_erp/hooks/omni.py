"""OmniHook: Increff's ajio-vms inbound endpoints (POST B2B invoice, POST credit note), domain.md 3.2-3.3."""

from __future__ import annotations

from typing import Any

from requests.auth import AuthBase

from omni_erp import keys, settings
from omni_erp.hooks.base import AttemptObserver, ConnectionConfigError, RetryingJsonHook, RetryPolicy, is_header_safe
from omni_erp.models.omni import B2BInvoice, CreditNote, OmniErrorBody

B2B_INVOICE_ENDPOINT = "/ajio-vms/b2bInvoice/posting"
CREDIT_NOTE_ENDPOINT = "/ajio-vms/creditNote/posting"


class IncreffHeaderAuth(AuthBase):
    """Increff authenticates with ``authUsername`` / ``authPassword`` headers (domain.md 4.2), not Basic auth."""

    def __init__(self, username: str, password: str | None) -> None:
        if not (is_header_safe(username) and is_header_safe(password or "")):
            raise ConnectionConfigError("Increff's authUsername/authPassword hold characters an HTTP header cannot carry")
        self.username = username
        self.password = password or ""

    def __call__(self, request: Any) -> Any:
        request.headers["authUsername"] = self.username
        request.headers["authPassword"] = self.password
        return request

    def __repr__(self) -> str:  # never show the password
        return f"IncreffHeaderAuth(username={self.username!r})"


class OmniHook(RetryingJsonHook):
    """Calls Increff Omni's ajio-vms endpoints.

    The connection (``omni_default``, conn type http) holds the base URL in host/port/schema and the
    credentials Increff issued in login/password.

    :param omni_conn_id: Airflow connection id.
    :param retry_policy: attempts, backoff and timeouts (defaults suit production).
    :param on_attempt: observer called after every HTTP attempt (the operators record it in the ledger).
    """

    conn_name_attr = "omni_conn_id"
    default_conn_name = settings.OMNI_CONN_ID
    conn_type = "omni"  # registered by omni_erp.provider; connections of type http work the same
    hook_name = "Increff Omni (Ajio VMS)"
    system = "omni"

    def __init__(
        self,
        omni_conn_id: str = settings.OMNI_CONN_ID,
        *,
        retry_policy: RetryPolicy | None = None,
        on_attempt: AttemptObserver | None = None,
    ) -> None:
        super().__init__(omni_conn_id, retry_policy=retry_policy, on_attempt=on_attempt)
        self.omni_conn_id = omni_conn_id

    def _extract_auth(self, connection: Any) -> Any:
        if not connection.login:
            raise ConnectionConfigError(f"connection {self.omni_conn_id!r} needs Increff's authUsername in 'login'")
        return IncreffHeaderAuth(connection.login, connection.password)

    def error_message(self, response: Any) -> tuple[str | None, str]:
        try:
            body = OmniErrorBody.model_validate(response.json())
        except ValueError:
            return None, (response.text or response.reason or "")[:500]
        return body.code, " - ".join(p for p in (body.message, body.description) if p) or body.text()

    def test_connection(self) -> tuple[bool, str]:
        """The connection form's "Test": POST an empty JSON object to the B2B invoice endpoint.

        Increff has no read-only endpoint for a vendor, so the probe is a document Omni can only refuse:
        400 (validation) proves the URL and the credentials were accepted, 401/403 that they were not.
        Nothing is created in Omni.
        """
        from omni_erp.hooks.probe import probe

        return probe(
            self,
            "Increff Omni",
            lambda: self.call("POST", B2B_INVOICE_ENDPOINT, operation="test_connection", json={}),
            ok_message="Increff Omni accepted the credentials (the empty probe document was refused, as expected)",
            accepted_statuses=(400, 422),
        )

    def post_b2b_invoice(self, invoice: B2BInvoice) -> None:
        """Upload one B2B invoice; the log/ledger key names the invoice number (``keys.omni_invoice``)."""
        self.call(
            "POST",
            B2B_INVOICE_ENDPOINT,
            operation="post_b2b_invoice",
            json=invoice.to_json_dict(),
            idempotency_key=keys.omni_invoice(invoice.invoice_number),
        )

    def post_credit_note(self, credit_note: CreditNote) -> None:
        """Upload one credit note; the log/ledger key names the credit note number (``keys.omni_credit_note``)."""
        self.call(
            "POST",
            CREDIT_NOTE_ENDPOINT,
            operation="post_credit_note",
            json=credit_note.to_json_dict(),
            idempotency_key=keys.omni_credit_note(credit_note.credit_note_number),
        )
