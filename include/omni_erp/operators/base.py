"""What every omni_erp operator shares: the ledger, the batch id, and recording HTTP attempts."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.sdk import BaseOperator

from omni_erp import settings
from omni_erp.exceptions import RemoteUnavailableError
from omni_erp.run_scope import RunScope
from omni_erp.states import STAGE_CANCELLATION, STAGE_COMPLETION, STAGE_ORDER_POSTING, STAGE_RETURN
from omni_erp.timeutil import now

if TYPE_CHECKING:
    from omni_erp.hooks.base import Attempt
    from omni_erp.hooks.erp import ErpAdapter
    from omni_erp.ledger import Ledger
    from omni_erp.ledger.repo import ClaimedPosting

Item = TypeVar("Item")

# One batch per DAG run: a retried task re-reads the same batch instead of claiming a new one.
DEFAULT_BATCH_ID = "{{ dag.dag_id }}/{{ run_id }}"

# How long a claim protects its postings unless the batch's owner renews it (Ledger.renew_lease).
# A live run renews before each posting it handles and after each HTTP attempt, at most once per
# tenth of the lease, so the longest time between two renewals is that tenth (30 s) plus one HTTP
# attempt (connect 5 s + read 30 s) plus the backoff before it (at most 30 s, Retry-After included):
# about 95 s with the hooks' defaults (hooks/base.py RetryPolicy), a third of the lease. Renewing only
# between postings would not do: one call can take 5 attempts x 35 s + 4 waits x 30 s = ~5 minutes, and
# an item may make several calls (F3 cancels the IRN, then the sales order). Between two tasks of a
# run nothing renews; 5 minutes also covers the scheduler's gap and Airflow's retry delay (1-2 min).
# A dead run's postings are free 5 minutes after its last renewal, so a run at most 5 minutes later
# (F1 runs every 5) books them about 10 minutes late, inside F1's 15-minute SLA, instead of 30+.
# Where the lease lapses anyway (a task waits longer), nothing breaks: every write applies only while
# the batch still holds the posting, and ERP calls carry idempotency keys. Raise it along with the
# OMNI_ERP_HTTP_* timeouts (the claim task warns when it is too short for them).
DEFAULT_LEASE_MINUTES = 5.0

# Requests in flight per task and remote system (the DAG param ``max_in_flight``; dag_conventions.params).
# 8 keeps a 50 ms ERP at 160 orders/s while staying polite to an ERP whose limit we do not know; the
# AdaptiveLimiter backs off below it when the ERP answers 429.
DEFAULT_MAX_IN_FLIGHT = 8
MAX_IN_FLIGHT_RANGE = (1, 64)
# While process_each runs, HTTP attempts are written to outbound_call this many at a time, or after
# this long, whichever comes first (one INSERT per page instead of one transaction per attempt).
ATTEMPT_PAGE_ROWS = 64
ATTEMPT_PAGE_S = 1.0


# Outcomes process_each gives items itself, and the outcomes that make a run red.
DEFERRED = "deferred"
DEAD_LETTER = "dead_letter"
FAILED = "failed"  # even recording the problem failed; the item stays claimed until the run ends
FAILED_OUTCOMES = frozenset({DEFERRED, DEAD_LETTER, FAILED, "rejected_by_erp", "upload_failed"})
_MAX_ERROR_TEXT = 1000
# dead_letter.stage of a posting, by event type
STAGES = {
    settings.EVENT_CREATE: STAGE_ORDER_POSTING,
    settings.EVENT_CANCEL: STAGE_CANCELLATION,
    settings.EVENT_COMPLETE: STAGE_COMPLETION,
    settings.EVENT_RETURN: STAGE_RETURN,
}


def _error_text(exc: BaseException) -> str:
    """``Type: message`` on one line, cut short, without control characters (it goes to the ledger and logs)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)[:_MAX_ERROR_TEXT]


def _describe(item: Any) -> str:
    """A short, log-safe name for an item: ``posting 12 ('FN…')`` or the item's repr."""
    message_id = getattr(item, "message_id", None)
    if message_id is not None:
        return f"posting {message_id} ({getattr(item, 'business_key', '')!r})"
    return repr(item)[:120]


def _serial_key(item: Any) -> Any:
    """Items with the same key are handled one after the other: a posting's order, else the item itself."""
    order_code = getattr(item, "order_code", None)
    return ("order", order_code) if order_code else ("item", item if isinstance(item, (str, int)) else id(item))


def not_about_the_item(exc: BaseException) -> bool:
    """True for failures that are not the item's fault and must fail the task: the ledger is unreachable,
    a connection is missing or misconfigured (Airflow exceptions), or the task is being stopped. The one
    rule of every per-item loop: ``process_each`` and the ERP feed readers."""
    from airflow.sdk.exceptions import AirflowException

    return isinstance(exc, AirflowException) or _ledger_unreachable(exc)


def _ledger_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` says the ledger database cannot be reached (down, locked, connection lost)."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeoutError

    if isinstance(exc, (OperationalError, PoolTimeoutError)):  # down, locked, or no pooled connection came free
        return True
    if isinstance(exc, InterfaceError):
        # psycopg's InterfaceError means the connection is gone; sqlite3's means one value could not be bound.
        return type(exc.orig).__module__ != "sqlite3"
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def parse_max_in_flight(value: Any) -> int:
    """``max_in_flight`` as an int in ``MAX_IN_FLIGHT_RANGE``; None or ``""`` means ``DEFAULT_MAX_IN_FLIGHT``.

    :raises ValueError: not a whole number in range (the trigger form checks it too; a templated value may not).
    """
    if value is None or value == "":
        return DEFAULT_MAX_IN_FLIGHT
    low, high = MAX_IN_FLIGHT_RANGE
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError(f"max_in_flight must be a whole number from {low} to {high}, got {value!r}") from None
    if not low <= number <= high:
        raise ValueError(f"max_in_flight must be a whole number from {low} to {high}, got {value!r}")
    return number


@dataclass
class _Tally:
    """What ``process_each`` learned so far; shared by its worker threads, changed under ``lock``."""

    outcomes: Counter[str] = field(default_factory=Counter)
    unavailable_in_a_row: int = 0
    last_outage: str = ""
    first_problem: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)


class GroupCommit:
    """Records the outcomes of several items' remote calls in one ledger transaction (issue 8: CPU per item).

    A worker thread hands its item to ``submit`` once the remote system answered and waits for the item's own
    result. The first worker that finds no commit running commits everything queued until the queue is empty
    (the items that arrived during one commit go in the next), so no thread or timer is added and an item
    never waits longer than one commit before its own. ``record`` is called in the commit's transaction once
    per item and returns that item's result (e.g. whether its compare-and-set applied), so each item is routed
    exactly as with a transaction of its own.

    If a group's transaction raises, nothing of it is recorded and each of its items is recorded again in a
    transaction of its own: one bad item fails only itself (its worker gets the exception), never its neighbours.
    Safe only where a lost group is harmless: a task killed between the remote answer and the commit must find
    the item as before the call, and sending it again must be safe (an idempotency key) or impossible (the
    compare-and-set that took the item comes before the call).
    """

    def __init__(self, ledger: Ledger, record: Callable[[Any], Any]) -> None:
        self.ledger = ledger
        self.record = record
        self._lock = threading.Lock()
        self._queue: list[tuple[Any, Future[Any]]] = []
        self._committing = False
        self.groups = 0  # transactions committed, for tests and the benchmark

    def submit(self, item: Any) -> Any:
        """Record ``item`` (``record(item)`` in a group's transaction) and return what ``record`` returned.

        :raises Exception: what recording this item raised, in its own transaction.
        """
        future: Future[Any] = Future()
        with self._lock:
            self._queue.append((item, future))
            lead = not self._committing
            self._committing = True
        if lead:
            self._commit_queued()
        return future.result()

    def _commit_queued(self) -> None:
        """Commit groups until the queue is empty; then the next ``submit`` leads."""
        group: list[tuple[Any, Future[Any]]] = []
        try:
            while True:
                with self._lock:
                    group, self._queue = self._queue, []
                    if not group:
                        self._committing = False
                        return
                self._commit(group)
                group = []
        except BaseException as exc:  # the task is being stopped: nobody may wait for a commit that never comes
            with self._lock:
                stranded, self._queue, self._committing = group + self._queue, [], False
            for _, future in stranded:
                if not future.done():
                    future.set_exception(exc)
            raise

    def _commit(self, group: list[tuple[Any, Future[Any]]]) -> None:
        if len(group) == 1:
            self._commit_one(*group[0])
            return
        try:
            with self.ledger.transaction():
                results = [self.record(item) for item, _ in group]
        except Exception:
            # An item's fault or the ledger's: nothing of the group was recorded; each on its own tells which.
            for item, future in group:
                self._commit_one(item, future)
            return
        self.groups += 1
        for (_, future), result in zip(group, results, strict=True):
            future.set_result(result)

    def _commit_one(self, item: Any, future: Future[Any]) -> None:
        try:
            with self.ledger.transaction():
                result = self.record(item)
        except Exception as exc:
            future.set_exception(exc)
        else:
            self.groups += 1
            future.set_result(result)


class LedgerOperator(BaseOperator):
    """Base for operators that work on one ledger batch.

    While it works, an operator renews the lease of the postings its batch holds (``renew_lease``), so
    no other run takes them over; a run that died loses them one lease later.

    :param batch_id: ledger batch this run works on (templated); defaults to ``<dag_id>/<run_id>``.
    :param ledger_conn_id: connection of the ledger (sqlite or postgres); embedded SQLite when undefined.
    :param lease_minutes: how long a claim or its renewal protects the batch's postings from other runs
        (see ``DEFAULT_LEASE_MINUTES``); give every task of a flow the same value, e.g. in ``default_args``.
    :param dry_run: log what would be sent and written, send and write nothing (templated; ``run_scope``).
    :param order_codes: only these orders, dead-lettered and rejected ones included (templated: a list, JSON
        list or one code per line).
    :param window: ``"<start>/<end>"`` (ISO 8601): only work received or recorded in it (templated; the DAGs
        pass a backfill run's data interval, nothing otherwise).
    :param limit: the run's batch size (templated; the DAGs pass their ``limit`` param, '' where they have
        none): a dry run selects as many postings as the claim would take (``dry_run_limit``).
    """

    template_fields: tuple[str, ...] = ("batch_id", "dry_run", "order_codes", "window", "limit")
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        batch_id: str = DEFAULT_BATCH_ID,
        ledger_conn_id: str = settings.LEDGER_CONN_ID,
        lease_minutes: float = DEFAULT_LEASE_MINUTES,
        dry_run: bool | str = False,
        order_codes: list[str] | str | None = None,
        window: str | None = None,
        limit: int | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.batch_id = batch_id
        self.limit = limit
        self.ledger_conn_id = ledger_conn_id
        self.lease_minutes = lease_minutes
        self.dry_run = dry_run
        self.order_codes = order_codes
        self.window = window
        self._lease_renewed_at: datetime | None = None
        self._lease_lock = threading.Lock()
        self._attempt_page: list[dict[str, Any]] | None = None  # attempts not written yet, while process_each runs
        self._attempt_lock = threading.Lock()
        self._attempt_page_started = 0.0

    @cached_property
    def scope(self) -> RunScope:
        """This run's ``RunScope`` (from ``dry_run``, ``order_codes``, ``window`` once rendered), logged once.

        :raises ValueError: a value that cannot be understood (the trigger form checks the params first).
        """
        scope = RunScope.parse(dry_run=self.dry_run, order_codes=self.order_codes, window=self.window)
        self.log.info("Scope of this run: %s", scope.describe())
        return scope

    @property
    def lease(self) -> timedelta:
        """``lease_minutes`` as a duration.

        :raises ValueError: when it is not a number of minutes of at least zero.
        """
        minutes = float(self.lease_minutes)
        if not minutes >= 0:  # also refuses NaN
            raise ValueError(f"lease_minutes must be a number of minutes >= 0, got {self.lease_minutes!r}")
        return timedelta(minutes=minutes)

    def renew_lease(self) -> None:
        """Extend the lease of the postings this batch still holds, unless that was done less than a tenth
        of the lease ago (one UPDATE; see ``DEFAULT_LEASE_MINUTES`` for when it is called).

        A ledger that cannot be reached is logged, not raised: the claims stay protected until their lease
        ends, and if the outage lasts, the next ledger write of the work itself fails the task, as any
        ledger outage does.
        """
        if self.scope.dry_run:
            return  # a dry run holds nothing and writes nothing
        lease, at = self.lease, now()
        with self._lease_lock:  # worker threads call it too: one of them renews, the others go on
            last = self._lease_renewed_at
            if last is not None and timedelta(0) <= at - last < lease / 10:
                return
            self._lease_renewed_at = at
        try:
            self.ledger.renew_lease(self.batch_id, lease)
        except Exception as exc:
            if not _ledger_unreachable(exc):
                raise
            self.log.warning(
                "Could not renew the lease of batch %s (ledger unreachable: %s); its claims hold until the lease ends",
                self.batch_id,
                _error_text(exc),
            )

    def postings_of_this_run(self, event_types: list[str], *, shard: int = 0, shards: int = 1) -> Iterable[ClaimedPosting]:
        """The postings this task works on: those its batch holds (streamed a page at a time), or in a dry run,
        where nothing is claimed, the ones a claim would take now (``Ledger.select_postings``, read only)."""
        if not self.scope.dry_run:
            return self.ledger.iter_claimed_postings(self.batch_id, event_types, shard=shard, shards=shards)
        selected = self.ledger.select_postings(
            event_types=event_types, limit=self.dry_run_limit(), order_codes=self.scope.order_codes, window=self.scope.window
        )
        return [p for p in selected if shards == 1 or p.id % shards == shard]

    def dry_run_limit(self) -> int:
        """How many postings a dry run looks at: the run's batch size (``limit``), 500 (the form's default) without one.

        :raises ValueError: a ``limit`` that is not a whole number of at least 1.
        """
        if self.limit is None or str(self.limit).strip() == "":
            return 500
        try:
            limit = int(str(self.limit).strip())
        except ValueError:
            raise ValueError(f"limit must be a whole number of at least 1, got {self.limit!r}") from None
        if limit < 1:
            raise ValueError(f"limit must be a whole number of at least 1, got {self.limit!r}")
        return limit

    def in_flight_limit(self) -> int:
        """How many items ``process_each`` handles at once: one here (ledger-only work gains nothing from
        threads); operators that call remote systems take it from their ``max_in_flight``."""
        return 1

    @cached_property
    def ledger(self) -> Ledger:
        # Imported here, not at module level: DAG files import operators at parse time.
        from omni_erp.ledger import Ledger

        ledger = Ledger.from_conn_id(self.ledger_conn_id)
        # Compare with the inbox's authenticated /omni/health: the same identity means the same ledger.
        self.log.info("Ledger %s, identity %s", ledger.backend, ledger.identity)
        return ledger

    def record_attempt(self, attempt: Attempt) -> None:
        """Observer handed to hooks: every HTTP attempt lands in ``outbound_call`` (no bodies, no secrets).

        While ``process_each`` runs, attempts are written a page at a time (``ATTEMPT_PAGE_ROWS`` or
        ``ATTEMPT_PAGE_S``; ``Ledger.record_calls``) - the audit of calls, not a state change: a task killed
        mid-page loses at most that page's rows, never a booking (idempotency keys and each item's own
        transaction carry exactly-once). Outside it, each attempt is written at once. A dry run records
        nothing, its read-only calls included.
        """
        if self.scope.dry_run:
            return
        row = {
            "system": attempt.system,
            "operation": attempt.operation,
            "endpoint": attempt.endpoint.split("?")[0],
            "attempt": attempt.attempt,
            "status_code": attempt.status_code,
            "latency_ms": attempt.latency_ms,
            "outcome": attempt.outcome,
            "idempotency_key": attempt.idempotency_key,
            "error": attempt.error,
            "batch_id": self.batch_id,
        }
        with self._attempt_lock:
            page = self._attempt_page
            if page is not None:
                page.append({**row, "created_at": now()})
                due = len(page) >= ATTEMPT_PAGE_ROWS or time.monotonic() - self._attempt_page_started >= ATTEMPT_PAGE_S
        if page is None:
            self.ledger.record_call(**row)
        elif due:
            self.flush_attempts()
        # One call can outlast the lease (retries and backoff): renew between its attempts too.
        self.renew_lease()

    def flush_attempts(self) -> None:
        """Write the attempts buffered so far (one transaction)."""
        with self._attempt_lock:
            if not self._attempt_page:
                return
            rows, self._attempt_page = self._attempt_page, []
            self._attempt_page_started = time.monotonic()
        self.ledger.record_calls(rows)

    def defer_posting(self, posting: ClaimedPosting, reason: str) -> None:
        """``process_each``'s ``defer`` for postings: back to the queue with the reason, if this batch still holds it."""
        self.ledger.release_posting(posting.message_id, error=reason, batch_id=self.batch_id)

    def dead_letter_posting(self, posting: ClaimedPosting, reason: str) -> None:
        """``process_each``'s ``give_up`` for postings: dead letter and close, in one transaction."""
        self.ledger.dead_letter_posting(
            posting.message_id,
            stage=STAGES.get(posting.event_type, STAGE_ORDER_POSTING),
            reason=reason,
            business_key=posting.business_key,
            batch_id=self.batch_id,
        )

    def process_each(
        self,
        items: Iterable[Item],
        handle: Callable[[Item], str],
        *,
        defer: Callable[[Item, str], None],
        give_up: Callable[[Item, str], None] | None = None,
        attempts: Callable[[Item], int] | None = None,
        failed_outcomes: Collection[str] = (),
        max_consecutive_unavailable: int = 3,
    ) -> dict[str, Any]:
        """Handle each item on its own: one bad item never stops the batch, nothing is lost, and the run shows red.

        ``handle`` returns the item's outcome; a data problem it recognises it records itself (dead letter)
        and returns an outcome saying so. Everything else is caught at the item boundary:

        - ``RemoteUnavailableError`` (the hook already retried): ``defer`` gives the item back for the next
          run; after ``max_consecutive_unavailable`` such failures in a row the remaining items are
          deferred without calling the remote system again. An outage never dead-letters anything.
        - any other exception: logged with its traceback and deferred with the error text, until the item
          has failed ``settings.max_item_attempts()`` times; then ``give_up`` dead-letters it with the
          reason, so a poison item cannot hold the queue. ``attempts(item)`` says how often the item was
          deferred before (default: its ``attempts`` attribute, e.g. ``ClaimedPosting.attempts``; the
          counter also counts outage deferrals, so the bound errs on the side of a person looking sooner).
        - a ledger outage or an Airflow exception (missing connection, task timeout) is not about the item:
          it fails the task at once; items not started yet are left alone, claimed items keep their lease
          and the report step releases them.

        Up to ``in_flight_limit()`` items are handled at once by a pool of worker threads (operators that
        call the ERP or Omni: the ``max_in_flight`` param); ``items`` is read lazily, at most two items per
        worker ahead, so a generator streaming pages from the ledger is never held in memory whole. Each
        item is still one ``handle`` call whose ledger writes are its own transactions, so per-item
        isolation, idempotency keys and the compare-and-set rules are what they are with one thread. "In a
        row" for ``max_consecutive_unavailable`` is in the order the items finish.

        Before each posting (``ClaimedPosting``) the batch's lease is renewed (``renew_lease``), so a long
        batch keeps its claims; other items (ERP documents) carry no lease.

        Returns the XCom summary (outcome -> count). Raises ``AirflowFailException`` after the loop when
        any item of this run was deferred, dead-lettered or failed (outcomes ``deferred``, ``dead_letter``,
        ``failed``, ``rejected_by_erp``, ``upload_failed`` and any in ``failed_outcomes``), so the run
        shows red and the failure alert fires.

        :param items: the batch, in processing order (any iterable; read lazily).
        :param handle: handles one item and returns its outcome (called from worker threads).
        :param defer: gives an item back to the queue with the reason (must be idempotent).
        :param give_up: dead-letters an item with the reason; without it items are only ever deferred.
        :param attempts: earlier failed attempts of an item.
        :param failed_outcomes: further outcomes of ``handle`` that mean the item needs a person.
        :param max_consecutive_unavailable: stop calling a remote system that failed this many items in a row.
        """
        from airflow.sdk.exceptions import AirflowFailException

        limit = settings.max_item_attempts()
        bad = FAILED_OUTCOMES | frozenset(failed_outcomes)
        tally = _Tally()

        def one(item: Item) -> None:
            if tally.stop.is_set():
                return  # the task is failing: leave the item claimed for the report step to release
            self._process_one(
                item, handle, tally, defer=defer, give_up=give_up, attempts=attempts, limit=limit,
                max_consecutive_unavailable=max_consecutive_unavailable,
            )

        workers = self.in_flight_limit()
        with self._attempt_lock:
            self._attempt_page, self._attempt_page_started = [], time.monotonic()
        try:
            if workers <= 1:
                for item in items:
                    one(item)
            else:
                self._run_pool(items, one, workers, tally.stop)
        except BaseException:
            self._write_last_attempts(failing=True)
            raise
        self._write_last_attempts(failing=False)
        outcomes = tally.outcomes
        summary = {"batch_id": self.batch_id, **{k: outcomes[k] for k in sorted(outcomes)}}
        self.log.info("%s: %s", self.task_id, summary)
        problems = {k: n for k, n in outcomes.items() if k in bad}
        if problems:
            deferred = problems.get(DEFERRED, 0)
            others = sum(problems.values()) - deferred
            parts = [f"{deferred} item(s) deferred"] if deferred else []
            if others:
                parts.append(f"{others} item(s) dead-lettered, rejected or failed")
            last_outage = tally.last_outage
            causes = "; ".join(c for c in (last_outage and f"remote system unavailable: {last_outage}", tally.first_problem) if c)
            raise AirflowFailException(
                f"{' and '.join(parts)} of {sum(outcomes.values())} in this run"
                f"{f' ({causes})' if causes else ''}; deferred items wait for the next run, the others for a person "
                f"(see dead_letter). Summary: {summary}"
            )
        return summary

    def _write_last_attempts(self, *, failing: bool) -> None:
        """End of ``process_each``: write the buffered attempts and go back to writing each at once.

        When the task is failing already, a ledger that cannot take them is logged, not raised, so the
        first error stays the one reported.
        """
        try:
            self.flush_attempts()
        except Exception as exc:
            if not failing:
                raise
            self.log.warning("Could not record the last HTTP attempts of this task: %s", _error_text(exc))
        finally:
            with self._attempt_lock:
                self._attempt_page = None

    def _run_pool(self, items: Iterable[Item], one: Callable[[Item], None], workers: int, stop: threading.Event) -> None:
        """Run ``one`` over ``items`` on ``workers`` threads, reading ``items`` at most ``2 * workers`` ahead.

        Items of the same order (``_serial_key``) run one after the other in their batch order, as they
        did before there were threads: two postings of one order (a CANCEL and its re-delivery, two
        COMPLETEs) never race each other; different orders run side by side. The first exception a worker
        raises (only failures that are not about the item get that far) stops the rest: items not started
        are skipped, the running ones finish, and the exception is raised here.
        """
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        lock = threading.Lock()
        queued: dict[Any, deque[Item]] = {}  # order -> its items waiting behind the one running
        room = threading.Semaphore(2 * workers)  # items read from ``items`` and not finished yet
        futures: set[Future[None]] = set()  # not finished yet
        failed: list[Future[None]] = []  # finished with an exception

        def run_chain(key: Any, item: Item | None) -> None:
            while item is not None:
                try:
                    one(item)
                finally:
                    room.release()
                with lock:
                    item = queued[key].popleft() if queued[key] else None
                    if item is None:
                        del queued[key]

        def settled(future: Future[None]) -> None:
            # Each chain reports its own end, so checking for failures costs O(1) per item, not a scan of every future.
            with lock:
                futures.discard(future)
            if not future.cancelled() and future.exception() is not None:
                failed.append(future)

        def raise_failures() -> None:
            if failed:
                failed[0].result()  # re-raises a worker's exception in this thread

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{self.task_id}-") as pool:
            try:
                for item in items:
                    while not room.acquire(timeout=0.2):
                        raise_failures()
                    raise_failures()
                    key = _serial_key(item)
                    with lock:
                        if key in queued:
                            queued[key].append(item)
                            continue
                        queued[key] = deque()
                    future = pool.submit(run_chain, key, item)
                    with lock:
                        futures.add(future)
                    future.add_done_callback(settled)  # runs at once if the chain is done already
                raise_failures()
                with lock:
                    running = list(futures)
                for future in running:
                    future.result()
                raise_failures()
            except BaseException:
                stop.set()
                with lock:
                    running = list(futures)
                for future in running:
                    future.cancel()
                raise

    def _process_one(
        self,
        item: Item,
        handle: Callable[[Item], str],
        tally: _Tally,
        *,
        defer: Callable[[Item, str], None],
        give_up: Callable[[Item, str], None] | None,
        attempts: Callable[[Item], int] | None,
        limit: int,
        max_consecutive_unavailable: int,
    ) -> None:
        """One item of ``process_each``: handle it and count its outcome (see there for the rules)."""
        from omni_erp.ledger.repo import ClaimedPosting

        if isinstance(item, ClaimedPosting):
            self.renew_lease()
        with tally.lock:
            outage = tally.last_outage if tally.unavailable_in_a_row >= max_consecutive_unavailable else None
        if outage is not None:
            outcome = self._settle(defer, item, f"not attempted, remote system unavailable: {outage}", DEFERRED)
        else:
            try:
                outcome = handle(item)
            except RemoteUnavailableError as exc:
                with tally.lock:
                    tally.unavailable_in_a_row += 1
                    tally.last_outage = str(exc)
                self.log.warning("%s deferred to the next run: %s", _describe(item), exc)
                outcome = self._settle(defer, item, str(exc), DEFERRED)
            except Exception as exc:
                if not_about_the_item(exc):
                    raise
                outcome = self._unexpected(item, exc, defer=defer, give_up=give_up, attempts=attempts, limit=limit)
                with tally.lock:
                    tally.first_problem = tally.first_problem or f"{_describe(item)}: {_error_text(exc)}"
            else:
                with tally.lock:
                    tally.unavailable_in_a_row = 0
        with tally.lock:
            tally.outcomes[outcome] += 1

    def _unexpected(
        self,
        item: Item,
        exc: Exception,
        *,
        defer: Callable[[Item, str], None],
        give_up: Callable[[Item, str], None] | None,
        attempts: Callable[[Item], int] | None,
        limit: int,
    ) -> str:
        """Defer an item whose handling raised something unexpected, or dead-letter it once it failed ``limit`` times."""
        earlier = attempts(item) if attempts is not None else int(getattr(item, "attempts", 0) or 0)
        this_attempt = earlier + 1
        reason = f"unexpected error: {_error_text(exc)}"
        self.log.error(
            "%s failed unexpectedly (attempt %d of %d)", _describe(item), this_attempt, limit, exc_info=exc
        )
        if give_up is not None and this_attempt >= limit:
            self.log.error("%s dead-lettered after %d failed attempts", _describe(item), this_attempt)
            return self._settle(give_up, item, f"gave up after {this_attempt} attempts: {reason}", DEAD_LETTER)
        return self._settle(defer, item, f"{reason} (attempt {this_attempt} of {limit})", DEFERRED)

    def _settle(self, record: Callable[[Item, str], None], item: Item, reason: str, outcome: str) -> str:
        """Record a deferral or dead letter; if even that fails, the item stays claimed (the report releases it)."""
        try:
            record(item, reason)
        except Exception as exc:
            if not_about_the_item(exc):
                raise
            self.log.error("Could not record %s for %s; it stays claimed until the run ends", outcome, _describe(item), exc_info=exc)
            return FAILED
        return outcome


class ErpOperator(LedgerOperator):
    """Base for operators that call the seller's ERP through the ``ErpAdapter`` interface (and Omni).

    Items are handled ``max_in_flight`` at a time (``LedgerOperator.process_each``), and each remote
    system the task calls gets its own ``AdaptiveLimiter`` of that size, shared by the worker threads,
    which backs off when the system answers 429.

    :param erp_conn_id: connection of the ERP.
    :param max_consecutive_unavailable: stop calling an ERP that failed this many items in a row.
    :param max_in_flight: requests in flight to each remote system at once, 1 to 64 (templated; the DAGs
        pass their ``max_in_flight`` param); None: ``DEFAULT_MAX_IN_FLIGHT``.
    """

    template_fields: tuple[str, ...] = (*LedgerOperator.template_fields, "max_in_flight")

    def __init__(
        self,
        *,
        erp_conn_id: str = settings.ERP_CONN_ID,
        max_consecutive_unavailable: int = 3,
        max_in_flight: int | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.erp_conn_id = erp_conn_id
        self.max_consecutive_unavailable = max_consecutive_unavailable
        self.max_in_flight = max_in_flight

    def in_flight_limit(self) -> int:
        return parse_max_in_flight(self.max_in_flight)

    def limited(self, hook: Any) -> Any:
        """``hook`` with an ``AdaptiveLimiter`` of ``max_in_flight`` slots of its own (one per remote system)."""
        from omni_erp.hooks.base import AdaptiveLimiter

        hook.limiter = AdaptiveLimiter(self.in_flight_limit())
        return hook

    @cached_property
    def erp(self) -> ErpAdapter:
        from omni_erp.hooks.adapters import erp_adapter

        # The connection's type picks the adapter (generic REST, ERPNext, ...); operators never name one.
        return self.limited(erp_adapter(self.erp_conn_id, on_attempt=self.record_attempt))
