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
EVENT_PARTIAL_CANCEL = "OUTWARD_ORDER_PARTIAL_CANCEL"
EVENT_SHIPMENT_DISPATCH = "OUTWARD_ORDER_SHIPMENT_DISPATCH"
EVENT_SHIPMENT_DELIVER = "OUTWARD_ORDER_SHIPMENT_DELIVER"
EVENT_RETURN_CREATE = "RETURN_ORDER_CREATE"
EVENT_RETURN_UPDATE = "RETURN_ORDER_UPDATE"
EVENT_RETURN_CANCEL = "RETURN_ORDER_CANCEL"
EVENT_RETURN_PARTIAL_CANCEL = "RETURN_ORDER_PARTIAL_CANCEL"
# Documented by Increff, stored but not processed for Ajio (only full cancellations are sent;
# dispatch/deliver are not needed; a return is booked once it is processed, RETURN_ORDER_COMPLETE).
IGNORED_OUTWARD_EVENTS = frozenset({EVENT_PARTIAL_CANCEL, EVENT_SHIPMENT_DISPATCH, EVENT_SHIPMENT_DELIVER})
IGNORED_RETURN_EVENTS = frozenset(
    {EVENT_RETURN_CREATE, EVENT_RETURN_UPDATE, EVENT_RETURN_CANCEL, EVENT_RETURN_PARTIAL_CANCEL}
)
IGNORED_EVENTS = IGNORED_OUTWARD_EVENTS | IGNORED_RETURN_EVENTS
# Every event type the inbox accepts; anything else is answered 400 so Omni's message log shows it failed.
OUTWARD_EVENTS = frozenset({EVENT_CREATE, EVENT_CANCEL, EVENT_COMPLETE}) | IGNORED_OUTWARD_EVENTS
RETURN_EVENTS = frozenset({EVENT_RETURN}) | IGNORED_RETURN_EVENTS
KNOWN_EVENTS = OUTWARD_EVENTS | RETURN_EVENTS

DEFAULT_PO_PATH = "orderCustomAttributes.attribute1"  # domain.md decision 3
MAX_STRING_LENGTH = 255                                # Increff's documented limit
DEFAULT_MAX_LINE_QUANTITY = 100_000                    # units per posting line; more is refused at the inbox
MAX_LINE_QUANTITY_ENV = "OMNI_ERP_MAX_LINE_QUANTITY"


def po_number_path() -> str:
    """Dotted path of the Ajio PO number inside a CREATE posting."""
    return os.environ.get("OMNI_ERP_PO_PATH", DEFAULT_PO_PATH)


def max_line_quantity() -> int:
    """Largest quantity one posting line may carry (``$OMNI_ERP_MAX_LINE_QUANTITY``, default 100,000).

    :raises ValueError: when the variable is set to anything but a positive integer (a deployment error).
    """
    return _positive_int(MAX_LINE_QUANTITY_ENV, DEFAULT_MAX_LINE_QUANTITY)


MAX_ITEM_ATTEMPTS_ENV = "OMNI_ERP_MAX_ITEM_ATTEMPTS"
DEFAULT_MAX_ITEM_ATTEMPTS = 3


def max_item_attempts() -> int:
    """How often an item may fail unexpectedly before it is dead-lettered (``$OMNI_ERP_MAX_ITEM_ATTEMPTS``, default 3).

    :raises ValueError: when the variable is set to anything but a positive integer (a deployment error).
    """
    return _positive_int(MAX_ITEM_ATTEMPTS_ENV, DEFAULT_MAX_ITEM_ATTEMPTS)


def _positive_int(name: str, default: int) -> int:
    """``$name`` as a positive integer, ``default`` when unset; anything else is a deployment error."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isascii() or not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name} must be a positive integer, not {raw!r}")
    return int(raw)


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


# --- credit-note path (issue 12): the ERP raises return credit notes (F6), or Increff RMS does ----------
CREDIT_NOTE_PATH_ENV = "OMNI_ERP_CREDIT_NOTE_PATH"
CREDIT_NOTE_PATH_ERP = "erp"   # the ERP raises the e-credit note; F6 uploads it to Omni
CREDIT_NOTE_PATH_RMS = "rms"   # the ERP books the return only; RMS raises the e-credit note from our report
CREDIT_NOTE_PATHS = (CREDIT_NOTE_PATH_ERP, CREDIT_NOTE_PATH_RMS)
RMS_REPORT_DIR_ENV = "OMNI_ERP_RMS_REPORT_DIR"
RMS_REPORT_CONN_ENV = "OMNI_ERP_RMS_REPORT_CONN_ID"


def credit_note_path(override: str | None = None) -> str:
    """Who raises the e-credit notes of returns: ``erp`` (default) or ``rms`` (``$OMNI_ERP_CREDIT_NOTE_PATH``).

    :param override: a run's choice (the DAG's ``credit_note_path`` param); empty means the setting.
    :raises ValueError: for any other value (a deployment error: never guessed, as it decides who credits Ajio).
    """
    raw = (override or "").strip().lower() or os.environ.get(CREDIT_NOTE_PATH_ENV, "").strip().lower()
    if not raw:
        return CREDIT_NOTE_PATH_ERP
    if raw not in CREDIT_NOTE_PATHS:
        raise ValueError(f"{CREDIT_NOTE_PATH_ENV} must be one of {', '.join(CREDIT_NOTE_PATHS)}, not {raw!r}")
    return raw


def rms_report_dir() -> str:
    """Folder of the RMS returns reports (``$OMNI_ERP_RMS_REPORT_DIR``): a local path, or an object storage
    URL (``s3://bucket/rms``, ``gs://...``, ``file:///...``) opened as an ``ObjectStoragePath``; default
    ``$AIRFLOW_HOME/rms_reports``."""
    explicit = os.environ.get(RMS_REPORT_DIR_ENV, "").strip()
    if explicit:
        return explicit
    return str(Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow")) / "rms_reports")


def rms_report_conn_id() -> str | None:
    """Airflow connection of the object store holding RMS reports (``$OMNI_ERP_RMS_REPORT_CONN_ID``), if any."""
    return os.environ.get(RMS_REPORT_CONN_ENV, "").strip() or None
