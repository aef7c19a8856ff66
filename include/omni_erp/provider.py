"""Airflow provider metadata of this package: the connection types, with labelled forms and a "Test" each.

Registered through the ``apache_airflow_provider`` entry point in ``pyproject.toml``, so installing the
package (``make venv`` does ``uv pip install --no-deps -e .``) is enough: ``airflow providers list`` shows
``omni-erp`` and the connection form offers the types below. Airflow 3.2+ reads the form declaratively
(``conn-fields`` and ``ui-field-behaviour``) without importing the hooks; the hooks are imported only to
run ``test_connection``.

| conn type | hook | what it holds |
|---|---|---|
| ``omni`` | ``OmniHook`` | Increff's base URL, authUsername, authPassword |
| ``erp_rest`` | ``ErpHook`` | the generic REST ERP: base URL, API token |
| ``erpnext`` | ``ErpNextHook`` | the ERPNext site, API key, API secret |
| ``tally`` | ``TallyHook`` | the TallyPrime XML server, company, PDF path |
| ``omni_inbox`` | ``OmniInboxHook`` | the API key Omni sends us, Increff's dynamic flow |

The ERP adapter is the connection type (``omni_erp.hooks.adapters``): choosing ``erp_rest``, ``erpnext``
or ``tally`` in the form chooses the adapter and shows that ERP's own fields. Connections of type
``http`` keep working for Omni and the generic ERP.

No field of an HTTP-based type lives in the extra unless the hook removes it before sending (the http
provider sends every extra key as a request header): ``extra`` is hidden on those forms.
"""

from __future__ import annotations

from typing import Any

PACKAGE_NAME = "omni-erp"
HTTP_UNUSED = ["schema", "port", "extra"]  # the URL goes whole in host; extras would become headers


def _connection_type(
    conn_type: str, hook: str, name: str, *, hidden: list[str], labels: dict[str, str], placeholders: dict[str, str],
    fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "connection-type": conn_type,
        "hook-class-name": hook,
        "hook-name": name,
        "ui-field-behaviour": {"hidden-fields": hidden, "relabeling": labels, "placeholders": placeholders},
    }
    if fields:
        entry["conn-fields"] = fields
    return entry


CONNECTION_TYPES: list[dict[str, Any]] = [
    _connection_type(
        "omni", "omni_erp.hooks.omni.OmniHook", "Increff Omni (Ajio VMS)",
        hidden=HTTP_UNUSED,
        labels={"host": "Base URL", "login": "authUsername", "password": "authPassword"},
        placeholders={
            "host": "http://assure-proxy.increff.com (production) or http://staging-oltp.increff.com (staging)",
            "login": "authUsername issued by Increff",
            "password": "authPassword issued by Increff",
        },
    ),
    _connection_type(
        "erp_rest", "omni_erp.hooks.erp.ErpHook", "Seller ERP · generic REST (adapter: generic)",
        hidden=[*HTTP_UNUSED, "login"],
        labels={"host": "Base URL", "password": "API token"},
        placeholders={
            "host": "https://erp.example.com (the API of contracts/erp_rest.yaml)",
            "password": "sent as Authorization: Bearer <token>",
        },
    ),
    _connection_type(
        "erpnext", "omni_erp.hooks.erpnext.ErpNextHook", "Seller ERP · ERPNext (adapter: erpnext)",
        hidden=HTTP_UNUSED,
        labels={"host": "Site URL", "login": "API key", "password": "API secret"},
        placeholders={
            "host": "https://erp.example.com (the Frappe site with India Compliance)",
            "login": "API key of the integration user",
            "password": "API secret of the integration user",
        },
    ),
    _connection_type(
        "tally", "omni_erp.hooks.tally.TallyHook", "Seller ERP · TallyPrime XML (adapter: tally)",
        hidden=["schema", "port", "password", "extra"],
        labels={"host": "Tally XML server URL", "login": "Company"},
        placeholders={
            "host": "http://tally-host:9000",
            "login": "the company loaded in TallyPrime, exactly as named there",
        },
        fields={
            "pdf_path": {
                "label": "PDF path",
                "description": "Path on the Tally host under which the e-invoice PDFs are served "
                "(<document number with / as ->.pdf); empty: no PDF URL is sent to Omni.",
                "schema": {"type": ["string", "null"]},
            },
        },
    ),
    _connection_type(
        "omni_inbox", "omni_erp.hooks.inbox.OmniInboxHook", "Omni inbox (credentials Omni sends us)",
        hidden=["host", "port", "schema", "login", "extra"],
        labels={"password": "API key (X-Api-Key)"},
        placeholders={"password": "the static key configured in Increff for our endpoint; optional with the dynamic flow"},
        fields={
            "credential_username": {
                "label": "Dynamic flow: authUsername",
                "description": "What Omni sends as authUsername to GET /omni/postings (Increff's Get Credential).",
                "schema": {"type": ["string", "null"]},
            },
            "credential_password": {
                "label": "Dynamic flow: authPassword",
                "description": "What Omni sends as authPassword to Get Credential.",
                "schema": {"type": ["string", "null"], "format": "password"},
            },
            "token_secret": {
                "label": "Dynamic flow: token signing secret",
                "description": "At least 32 characters; changing it revokes every token issued.",
                "schema": {"type": ["string", "null"], "format": "password", "minLength": 32},
            },
            "token_lifetime_s": {
                "label": "Dynamic flow: token lifetime (s)",
                "description": "How long a token is accepted; default 900.",
                "schema": {"type": ["integer", "null"], "minimum": 1, "maximum": 86400},
            },
        },
    ),
]


def get_provider_info() -> dict[str, Any]:
    """What Airflow's ProvidersManager reads from the ``apache_airflow_provider`` entry point."""
    return {
        "package-name": PACKAGE_NAME,
        "name": "Omni ⇄ ERP (Ajio B2B)",
        "description": "Seller ERP ⇄ Increff Omni integration: connection types for Omni, the seller's ERP and "
        "the Omni inbox, and the alert notifiers.",
        "connection-types": CONNECTION_TYPES,
        "notifications": ["omni_erp.notifiers.RunFailedNotifier", "omni_erp.notifiers.DeadlineMissedNotifier"],
    }
