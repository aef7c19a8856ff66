"""The ``omni_inbox`` connection type: what Omni must present to our inbox (it is called, it calls nothing).

The inbox reads the connection itself (``omni_erp.inbox.auth``); this hook exists so the connection type
has a labelled form in the UI and a "Test" that checks the configuration the inbox will apply.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook

from omni_erp import settings


class OmniInboxHook(BaseHook):
    """Credentials Omni uses to post to ``/omni/postings``: a static API key (password) and/or Increff's
    dynamic flow (extras ``credential_username``, ``credential_password``, ``token_secret``, ``token_lifetime_s``).

    :param omni_inbox_conn_id: Airflow connection id.
    """

    conn_name_attr = "omni_inbox_conn_id"
    default_conn_name = settings.INBOX_CONN_ID
    conn_type = "omni_inbox"
    hook_name = "Omni inbox (credentials Omni sends us)"

    def __init__(self, omni_inbox_conn_id: str = settings.INBOX_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.omni_inbox_conn_id = omni_inbox_conn_id

    def get_conn(self) -> Any:
        return self.get_connection(self.omni_inbox_conn_id)

    def test_connection(self) -> tuple[bool, str]:
        """Check what the inbox would do with this connection; names keys, never values."""
        from omni_erp.inbox.credentials import MIN_SECRET_LENGTH, DynamicCredentials

        try:
            connection = self.get_conn()
        except Exception as exc:  # noqa: BLE001 - the form shows why
            return False, f"connection not found or unreadable: {type(exc).__name__}"
        try:
            dynamic = DynamicCredentials.from_extra(connection.extra_dejson or {})
        except ValueError as exc:
            return False, f"the dynamic flow is misconfigured: {exc}"
        api_key = connection.password or ""
        if not api_key and dynamic is None:
            return False, "nothing configured: set the API key (password) or the dynamic flow; the inbox refuses every posting"
        parts = []
        if api_key:
            advice = "" if len(api_key) >= MIN_SECRET_LENGTH else f"; a random key of {MIN_SECRET_LENGTH}+ characters is safer"
            parts.append(f"static API key set ({len(api_key)} characters, sent by Omni in X-Api-Key{advice})")
        if dynamic is not None:
            parts.append(f"dynamic flow on (tokens live {dynamic.lifetime_s} s)")
        return True, "; ".join(parts)
