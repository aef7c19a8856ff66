"""Which ``ErpAdapter`` talks to the seller's ERP: chosen by the ERP connection's type, not by code (issue 11).

Operators ask ``erp_adapter(conn_id)`` and never name a hook, so adding an ERP means one adapter module (and
its sandbox) plus one line in ``ADAPTERS``; nothing in operators or DAGs changes.

| conn_type of the ERP connection | adapter |
|---|---|
| ``http`` (or ``erp_rest``) | ``omni_erp.hooks.erp.ErpHook`` - the generic REST contract, ``contracts/erp_rest.yaml`` |
| ``erpnext`` | ``omni_erp.hooks.erpnext.ErpNextHook`` - Frappe REST API with India Compliance |
| ``tally`` | ``omni_erp.hooks.tally.TallyHook`` - TallyPrime's XML over HTTP (login = the company) |

Adapters are imported only when chosen, so DAG parsing never pays for them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from omni_erp.connections import get_connection
from omni_erp.hooks.base import ConnectionConfigError

if TYPE_CHECKING:
    from omni_erp.hooks.base import AttemptObserver
    from omni_erp.hooks.erp import ErpAdapter

ADAPTERS: dict[str, str] = {
    "http": "omni_erp.hooks.erp.ErpHook",
    "erp_rest": "omni_erp.hooks.erp.ErpHook",
    "erpnext": "omni_erp.hooks.erpnext.ErpNextHook",
    "tally": "omni_erp.hooks.tally.TallyHook",
}
DEFAULT_CONN_TYPE = "http"


def adapter_path(conn_type: str | None) -> str:
    """Dotted path of the adapter class for a connection type.

    :raises ConnectionConfigError: no adapter is registered for the type (a deployment error, not a data one).
    """
    key = (conn_type or DEFAULT_CONN_TYPE).strip().lower()
    try:
        return ADAPTERS[key]
    except KeyError:
        raise ConnectionConfigError(
            f"no ERP adapter for connection type {conn_type!r}; known types: {', '.join(sorted(ADAPTERS))}"
        ) from None


def erp_adapter(conn_id: str, *, on_attempt: AttemptObserver | None = None) -> ErpAdapter:
    """The adapter the connection ``conn_id`` asks for (the generic REST one when the connection is not
    defined yet: its first call then reports the missing connection as before).

    :param conn_id: the ERP connection.
    :param on_attempt: observer of every HTTP attempt (the ledger records them).
    """
    connection = get_connection(conn_id)
    module_name, _, class_name = adapter_path(connection.conn_type if connection else None).rpartition(".")
    adapter_class = getattr(import_module(module_name), class_name)
    return adapter_class(conn_id, on_attempt=on_attempt)
