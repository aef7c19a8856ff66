"""Event triggers that wake the flows (issue 8.3): they run in the triggerer, behind the assets of ``omni_erp.assets``.

- :class:`LedgerPostingsTrigger` watches the ledger's inbox for pending postings of one event type (what the
  inbox stored for a flow): two index look-ups per poll (``max(id)`` and ``min(id)`` of the pending rows of that
  type, both on ``ix_inbox_message_claim``), on a read-only engine of its own.
- :class:`ErpFeedTrigger` watches the ERP's e-invoice or credit-note feed beyond the ledger's cursor for it
  (``erp_einvoice_seq`` / ``erp_credit_note_seq``, which the F2 / F6 readers advance). Only the ERP knows when it
  has e-invoiced an order, so the trigger must ask it: one feed page from the higher of that cursor and what it
  already announced, through the connection's ERP adapter (an empty page when nothing is new).

Both fire through :class:`Debounce`: a burst of postings or documents starts one run, not one per item, and
nothing fires again without new work. A run that took only part of the work (a batch limit) is followed by one
more event once it has taken its part, so a backlog drains run after run instead of waiting for the cron.

Rules for code here (it runs on the triggerer's event loop, beside every other trigger and deadline callback):
blocking work (the database, HTTP) goes through ``asyncio.to_thread``; connections are read in ``run()``, never
when a DAG file builds the trigger; the constructor keeps only JSON-able settings (``serialize``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from omni_erp import settings

FEEDS = ("einvoices", "credit_notes")
ERROR_LOG_INTERVAL_S = 60.0  # a failing probe is logged at most this often (the ERP or ledger being down is not news each second)


@dataclass(frozen=True)
class Backlog:
    """What a probe saw: the newest and oldest outstanding positions (None, None when nothing is outstanding).

    Positions are the ledger's posting ids or the ERP feed's sequence numbers: they only grow for new items.
    """

    newest: int | None
    oldest: int | None


@dataclass(frozen=True)
class Firing:
    """One decision to wake the flow: ``new`` work beyond what was announced, or the ``rest`` of announced work
    that a run left (it took its batch and stopped)."""

    reason: Literal["new", "rest"]
    newest: int
    oldest: int | None


class Debounce:
    """When to fire, from successive :class:`Backlog` observations (pure: the caller passes the clock).

    - **New work** (``newest`` beyond what was announced) fires once nothing newer arrived for ``quiet_s``, or
      ``max_wait_s`` after it was first seen while items keep arriving; then that position is announced and only
      work beyond it fires again.
    - **The rest**: when work that was announced is still outstanding but its oldest position moved past where it
      was at the last firing (a run took a batch) and stayed there for ``quiet_s``, fire once more for the rest.
      When the oldest position does not move (no run took anything, or a run gave its items back because the ERP
      is down), nothing fires: the cron retries those, a flood of runs would not.

    :param quiet_s: seconds without a newer item before a burst is announced.
    :param max_wait_s: longest wait from the first unannounced item to the firing, however busy the stream.
    """

    def __init__(self, *, quiet_s: float, max_wait_s: float) -> None:
        if quiet_s < 0 or max_wait_s < quiet_s:
            raise ValueError(f"need 0 <= quiet_s <= max_wait_s, got quiet_s={quiet_s}, max_wait_s={max_wait_s}")
        self.quiet_s, self.max_wait_s = quiet_s, max_wait_s
        self.announced: int | None = None  # newest position announced so far
        self.oldest_at_firing: int | None = None
        self._first_unannounced_at: float | None = None
        self._newest_seen: int | None = None
        self._newest_changed_at = 0.0
        self._oldest_seen: int | None = None
        self._oldest_changed_at = 0.0

    def observe(self, at: float, backlog: Backlog) -> Firing | None:
        """Take one observation made at monotonic time ``at``; return the firing it causes, if any."""
        newest, oldest = backlog.newest, backlog.oldest
        if newest != self._newest_seen:
            self._newest_seen, self._newest_changed_at = newest, at
        if oldest != self._oldest_seen:
            self._oldest_seen, self._oldest_changed_at = oldest, at
        if newest is None:
            self._first_unannounced_at = None
            return None
        if self.announced is None or newest > self.announced:
            if self._first_unannounced_at is None:
                self._first_unannounced_at = at
            quiet = at - self._newest_changed_at >= self.quiet_s
            waited_enough = at - self._first_unannounced_at >= self.max_wait_s
            if quiet or waited_enough:
                return self._fire("new", newest, oldest)
            return None
        self._first_unannounced_at = None
        progressed = oldest is not None and self.oldest_at_firing is not None and oldest > self.oldest_at_firing
        if progressed and at - self._oldest_changed_at >= self.quiet_s:
            return self._fire("rest", newest, oldest)
        return None

    def _fire(self, reason: Literal["new", "rest"], newest: int, oldest: int | None) -> Firing:
        self.announced = newest if self.announced is None else max(self.announced, newest)
        self.oldest_at_firing = oldest
        self._first_unannounced_at = None
        return Firing(reason, newest, oldest)


class _PollingTrigger(BaseEventTrigger):
    """A poll loop around ``_probe`` (blocking, run in a worker thread) and a :class:`Debounce`."""

    def __init__(self, *, poll_interval_s: float, quiet_s: float, max_wait_s: float) -> None:
        super().__init__()
        if poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s must be positive, got {poll_interval_s}")
        self.poll_interval_s = poll_interval_s
        self.quiet_s = quiet_s
        self.max_wait_s = max_wait_s
        Debounce(quiet_s=quiet_s, max_wait_s=max_wait_s)  # validate the timings where the DAG file builds us

    @property
    def watching(self) -> str:
        raise NotImplementedError

    def _probe(self, announced: int | None) -> Backlog:
        """Look (blocking) at what is outstanding; ``announced`` is the newest position already announced."""
        raise NotImplementedError

    def _close(self) -> None:
        """Release what ``_probe`` opened (called in a worker thread when the loop ends)."""

    async def run(self) -> AsyncIterator[TriggerEvent]:
        debounce = Debounce(quiet_s=self.quiet_s, max_wait_s=self.max_wait_s)
        errors = _RateLimitedLog(self.log, self.watching)
        try:
            while True:
                try:
                    backlog = await asyncio.to_thread(self._probe, debounce.announced)
                except Exception as exc:  # noqa: BLE001 - a probe failure must never end the watcher; next poll retries
                    errors.warning(exc)
                else:
                    errors.recovered()
                    firing = debounce.observe(time.monotonic(), backlog)
                    if firing is not None:
                        self.log.info(
                            "%s: %s work up to %s (oldest outstanding %s): waking the flow",
                            self.watching, firing.reason, firing.newest, firing.oldest,
                        )
                        yield TriggerEvent(
                            {
                                "watching": self.watching,
                                "reason": firing.reason,
                                "newest": firing.newest,
                                "oldest": firing.oldest,
                                "fired_at": datetime.now(UTC).isoformat(),
                            }
                        )
                await asyncio.sleep(self.poll_interval_s)
        finally:
            await asyncio.to_thread(self._close)


class LedgerPostingsTrigger(_PollingTrigger):
    """Fires when the ledger's inbox holds new pending postings of ``event_type`` (debounced, see :class:`Debounce`).

    "New" means a pending id above the highest one announced. On PostgreSQL a posting whose transaction commits
    after a higher id was already seen (two inbox writers racing) is usually taken by the run that event starts,
    which begins seconds later; if not, the cron run takes it.

    :param event_type: the posting event type a flow claims (e.g. ``OUTWARD_ORDER_CREATE`` for F1).
    :param ledger_conn_id: the ledger connection (read when the trigger runs; embedded SQLite when undefined,
        exactly as the flows resolve it).
    :param poll_interval_s: seconds between two looks at the ledger.
    :param quiet_s: see :class:`Debounce`.
    :param max_wait_s: see :class:`Debounce`.
    """

    def __init__(
        self,
        *,
        event_type: str,
        ledger_conn_id: str = settings.LEDGER_CONN_ID,
        poll_interval_s: float = 1.0,
        quiet_s: float = 1.0,
        max_wait_s: float = 5.0,
    ) -> None:
        super().__init__(poll_interval_s=poll_interval_s, quiet_s=quiet_s, max_wait_s=max_wait_s)
        if event_type not in settings.HANDLED_EVENTS:
            raise ValueError(f"event_type must be one of {sorted(settings.HANDLED_EVENTS)}, not {event_type!r}")
        self.event_type = event_type
        self.ledger_conn_id = ledger_conn_id
        self._probe_ledger: _LedgerProbe | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "event_type": self.event_type,
                "ledger_conn_id": self.ledger_conn_id,
                "poll_interval_s": self.poll_interval_s,
                "quiet_s": self.quiet_s,
                "max_wait_s": self.max_wait_s,
            },
        )

    @property
    def watching(self) -> str:
        return f"ledger postings {self.event_type}"

    def _probe(self, announced: int | None) -> Backlog:
        if self._probe_ledger is None:
            self._probe_ledger = _LedgerProbe.for_conn_id(self.ledger_conn_id)
        return self._probe_ledger.pending_postings(self.event_type)

    def _close(self) -> None:
        if self._probe_ledger is not None:
            self._probe_ledger.close()
            self._probe_ledger = None


class ErpFeedTrigger(_PollingTrigger):
    """Fires when the ERP's ``feed`` holds documents beyond the ledger's cursor ``cursor_name`` (debounced).

    :param feed: ``einvoices`` (F2) or ``credit_notes`` (F6).
    :param cursor_name: the ledger cursor the feed's reader advances (``erp_einvoice_seq``, ``erp_credit_note_seq``).
    :param erp_conn_id: the ERP connection; its type picks the adapter, as for the flows.
    :param ledger_conn_id: the ledger connection.
    :param page_size: documents asked for per look (the position of the last one is taken as the feed's head).
    :param poll_interval_s: seconds between two looks at the ERP.
    :param quiet_s: see :class:`Debounce`.
    :param max_wait_s: see :class:`Debounce`.
    """

    def __init__(
        self,
        *,
        feed: str,
        cursor_name: str,
        erp_conn_id: str = settings.ERP_CONN_ID,
        ledger_conn_id: str = settings.LEDGER_CONN_ID,
        page_size: int = 100,
        poll_interval_s: float = 2.0,
        quiet_s: float = 2.0,
        max_wait_s: float = 6.0,
    ) -> None:
        super().__init__(poll_interval_s=poll_interval_s, quiet_s=quiet_s, max_wait_s=max_wait_s)
        if feed not in FEEDS:
            raise ValueError(f"feed must be one of {FEEDS}, not {feed!r}")
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        self.feed = feed
        self.cursor_name = cursor_name
        self.erp_conn_id = erp_conn_id
        self.ledger_conn_id = ledger_conn_id
        self.page_size = page_size
        self._probe_ledger: _LedgerProbe | None = None
        self._adapter: Any = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "feed": self.feed,
                "cursor_name": self.cursor_name,
                "erp_conn_id": self.erp_conn_id,
                "ledger_conn_id": self.ledger_conn_id,
                "page_size": self.page_size,
                "poll_interval_s": self.poll_interval_s,
                "quiet_s": self.quiet_s,
                "max_wait_s": self.max_wait_s,
            },
        )

    @property
    def watching(self) -> str:
        return f"ERP {self.feed} feed"

    def _probe(self, announced: int | None) -> Backlog:
        if self._probe_ledger is None:
            self._probe_ledger = _LedgerProbe.for_conn_id(self.ledger_conn_id)
        if self._adapter is None:
            from omni_erp.hooks.adapters import erp_adapter

            self._adapter = erp_adapter(self.erp_conn_id)
        cursor = self._probe_ledger.cursor(self.cursor_name)
        since = cursor if announced is None else max(cursor, announced)
        read: Callable[..., Any] = getattr(self._adapter, f"{self.feed}_since")
        try:
            page = read(since, limit=self.page_size)
        except Exception:
            self._adapter = None  # the connection may have changed: build the adapter afresh next time
            raise
        head = page.next_cursor if page.items and page.next_cursor > since else since
        return Backlog(newest=head, oldest=cursor + 1) if head > cursor else Backlog(None, None)

    def _close(self) -> None:
        if self._probe_ledger is not None:
            self._probe_ledger.close()
            self._probe_ledger = None
        self._adapter = None


class _LedgerProbe:
    """Read-only looks at the ledger on an engine of its own.

    Not the flows' engine (``omni_erp.ledger.engine.get_engine``): that one opens every SQLite transaction with
    ``BEGIN IMMEDIATE`` (the write lock) and migrates the schema; a watcher only reads, so it must never hold up
    the inbox's writer, and it must not create the ledger - before the first posting it sees no tables and
    reports nothing outstanding.
    """

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        if url.startswith("sqlite"):
            # A connection per look: cheap for a local file, and no snapshot is held between looks.
            self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"timeout": 5})
        else:
            self.engine = sa.create_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=True, pool_recycle=300)

    @classmethod
    def for_conn_id(cls, conn_id: str) -> _LedgerProbe:
        from omni_erp.ledger.engine import locate_ledger

        return cls(locate_ledger(conn_id).url)

    def pending_postings(self, event_type: str) -> Backlog:
        import sqlalchemy as sa

        from omni_erp.ledger.tables import inbox_message as m
        from omni_erp.states import PENDING

        pending = sa.and_(m.c.state == PENDING, m.c.event_type == event_type)
        # Two scalar subqueries, so each is one look-up at an end of the (state, event_type, id) index.
        newest = sa.select(sa.func.max(m.c.id)).where(pending).scalar_subquery()
        oldest = sa.select(sa.func.min(m.c.id)).where(pending).scalar_subquery()
        row = self._read(sa.select(newest, oldest))
        return Backlog(None, None) if row is None or row[0] is None else Backlog(row[0], row[1])

    def cursor(self, name: str) -> int:
        import sqlalchemy as sa

        from omni_erp.ledger.tables import sync_cursor

        row = self._read(sa.select(sync_cursor.c.value).where(sync_cursor.c.name == name))
        return int(row[0]) if row is not None and row[0] is not None else 0

    def _read(self, statement: Any) -> Any:
        import sqlalchemy as sa

        try:
            with self.engine.connect() as conn:
                return conn.execute(statement).first()
        except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
            if _no_such_table(exc):
                return None  # the ledger is not created yet: nothing is outstanding
            raise

    def close(self) -> None:
        self.engine.dispose()


def _no_such_table(exc: Exception) -> bool:
    text = str(exc).lower()
    return "no such table" in text or ("relation" in text and "does not exist" in text)


class _RateLimitedLog:
    """Warn about a failing probe once a minute, with the first error, and say when it recovers."""

    def __init__(self, logger: Any, watching: str) -> None:
        self.logger, self.watching = logger, watching
        self._last_warned: float | None = None
        self._failures = 0

    def warning(self, exc: Exception) -> None:
        self._failures += 1
        at = time.monotonic()
        if self._last_warned is None or at - self._last_warned >= ERROR_LOG_INTERVAL_S:
            self._last_warned = at
            self.logger.warning("%s: look failed (%d in a row), retrying: %s", self.watching, self._failures, exc)

    def recovered(self) -> None:
        if self._failures:
            self.logger.info("%s: looking again after %d failures", self.watching, self._failures)
        self._failures, self._last_warned = 0, None
