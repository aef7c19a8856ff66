"""Names and defaults shared by every layer. Read once here; nothing else hard-codes them.

Values that a deployment may change are read from ``OMNI_ERP_*`` environment variables at call time
(never at import), so DAG files stay free of I/O at parse time.
"""

from __future__ import annotations

import os
from pathlib import Path

# Airflow connection ids.
LEDGER_CONN_ID = "omni_erp_ledger"   # sqlite or postgres; absent -> embedded SQLite file
OMNI_CONN_ID = "omni_default"        # Increff ajio-vms endpoints; login/password -> authUsername/authPassword
ERP_CONN_ID = "erp_default"          # the seller's ERP (generic REST reference adapter)
INBOX_CONN_ID = "omni_inbox"         # password = the static API key Omni sends to our inbox

INBOX_API_KEY_HEADER = "X-Api-Key"

# Event types (domain.md section 3.1 and decision 2).
EVENT_CREATE = "OUTWARD_ORDER_CREATE"
EVENT_CANCEL = "OUTWARD_ORDER_CANCEL"
EVENT_COMPLETE = "OUTWARD_ORDER_COMPLETE"
EVENT_RETURN = "RETURN_ORDER_COMPLETE"
HANDLED_EVENTS = frozenset({EVENT_CREATE, EVENT_CANCEL, EVENT_COMPLETE, EVENT_RETURN})
# Stored but not processed for Ajio (only full cancellations are sent; dispatch/deliver are not needed).
IGNORED_EVENTS = frozenset(
    {"OUTWARD_ORDER_PARTIAL_CANCEL", "OUTWARD_ORDER_SHIPMENT_DISPATCH", "OUTWARD_ORDER_SHIPMENT_DELIVER"}
)

DEFAULT_PO_PATH = "orderCustomAttributes.attribute1"  # domain.md decision 3
MAX_STRING_LENGTH = 255                                # Increff's documented limit


def po_number_path() -> str:
    """Dotted path of the Ajio PO number inside a CREATE posting."""
    return os.environ.get("OMNI_ERP_PO_PATH", DEFAULT_PO_PATH)


def default_ledger_path() -> Path:
    """Embedded SQLite ledger used when no ``omni_erp_ledger`` connection exists.

    ``$OMNI_ERP_LEDGER_PATH`` wins; otherwise a file under ``$AIRFLOW_HOME`` (which the Makefile
    places inside the project), so the default needs nothing installed.
    """
    explicit = os.environ.get("OMNI_ERP_LEDGER_PATH")
    if explicit:
        return Path(explicit)
    home = Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow"))
    return home / "omni_erp_ledger.sqlite"
