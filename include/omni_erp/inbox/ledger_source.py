"""The inbox's ledger, re-resolved from its configuration every few seconds so it follows the DAGs.

A long-running API server must not keep writing to a ledger the configuration no longer names (issue
7.1: after ``airflow connections add omni_erp_ledger ...`` the inbox kept storing into the old SQLite
file while the DAGs read PostgreSQL). So the connection is re-read at most every ``recheck_s`` seconds;
when the resolved URL changed the inbox switches, logging a WARNING with both ledgers' identities. A
posting can still reach the old ledger during that window, never later. When the configuration cannot
be read, or the newly named ledger cannot be opened, ``get`` raises and the inbox answers 503 (Omni
retries) rather than store into a ledger it cannot show to be the configured one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from omni_erp.ledger import Ledger
from omni_erp.ledger.engine import LedgerLocation, describe_ledger, locate_ledger, warn_embedded

log = logging.getLogger(__name__)

DEFAULT_RECHECK_S = 5.0
EMBEDDED_WARNING = (
    "no ledger connection is defined: postings go to the embedded SQLite file of this host, which "
    "DAGs on other hosts cannot see; define the ledger connection"
)


class CurrentLedger:
    """The ledger the configuration names now, opened lazily and followed when it changes.

    :param source: a fixed SQLAlchemy URL (never re-resolved), a zero-argument callable returning one
        (called again at every re-check), or None for connection ``conn_id``.
    :param conn_id: the ledger connection, used when ``source`` is None.
    :param recheck_s: re-resolve at most this often (seconds); 0 re-resolves on every use.
    :param lookup: connection lookup ``conn_id -> connection or None``; default ``omni_erp.connections.get_connection``.
    :param clock: monotonic clock, injectable for tests.
    """

    def __init__(
        self,
        source: str | Callable[[], str] | None,
        conn_id: str,
        *,
        recheck_s: float = DEFAULT_RECHECK_S,
        lookup: Callable[[str], Any | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._conn_id = conn_id
        self._recheck_s = recheck_s
        self._lookup = lookup
        self._clock = clock
        self._lock = threading.Lock()
        self._ledger: Ledger | None = None
        self._location: LedgerLocation | None = None
        self._identity: str | None = None
        self._checked_at = 0.0

    def get(self) -> Ledger:
        """The current ledger; raises when the configuration cannot be read or the ledger not opened."""
        with self._lock:
            if self._ledger is not None and self._is_fresh():
                return self._ledger
            location = self._locate()
            if self._ledger is None or self._location is None or location.url != self._location.url:
                self._switch_to(location)
            self._checked_at = self._clock()
            assert self._ledger is not None
            return self._ledger

    def describe(self) -> dict[str, Any]:
        """What the authenticated health answer shows: backend, identity, schema version, where, fallback."""
        ledger = self.get()
        location = self._location
        facts = describe_ledger(ledger.engine)
        details: dict[str, Any] = {
            "backend": facts["backend"],
            "identity": facts["identity"],
            "schemaVersion": facts["schema_version"],
            "location": location.display if location else None,
            "embeddedFallback": bool(location and location.embedded),
        }
        if details["embeddedFallback"]:
            details["warning"] = EMBEDDED_WARNING
        return details

    def _is_fresh(self) -> bool:
        return isinstance(self._source, str) or self._clock() - self._checked_at < self._recheck_s

    def _locate(self) -> LedgerLocation:
        source = self._source
        if source is None:
            return locate_ledger(self._conn_id, lookup=self._lookup)
        return LedgerLocation(source() if callable(source) else source)

    def _switch_to(self, location: LedgerLocation) -> None:
        ledger = Ledger(location.url)  # opens and migrates; raises before anything switches
        identity = ledger.identity
        if location.embedded:
            warn_embedded(location, self._conn_id)
        if self._location is None:
            log.info("inbox: storing postings in ledger %s (%s, identity %s)", location.display, ledger.backend, identity)
        elif identity == self._identity:
            log.info("inbox: ledger connection changed, same ledger (identity %s) at %s", identity, location.display)
        else:
            log.warning(
                "inbox: ledger configuration changed: postings now go to %s (%s, identity %s), no longer to %s "
                "(identity %s)",
                location.display,
                ledger.backend,
                identity,
                self._location.display,
                self._identity,
            )
        self._ledger, self._location, self._identity = ledger, location, identity
