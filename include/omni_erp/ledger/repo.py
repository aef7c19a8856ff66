"""Ledger operations. Each public method runs in one transaction and is safe to repeat.

Several verbs that must land together (e.g. "dead-letter the posting and close it") run in one
transaction with ``with ledger.transaction(): ...``: the verbs called inside join it, so a crash
between them leaves nothing half-recorded.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cached_property
from typing import Any, Literal

from sqlalchemy import Connection, Engine, and_, bindparam, case, func, insert, literal, or_, select, update

from omni_erp import settings
from omni_erp.ledger import tables as t
from omni_erp.ledger.document_scope import DocumentScopeLedger
from omni_erp.ledger.document_upload import DocumentUploadLedger
from omni_erp.ledger.engine import get_engine, ledger_identity, ledger_url_for_conn_id, sqlite_url
from omni_erp.ledger.rms import RmsLedger
from omni_erp.states import CLAIMED, DEAD, DONE, IGNORED, PENDING, STAGE_INBOX
from omni_erp.timeutil import now

StoreResult = Literal["stored", "duplicate", "conflict"]
# How long a claim protects a posting unless its batch renews it. The operators' default and the
# reasoning behind it: omni_erp.operators.base.DEFAULT_LEASE_MINUTES.
DEFAULT_LEASE = timedelta(minutes=5)


def content_hash(payload: Any) -> str:
    """Hash of the posting's JSON content, independent of key order and whitespace."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _text_hash(payload_text: str) -> str:
    """What ``inbox_message.content_hash`` holds for rows stored now: the hash of the stored JSON text.

    Omni's retries resend the same text, so equal hashes settle almost every repeat; only a repeat
    whose text differs is compared by content (``_same_content``). Hashing the text instead of its
    canonical form (``content_hash``, what older rows hold) saves the inbox's writer a sorted
    re-serialisation of every posting (18 µs of about 100 µs per posting).
    """
    return hashlib.sha256(payload_text.encode()).hexdigest()


def _same_content(stored_hash: str, stored_text: str, row_hash: str, payload: Any) -> bool:
    """Whether a posting (``row_hash`` of its text, its decoded ``payload``) repeats what the ledger holds."""
    if stored_hash == row_hash:
        return True
    # Different text, or a row stored with the canonical hash of older versions: compare the content itself.
    return content_hash(json.loads(stored_text)) == content_hash(payload)


# Postings per claim transaction and per read of a batch: memory and transaction length stay bounded
# however large the batch (claim_batch, iter_claimed_postings).
PAGE_SIZE = 500


@dataclass(frozen=True)
class ClaimSummary:
    """What ``Ledger.claim_batch`` claimed: counts only, no payloads.

    :param claimed: postings the batch holds now (claimed by this call or an earlier try of it).
    :param by_event_type: the same by event type.
    :param retried: those deferred before by an earlier run (``attempts`` > 0).
    :param replayed: those that were dead-lettered and are replayed by this selective claim (``run_scope``).
    """

    claimed: int
    by_event_type: dict[str, int]
    retried: int
    replayed: int = 0


@dataclass(frozen=True)
class ClaimedPosting:
    """A posting a batch works on. ``payload_json`` is the stored JSON text; ``payload`` decodes it on first use
    (booking never reads it: decoding every posting's payload was 7 % of F1's booking CPU)."""

    id: int
    message_id: str
    event_type: str
    business_key: str
    order_code: str
    payload_json: str
    attempts: int
    # Dead-lettered before and taken again by a selective run (order_codes / window): replayed from its payload.
    replayed: bool = False

    @cached_property
    def payload(self) -> dict[str, Any]:
        """The posting as Omni sent it (decoded once, then kept)."""
        return json.loads(self.payload_json)


# inbox_message.outcome of a dead-lettered posting a selective claim took again, until it is handled.
REPLAYED = "replayed"


# Mixins: RMS verbs (ledger/rms.py), scoped document reads (ledger/document_scope.py), the upload queue and
# per-document upload writes (ledger/document_upload.py).
class Ledger(RmsLedger, DocumentScopeLedger, DocumentUploadLedger):
    """The integration ledger over one SQLAlchemy engine (SQLite or PostgreSQL).

    :param url: SQLAlchemy URL; the schema is created or migrated on first use.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = get_engine(url)
        self._local = threading.local()  # the connection of this thread's open transaction, if any

    @classmethod
    def from_conn_id(cls, conn_id: str = settings.LEDGER_CONN_ID) -> Ledger:
        """The ledger of Airflow connection ``conn_id`` (embedded SQLite when it is not defined)."""
        return cls(ledger_url_for_conn_id(conn_id))

    @classmethod
    def sqlite(cls, path: Any) -> Ledger:
        return cls(sqlite_url(path))

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    @property
    def identity(self) -> str:
        """The ledger's UUID (``engine.ledger_identity``): the same value wherever this ledger is opened."""
        return ledger_identity(self.engine)

    @contextmanager
    def transaction(self) -> Iterator[Ledger]:
        """One transaction for every ledger verb called inside (in this thread): all are recorded, or none.

        Nested ``transaction()`` blocks join the outermost one.
        """
        if getattr(self._local, "conn", None) is not None:
            yield self
            return
        with self.engine.begin() as conn:
            self._local.conn = conn
            try:
                yield self
            finally:
                self._local.conn = None

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """The open transaction's connection, or a new transaction committed on exit."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
            return
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """The open transaction's connection (so reads see its writes), or a fresh connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
            return
        with self.engine.connect() as conn:
            yield conn

    def _insert_once(self, table: Any, **values: Any) -> bool:
        """Insert a row unless its natural key exists already (the write is idempotent); True when inserted.

        ``ON CONFLICT DO NOTHING`` rather than catching the IntegrityError: on PostgreSQL a failed insert
        would abort the surrounding transaction.
        """
        with self._write() as conn:
            return conn.execute(_insert_ignoring_conflicts(conn, table).values(**values)).first() is not None

    # --- inbox ------------------------------------------------------------------------------

    def record_posting(
        self,
        *,
        message_id: str,
        event_type: str,
        business_key: str,
        order_code: str,
        payload: dict[str, Any],
        state: str = PENDING,
    ) -> StoreResult:
        """Store a posting once per ``messageId`` (domain.md decision 9).

        Returns "stored" for a new posting, "duplicate" when the same id arrived before with the same
        content, "conflict" when the id was used for different content (nothing is changed then).
        """
        return self.record_postings(
            [
                dict(
                    message_id=message_id,
                    event_type=event_type,
                    business_key=business_key,
                    order_code=order_code,
                    payload=payload,
                    state=state,
                )
            ]
        )[0]

    def record_postings(
        self, postings: list[dict[str, Any]], *, connection: Connection | None = None
    ) -> list[StoreResult]:
        """Store several postings in one transaction, each as ``record_posting`` would (the inbox's group commit).

        Each item holds ``record_posting``'s keyword arguments, optionally with ``payload_json``, the
        posting's JSON text as received (stored instead of serialising ``payload`` again); the results
        come in the same order. A ``messageId`` repeated within the call is decided as if the items had
        arrived one after the other: the first is stored, a later one with the same content is a
        "duplicate", with other content a "conflict". An error rolls the whole call back: none of it is
        stored.

        :param connection: a connection of this ledger's engine that the caller keeps open (the inbox
            writer's) for this call's transaction: no pool checkout, and on PostgreSQL no pre-ping, per
            call. Default: the open ``transaction()``, else a new one. On an AUTOCOMMIT connection
            (the writer's) the one INSERT statement is the transaction: its rows are stored together
            or not at all, and a repeat is decided by reading the stored row after it.
        """
        if not postings:
            return []
        ts = now()
        rows = [self._posting_row(ts, **posting) for posting in postings]
        m = t.inbox_message
        repeats = Counter(row["message_id"] for row in rows)
        with self._write() if connection is None else _begun(connection) as conn:
            inserted = _insert_new_postings(conn, rows)
            undecided = [mid for mid in repeats if mid not in inserted or repeats[mid] > 1]
            stored: dict[str, tuple[str, str]] = {}  # message_id -> content_hash and payload of the row kept
            if undecided:
                query = select(m.c.message_id, m.c.content_hash, m.c.payload).where(m.c.message_id.in_(undecided))
                stored = {mid: (digest, text) for mid, digest, text in conn.execute(query)}
        results: list[StoreResult] = []
        taken: set[str] = set()
        for row, posting in zip(rows, postings, strict=True):
            message_id = row["message_id"]
            if message_id in inserted and repeats[message_id] == 1:
                results.append("stored")
                continue
            same = _same_content(*stored[message_id], row["content_hash"], posting["payload"])
            if same and message_id in inserted and message_id not in taken:
                taken.add(message_id)
                results.append("stored")
            else:
                results.append("duplicate" if same else "conflict")
        return results

    @staticmethod
    def _posting_row(
        ts: datetime,
        *,
        message_id: str,
        event_type: str,
        business_key: str,
        order_code: str,
        payload: dict[str, Any],
        state: str = PENDING,
        payload_json: str | None = None,
    ) -> dict[str, Any]:
        """The ``inbox_message`` row of a newly received posting (``payload_json``: its JSON text, if at hand)."""
        text = json.dumps(payload, ensure_ascii=False, default=str) if payload_json is None else payload_json
        return dict(
            message_id=message_id,
            event_type=event_type,
            business_key=business_key,
            order_code=order_code,
            content_hash=_text_hash(text),
            payload=text,
            received_at=ts,
            state=state,
            outcome="not_handled" if state == IGNORED else None,
            attempts=0,
            updated_at=ts,
        )

    def claim_postings(
        self,
        *,
        event_types: list[str],
        batch_id: str,
        limit: int = 500,
        lease: timedelta = DEFAULT_LEASE,
        shard: int = 0,
        shards: int = 1,
        order_codes: Sequence[str] = (),
        window: tuple[datetime, datetime] | None = None,
    ) -> list[ClaimedPosting]:
        """Claim up to ``limit`` postings of ``event_types`` for ``batch_id``, each for ``lease`` from now.

        Postings already claimed by the same batch are returned again, their lease renewed (a retried
        claim task is idempotent); pending postings and claims whose lease expired (a crashed run) are
        added. Two workers claiming at once never receive the same posting: PostgreSQL skips rows
        locked by the other (``FOR UPDATE SKIP LOCKED``), SQLite serialises writers (``BEGIN IMMEDIATE``).

        With ``shards`` > 1 only the postings of shard ``shard`` (``id % shards``) are claimed and returned,
        so the mapped tasks of one run, one per shard, share the run's batch and each works its own part.

        ``order_codes`` / ``window`` make the claim selective (``_claimable``): only postings of those orders /
        received in that window, dead-lettered ones included - those are replayed (``_claim_claimable``).
        """
        ts = now()
        m = t.inbox_message
        with self._write() as conn:
            _claim_claimable(
                conn, event_types, batch_id, limit, ts, lease, _in_shard(shard, shards), order_codes=order_codes, window=window
            )
            conn.execute(_extend_lease(batch_id, ts + lease))
            rows = conn.execute(
                select(m)
                .where(m.c.batch_id == batch_id, m.c.state == CLAIMED, m.c.event_type.in_(event_types), *_in_shard(shard, shards))
                .order_by(m.c.id)
            ).all()
        return [_claimed(r) for r in rows]

    def claim_batch(
        self,
        *,
        event_types: list[str],
        batch_id: str,
        limit: int = 500,
        lease: timedelta = DEFAULT_LEASE,
        page_size: int = PAGE_SIZE,
        order_codes: Sequence[str] = (),
        window: tuple[datetime, datetime] | None = None,
    ) -> ClaimSummary:
        """Claim like ``claim_postings``, one transaction per page of ``page_size`` postings, and return counts.

        The same rules (a retried claim returns the batch again with its lease renewed; expired claims are
        taken over; two workers never get the same posting), but no payload is read, so claiming 100,000
        postings costs a few small transactions and no memory; the operators then stream the batch with
        ``iter_claimed_postings``. A page's claim is one transaction: a crash leaves whole pages claimed
        (their lease runs out), never a half-marked page.

        ``order_codes`` / ``window`` select as in ``claim_postings``; a dead-lettered posting is replayed in the
        transaction of the page that takes it (claimed, ``attempts`` 0, its open dead letters resolved).
        """
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        claimed = 0
        while claimed < limit:
            page = self._claim_page(event_types, batch_id, min(page_size, limit - claimed), lease, order_codes, window)
            claimed += page
            if page == 0:
                break
        m = t.inbox_message
        held = (m.c.batch_id == batch_id, m.c.state == CLAIMED, m.c.event_type.in_(event_types))
        with self._write() as conn:
            conn.execute(_extend_lease(batch_id, now() + lease))  # an earlier try's pages too
            rows = conn.execute(
                select(
                    m.c.event_type,
                    func.count(),
                    func.sum(case((m.c.attempts > 0, 1), else_=0)),
                    func.sum(case((m.c.outcome == REPLAYED, 1), else_=0)),
                )
                .where(*held)
                .group_by(m.c.event_type)
            ).all()
        by_type = {event_type: int(count) for event_type, count, *_ in rows}
        return ClaimSummary(
            sum(by_type.values()),
            by_type,
            sum(int(retried or 0) for _, _, retried, _ in rows),
            sum(int(replayed or 0) for *_, replayed in rows),
        )

    def _claim_page(
        self,
        event_types: list[str],
        batch_id: str,
        size: int,
        lease: timedelta,
        order_codes: Sequence[str] = (),
        window: tuple[datetime, datetime] | None = None,
    ) -> int:
        """Claim up to ``size`` claimable postings for ``batch_id`` in one transaction; returns how many."""
        with self._write() as conn:
            return _claim_claimable(conn, event_types, batch_id, size, now(), lease, (), order_codes=order_codes, window=window)

    def iter_claimed_postings(
        self,
        batch_id: str,
        event_types: list[str] | None = None,
        *,
        page_size: int = PAGE_SIZE,
        shard: int = 0,
        shards: int = 1,
    ) -> Iterator[ClaimedPosting]:
        """``claimed_postings``, read a page at a time in id order: one page in memory whatever the batch size.

        Each page is its own short read (no connection or snapshot is held while the caller works), and
        pages follow by id, so postings the caller finishes meanwhile never make it skip one. With ``shards``
        > 1, only shard ``shard``'s part of the batch (``id % shards``; the sharded push tasks of one run).
        """
        m = t.inbox_message
        in_shard = _in_shard(shard, shards)
        last_id = 0
        while True:
            query = select(m).where(m.c.batch_id == batch_id, m.c.state == CLAIMED, m.c.id > last_id, *in_shard)
            if event_types:
                query = query.where(m.c.event_type.in_(event_types))
            with self._read() as conn:
                rows = conn.execute(query.order_by(m.c.id).limit(page_size)).all()
            for row in rows:
                yield _claimed(row)
            if len(rows) < page_size:
                return
            last_id = rows[-1].id

    def select_postings(
        self,
        *,
        event_types: list[str],
        limit: int = 500,
        order_codes: Sequence[str] = (),
        window: tuple[datetime, datetime] | None = None,
    ) -> list[ClaimedPosting]:
        """The postings a claim with the same arguments would take now, read only (a dry run's batch).

        Claimable postings (pending, or claimed with an expired lease), by id, up to ``limit``; a selective
        selection (``order_codes`` matching the order or business key, ``window`` on ``received_at``) also
        takes dead-lettered postings, which a real claim replays (``run_scope``; they come with ``replayed``).
        """
        m = t.inbox_message
        query = (
            select(m)
            .where(m.c.event_type.in_(event_types), _claimable(now(), order_codes, window))
            .order_by(m.c.id)
            .limit(limit)
        )
        with self._read() as conn:
            return [_claimed(r) for r in conn.execute(query).all()]

    def renew_lease(self, batch_id: str, lease: timedelta = DEFAULT_LEASE) -> int:
        """Extend to ``lease`` from now the lease of every posting ``batch_id`` still holds; returns how many changed.

        The batch's owner calls it while it works, so a live run keeps its claims however long it takes,
        while the claims of a dead run expire one lease after its last renewal. A lease is only ever
        extended, never shortened; postings the batch finished, released or lost to another batch (its
        lease had expired) are not touched. One UPDATE.
        """
        with self._write() as conn:
            return conn.execute(_extend_lease(batch_id, now() + lease)).rowcount

    def claimed_postings(
        self, batch_id: str, event_types: list[str] | None = None, *, shard: int = 0, shards: int = 1
    ) -> list[ClaimedPosting]:
        """Postings still claimed by ``batch_id`` (not yet done, dead or released), of shard ``shard`` of ``shards``."""
        m = t.inbox_message
        query = select(m).where(m.c.batch_id == batch_id, m.c.state == CLAIMED, *_in_shard(shard, shards)).order_by(m.c.id)
        if event_types:
            query = query.where(m.c.event_type.in_(event_types))
        with self._read() as conn:
            return [_claimed(r) for r in conn.execute(query).all()]

    def finish_posting(
        self, message_id: str, *, outcome: str, state: str = DONE, error: str | None = None, batch_id: str | None = None
    ) -> bool:
        """Close a posting as done (or dead) with the outcome that the run report shows; True if applied.

        With ``batch_id`` it applies only while that batch still holds the posting, so a slow first try
        of a task can never overwrite what a later run (which reclaimed the posting) recorded.
        """
        values = {"_message_id": message_id, "state": state, "outcome": outcome, "last_error": _text(error), "updated_at": now()}
        if batch_id is not None:
            values["_batch_id"] = batch_id
        with self._write() as conn:
            return conn.execute(_FINISH_POSTING[batch_id is not None], values).rowcount == 1

    def dead_letter_posting(
        self,
        message_id: str,
        *,
        stage: str,
        reason: str,
        business_key: str | None = None,
        payload: str | None = None,
        outcome: str = "dead_letter",
        batch_id: str | None = None,
    ) -> bool:
        """Record why a posting cannot be processed and close it as dead - both or neither; True if applied.

        With ``batch_id`` nothing is recorded unless that batch still holds the posting.
        """
        with self.transaction():
            if not self.finish_posting(message_id, state=DEAD, outcome=outcome, error=reason, batch_id=batch_id):
                return False
            self.record_dead_letter(stage=stage, reason=reason, message_id=message_id, business_key=business_key, payload=payload)
            return True

    def release_posting(self, message_id: str, *, error: str, batch_id: str | None = None) -> bool:
        """Give a claimed posting back to the queue (the next run retries it), count the attempt and note why.

        With ``batch_id`` it applies only while that batch still holds the posting. True if applied.
        """
        m = t.inbox_message
        with self._write() as conn:
            return conn.execute(
                update(m)
                .where(m.c.message_id == message_id, *_held_by(batch_id))
                .values(
                    state=PENDING,
                    outcome="deferred",
                    attempts=m.c.attempts + 1,
                    last_error=_text(error),
                    lease_until=None,
                    updated_at=now(),
                )
            ).rowcount == 1

    def release_unfinished(self, batch_id: str, *, error: str) -> int:
        """Give back every posting ``batch_id`` still holds (its run ended); returns how many."""
        m = t.inbox_message
        with self._write() as conn:
            return conn.execute(
                update(m)
                .where(m.c.batch_id == batch_id, m.c.state == CLAIMED)
                .values(state=PENDING, outcome="deferred", last_error=error, lease_until=None, updated_at=now())
            ).rowcount

    def has_open_posting(self, order_code: str, event_type: str) -> bool:
        """True when a posting of ``event_type`` for the order is stored but not processed yet."""
        m = t.inbox_message
        query = select(func.count()).where(
            m.c.order_code == order_code, m.c.event_type == event_type, m.c.state.in_([PENDING, CLAIMED])
        )
        with self._read() as conn:
            return bool(conn.execute(query).scalar())

    def reopen_postings(self, order_code: str, event_type: str, *, reason: str) -> int:
        """Put processed postings of ``event_type`` for the order back in the queue; returns how many."""
        m = t.inbox_message
        with self._write() as conn:
            return conn.execute(
                update(m)
                .where(m.c.order_code == order_code, m.c.event_type == event_type, m.c.state == DONE)
                .values(state=PENDING, outcome="reopened", last_error=reason, lease_until=None, updated_at=now())
            ).rowcount

    def update_order_if(self, order_code: str, *, expected_state: str, **values: Any) -> bool:
        """Update the order only while it is still in ``expected_state`` (compare-and-set); True if applied."""
        with self._write() as conn:
            changed = conn.execute(
                _UPDATE_ORDER_IF, {"_order_code": order_code, "_expected_state": expected_state, "updated_at": now(), **values}
            ).rowcount
        return changed == 1

    def batch_postings(self, batch_id: str) -> list[dict[str, Any]]:
        """Every posting a batch touched, with its current state (for the run report)."""
        m, o = t.inbox_message, t.ajio_order
        query = (
            select(
                m.c.message_id,
                m.c.event_type,
                m.c.order_code,
                m.c.state,
                m.c.outcome,
                m.c.attempts,
                m.c.last_error,
                o.c.erp_sales_order_id,
            )
            .select_from(m.outerjoin(o, o.c.order_code == m.c.order_code))
            .where(m.c.batch_id == batch_id)
            .order_by(m.c.id)
        )
        with self._read() as conn:
            return [_mapping(r) for r in conn.execute(query).all()]

    # --- orders -------------------------------------------------------------------------------

    def get_order(self, order_code: str) -> dict[str, Any] | None:
        with self._read() as conn:
            row = conn.execute(_GET_ORDER, {"_order_code": order_code}).first()
        return _order(row) if row else None

    def orders_to_book(self, order_codes: Sequence[str]) -> dict[str, dict[str, Any]]:
        """What F1's booking needs of the orders among ``order_codes``, by code, in one query: ``order_code``,
        ``state``, ``create_message_id``, ``erp_sales_order_id`` and ``erp_request`` (decoded) as ``get_order``
        gives them, without the columns the booking never reads."""
        codes = sorted({c for c in order_codes if c})
        if not codes:
            return {}
        with self._read() as conn:
            rows = conn.execute(_ORDERS_TO_BOOK, {"_codes": codes}).all()
        return {
            row.order_code: {
                "order_code": row.order_code, "state": row.state, "create_message_id": row.create_message_id,
                "erp_sales_order_id": row.erp_sales_order_id,
                "erp_request": json.loads(row.erp_request) if row.erp_request else None,
            }
            for row in rows
        }

    def register_order(
        self,
        *,
        order_code: str,
        po_number: str | None,
        state: str,
        create_message_id: str | None,
        lines: list[dict[str, Any]],
        total_amount: Decimal,
        erp_request: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """Insert the order if it is new and return the stored row (the first CREATE wins)."""
        ts = now()
        self._insert_once(
            t.ajio_order,
            order_code=order_code,
            po_number=po_number,
            state=state,
            create_message_id=create_message_id,
            lines=json.dumps(lines, default=str),
            total_amount=total_amount,
            erp_request=json.dumps(erp_request, default=str) if erp_request is not None else None,
            created_at=ts,
            updated_at=ts,
        )
        order = self.get_order(order_code)
        assert order is not None
        return order

    def orders_in_state(self, state: str, *, unchanged_since: datetime) -> list[dict[str, Any]]:
        """Orders that have been in ``state`` since before ``unchanged_since`` (oldest first)."""
        o = t.ajio_order
        query = select(o).where(o.c.state == state, o.c.updated_at < unchanged_since).order_by(o.c.updated_at)
        with self._read() as conn:
            return [_order(r) for r in conn.execute(query).all()]

    def update_order(self, order_code: str, **values: Any) -> None:
        with self._write() as conn:
            conn.execute(
                update(t.ajio_order).where(t.ajio_order.c.order_code == order_code).values(updated_at=now(), **values)
            )

    # --- outbound calls, dead letters, cursors ------------------------------------------------

    def record_call(
        self,
        *,
        system: str,
        operation: str,
        endpoint: str,
        attempt: int,
        status_code: int | None,
        latency_ms: int,
        outcome: str,
        idempotency_key: str | None = None,
        error: str | None = None,
        batch_id: str | None = None,
    ) -> None:
        with self._write() as conn:
            conn.execute(
                insert(t.outbound_call).values(
                    system=system,
                    operation=operation,
                    endpoint=endpoint,
                    idempotency_key=idempotency_key,
                    attempt=attempt,
                    status_code=status_code,
                    latency_ms=latency_ms,
                    outcome=outcome,
                    error=(error or None) and error[:2000],
                    batch_id=batch_id,
                    created_at=now(),
                )
            )

    def record_calls(self, calls: list[dict[str, Any]]) -> int:
        """Record many HTTP attempts (the keyword arguments of ``record_call`` each) in one transaction.

        The operators' pools buffer their attempts and write them a page at a time (``LedgerOperator``):
        ``outbound_call`` is the audit of what was sent, so batching it is safe - exactly-once rests on the
        idempotency keys and each item's own state change, not on these rows. Returns how many were written.
        """
        if not calls:
            return 0
        ts = now()
        rows = [
            {
                "system": c["system"], "operation": c["operation"], "endpoint": c["endpoint"],
                "idempotency_key": c.get("idempotency_key"), "attempt": c["attempt"], "status_code": c.get("status_code"),
                "latency_ms": c["latency_ms"], "outcome": c["outcome"], "error": (c.get("error") or None) and c["error"][:2000],
                "batch_id": c.get("batch_id"), "created_at": c.get("created_at") or ts,
            }
            for c in calls
        ]
        with self._write() as conn:
            conn.execute(insert(t.outbound_call), rows)
        return len(rows)

    def record_dead_letter(
        self,
        *,
        stage: str,
        reason: str,
        message_id: str | None = None,
        business_key: str | None = None,
        payload: str | None = None,
    ) -> bool:
        """Record something that cannot be processed; the same problem is recorded once. True if new, or if
        it had been resolved (a replay met it again: ``_claim_claimable``) and is open again."""
        # The same problem of the same posting or document is one row, however often a run meets it.
        key_source = "|".join((message_id or "", business_key or "", "" if message_id else payload or "", reason))
        dedupe_key = hashlib.sha256(key_source.encode()).hexdigest()
        dl = t.dead_letter
        with self.transaction():
            if self._insert_once(
                dl,
                stage=stage,
                dedupe_key=dedupe_key,
                message_id=message_id,
                business_key=business_key,
                reason=_text(reason)[:2000],
                payload=payload[:20000] if payload else None,
                created_at=now(),
            ):
                return True
            with self._write() as conn:
                reopen = update(dl).where(dl.c.stage == stage, dl.c.dedupe_key == dedupe_key, dl.c.resolved_at.is_not(None))
                return conn.execute(reopen.values(resolved_at=None)).rowcount == 1

    def dead_letters(self, stage: str | None = None) -> list[dict[str, Any]]:
        query = select(t.dead_letter).order_by(t.dead_letter.c.id)
        if stage:
            query = query.where(t.dead_letter.c.stage == stage)
        with self._read() as conn:
            return [_mapping(r) for r in conn.execute(query).all()]

    def get_cursor(self, name: str, default: str | None = None) -> str | None:
        with self._read() as conn:
            value = conn.execute(select(t.sync_cursor.c.value).where(t.sync_cursor.c.name == name)).scalar()
        return default if value is None else value

    def set_cursor(self, name: str, value: str) -> None:
        ts = now()
        with self._write() as conn:
            changed = conn.execute(
                update(t.sync_cursor).where(t.sync_cursor.c.name == name).values(value=value, updated_at=ts)
            ).rowcount
            if not changed:
                conn.execute(insert(t.sync_cursor).values(name=name, value=value, updated_at=ts))

    def advance_cursor(self, name: str, value: int) -> int:
        """Move an integer cursor forward only (never back); returns the stored value."""
        current = int(self.get_cursor(name, "0") or 0)
        if value > current:
            self.set_cursor(name, str(value))
            return value
        return current

    # --- ERP documents (F2, F6) ---------------------------------------------------------------

    def record_document(
        self,
        *,
        doc_type: str,
        doc_number: str,
        order_code: str | None,
        related_code: str | None,
        seq: int | None,
        payload: dict[str, Any],
        state: str,
        reason: str | None = None,
        batch_id: str | None = None,
    ) -> bool:
        """Record an ERP document once per (type, number); True when it is new."""
        ts = now()
        return self._insert_once(
            t.erp_document,
            doc_type=doc_type,
            doc_number=doc_number,
            order_code=order_code,
            related_code=related_code,
            seq=seq,
            payload=json.dumps(payload, default=str),
            state=state,
            reason=reason,
            upload_attempts=0,
            batch_id=batch_id,
            created_at=ts,
            updated_at=ts,
        )

    def get_document(self, doc_type: str, doc_number: str) -> dict[str, Any] | None:
        d = t.erp_document
        with self._read() as conn:
            row = conn.execute(select(d).where(d.c.doc_type == doc_type, d.c.doc_number == doc_number)).first()
        return _document(row) if row else None

    def documents(
        self,
        doc_type: str,
        *,
        states: list[str] | None = None,
        order_code: str | None = None,
        batch_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Documents of a type, oldest feed position first, optionally filtered."""
        d = t.erp_document
        query = select(d).where(d.c.doc_type == doc_type).order_by(d.c.seq, d.c.id)
        if states:
            query = query.where(d.c.state.in_(states))
        if order_code:
            query = query.where(d.c.order_code == order_code)
        if batch_id:
            query = query.where(d.c.batch_id == batch_id)
        with self._read() as conn:
            return [_document(r) for r in conn.execute(query).all()]

    def update_document(self, doc_type: str, doc_number: str, **values: Any) -> None:
        d = t.erp_document
        with self._write() as conn:
            conn.execute(
                update(d).where(d.c.doc_type == doc_type, d.c.doc_number == doc_number).values(updated_at=now(), **values)
            )

    # --- shipments (F4) -----------------------------------------------------------------------

    def record_shipment(self, *, shipment_code: str, order_code: str, message_id: str, items: list[dict[str, Any]]) -> bool:
        """Record a shipment once per shipmentCode (it repeats in every later posting); True when new."""
        return self._insert_once(
            t.shipment,
            shipment_code=shipment_code,
            order_code=order_code,
            message_id=message_id,
            items=json.dumps(items, default=str),
            created_at=now(),
        )

    def order_shipments(self, order_code: str) -> list[dict[str, Any]]:
        s = t.shipment
        with self._read() as conn:
            rows = conn.execute(select(s).where(s.c.order_code == order_code).order_by(s.c.shipment_code)).all()
        return [{**dict(r._mapping), "items": json.loads(r.items)} for r in rows]

    # --- return orders and manual settlement (F4, F5) -----------------------------------------

    def register_return_order(
        self,
        *,
        return_order_code: str,
        order_code: str,
        kind: str,
        state: str,
        lines: list[dict[str, Any]],
        erp_request: dict[str, Any] | None,
        message_id: str | None = None,
    ) -> dict[str, Any]:
        """Insert the return order if it is new and return the stored row (the first one wins)."""
        ts = now()
        self._insert_once(
            t.return_order,
            return_order_code=return_order_code,
            order_code=order_code,
            kind=kind,
            message_id=message_id,
            state=state,
            lines=json.dumps(lines, default=str),
            erp_request=json.dumps(erp_request, default=str) if erp_request is not None else None,
            created_at=ts,
            updated_at=ts,
        )
        stored = self.get_return_order(return_order_code)
        assert stored is not None
        return stored

    def get_return_order(self, return_order_code: str) -> dict[str, Any] | None:
        r = t.return_order
        with self._read() as conn:
            row = conn.execute(select(r).where(r.c.return_order_code == return_order_code)).first()
        return _return_order(row) if row else None

    def return_orders(self, *, order_code: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        r = t.return_order
        query = select(r).order_by(r.c.created_at, r.c.return_order_code)
        if order_code:
            query = query.where(r.c.order_code == order_code)
        if kind:
            query = query.where(r.c.kind == kind)
        with self._read() as conn:
            return [_return_order(row) for row in conn.execute(query).all()]

    def update_return_order(self, return_order_code: str, **values: Any) -> None:
        r = t.return_order
        with self._write() as conn:
            conn.execute(update(r).where(r.c.return_order_code == return_order_code).values(updated_at=now(), **values))

    def record_manual_settlement(
        self,
        *,
        return_order_code: str,
        item_code: str,
        order_code: str,
        sku: str,
        qc_status: str | None,
        qc_reason: str | None,
        reason: str,
    ) -> bool:
        """List a returned unit for offline settlement with Ajio, once per item; True when new."""
        return self._insert_once(
            t.manual_settlement,
            return_order_code=return_order_code,
            item_code=item_code,
            order_code=order_code,
            sku=sku,
            qc_status=qc_status,
            qc_reason=qc_reason,
            reason=reason,
            created_at=now(),
        )

    def manual_settlements(self, return_order_code: str | None = None) -> list[dict[str, Any]]:
        m = t.manual_settlement
        query = select(m).order_by(m.c.id)
        if return_order_code:
            query = query.where(m.c.return_order_code == return_order_code)
        with self._read() as conn:
            return [_mapping(r) for r in conn.execute(query).all()]

    # --- reporting ----------------------------------------------------------------------------

    def posting_counts(self) -> dict[tuple[str, str, str | None], int]:
        """Count of postings by (event_type, state, outcome)."""
        m = t.inbox_message
        query = select(m.c.event_type, m.c.state, m.c.outcome, func.count()).group_by(m.c.event_type, m.c.state, m.c.outcome)
        with self._read() as conn:
            return {(e, s, o): n for e, s, o, n in conn.execute(query).all()}

    def order_counts(self) -> Counter[str]:
        query = select(t.ajio_order.c.state, func.count()).group_by(t.ajio_order.c.state)
        with self._read() as conn:
            return Counter({s: n for s, n in conn.execute(query).all()})

    def calls(self, idempotency_key: str | None = None) -> list[dict[str, Any]]:
        query = select(t.outbound_call).order_by(t.outbound_call.c.id)
        if idempotency_key:
            query = query.where(t.outbound_call.c.idempotency_key == idempotency_key)
        with self._read() as conn:
            return [_mapping(r) for r in conn.execute(query).all()]

    def postings(self, event_type: str | None = None) -> list[dict[str, Any]]:
        m = t.inbox_message
        query = select(m).order_by(m.c.id)
        if event_type:
            query = query.where(m.c.event_type == event_type)
        with self._read() as conn:
            return [_mapping(r) for r in conn.execute(query).all()]


@contextmanager
def _begun(connection: Connection) -> Iterator[Connection]:
    """A transaction on ``connection``, committed on exit."""
    with connection.begin():
        yield connection


_PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}  # sqlite3's and psycopg's parameter styles
# (dialect, driver, columns, row count) -> the insert's text and each column's conversion to the database (None: as is)
_posting_inserts: dict[tuple[str, str, tuple[str, ...], int], tuple[str, tuple[Callable[[Any], Any] | None, ...]]] = {}


def _insert_new_postings(conn: Connection, rows: list[dict[str, Any]]) -> set[str]:
    """Insert the ``inbox_message`` rows whose ``message_id`` is new; returns those message ids.

    One multi-row ``INSERT ... ON CONFLICT (message_id) DO NOTHING RETURNING message_id`` sent as driver
    SQL: the inbox's writer runs this for every batch, and SQLAlchemy's compiled multi-row insert
    ("insertmanyvalues": per-row parameter processing, a per-call rendering of the statement) cost it
    more CPU than the database's own work. The text and the columns' own conversions (the column types'
    bind processors, e.g. SQLite's timestamp format) are built once per dialect and row count, so the
    rows are stored exactly as SQLAlchemy's insert stores them.
    """
    dialect, columns = conn.dialect, tuple(rows[0])  # every row has _posting_row's keys, in its order
    numbered = dialect.driver == "psycopg"  # psycopg 3 (the ledger's driver; psycopg2 for a bare postgresql:// URL)
    key = (dialect.name, dialect.driver, columns, len(rows))
    cached = _posting_inserts.get(key)
    if cached is None:
        if numbered:  # $n, as _execute_with_numbered_placeholders sends it
            numbers = iter(range(1, len(columns) * len(rows) + 1))
            values_list = ", ".join("(" + ", ".join(f"${next(numbers)}" for _ in columns) + ")" for _ in rows)
        else:
            placeholder = _PLACEHOLDERS[dialect.paramstyle]
            values_list = ", ".join(["(" + ", ".join([placeholder] * len(columns)) + ")"] * len(rows))
        sql = (
            f"INSERT INTO {t.inbox_message.name} ({', '.join(columns)}) VALUES {values_list}"
            " ON CONFLICT (message_id) DO NOTHING RETURNING message_id"
        )
        to_db = tuple(t.inbox_message.c[column].type.dialect_impl(dialect).bind_processor(dialect) for column in columns)
        cached = _posting_inserts[key] = (sql, to_db)
    sql, to_db = cached
    converted: dict[tuple[Any, Any], Any] = {}  # a batch shares its timestamps: each value is converted once
    parameters: list[Any] = []
    for row in rows:
        for column, convert in zip(columns, to_db, strict=True):
            value = row[column]
            if convert is not None:
                if (convert, value) not in converted:
                    converted[convert, value] = convert(value)
                value = converted[convert, value]
            parameters.append(value)
    if numbered:
        return _execute_with_numbered_placeholders(conn, sql, tuple(parameters))
    return {message_id for (message_id,) in conn.exec_driver_sql(sql, tuple(parameters))}


def _execute_with_numbered_placeholders(conn: Connection, sql: str, parameters: tuple[Any, ...]) -> set[str]:
    """Run ``sql`` written with PostgreSQL's own ``$n`` placeholders through psycopg's ``RawCursor``.

    psycopg rewrites ``%s`` placeholders into ``$n`` with a Python regex and caches that only for
    statements of at most 50 parameters, so every batch of more than 4 postings was parsed again:
    about 40 µs CPU per posting in the inbox's writer, a third of its work on PostgreSQL. A raw cursor
    takes the text as it is. It is used for this one statement only (the rest of the ledger is
    SQLAlchemy's ``%(name)s`` SQL); going through ``exec_driver_sql`` keeps SQLAlchemy's error
    translation (``DataError``, a dropped connection's ``connection_invalidated``) and events.
    """
    import psycopg  # the ledger's PostgreSQL driver (engine.py); imported only where PostgreSQL is used

    driver_connection = conn.connection.driver_connection
    cursor_factory = driver_connection.cursor_factory
    driver_connection.cursor_factory = psycopg.RawCursor
    try:
        result = conn.exec_driver_sql(sql, parameters)
    finally:
        driver_connection.cursor_factory = cursor_factory
    return {message_id for (message_id,) in result}


def _insert_ignoring_conflicts(conn: Connection, table: Any) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` in the connection's dialect (the one dialect branch of the ledger)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    # RETURNING tells whether a row went in: psycopg reports rowcount -1 for these statements.
    return dialect_insert(table).on_conflict_do_nothing().returning(*table.primary_key.columns)


def _claim_claimable(
    conn: Connection,
    event_types: list[str],
    batch_id: str,
    limit: int,
    ts: datetime,
    lease: timedelta,
    shard_filter: Any,
    *,
    order_codes: Sequence[str] = (),
    window: tuple[datetime, datetime] | None = None,
) -> int:
    """Mark up to ``limit`` claimable postings (``_claimable``) claimed by ``batch_id`` until ``ts + lease``, in the
    caller's transaction; returns how many. PostgreSQL skips rows another claimer has locked (``FOR UPDATE SKIP
    LOCKED``); SQLite's writers are serialised by ``BEGIN IMMEDIATE``.

    A dead-lettered posting a selective claim takes is replayed: claimed like the others, its ``attempts`` back to
    0 (the retry bound starts again: the cause was fixed), ``last_error`` saying so and keeping the old reason,
    and its open dead letters (any stage but the inbox's, which are about other deliveries) resolved - all in
    this transaction, so a replay is never half-recorded."""
    m, dl = t.inbox_message, t.dead_letter
    query = (
        select(m.c.id, m.c.message_id, m.c.state)
        .where(m.c.event_type.in_(event_types), _claimable(ts, order_codes, window), *shard_filter)
        .order_by(m.c.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    rows = conn.execute(query).all()
    claim = {"state": CLAIMED, "batch_id": batch_id, "lease_until": ts + lease, "updated_at": ts}
    live = [r.id for r in rows if r.state != DEAD]
    dead = [r.message_id for r in rows if r.state == DEAD]
    if live:
        conn.execute(update(m).where(m.c.id.in_(live)).values(**claim))
    if dead:
        note = f"replayed by batch {batch_id} at {ts.isoformat()}; dead-lettered before: "
        conn.execute(
            update(m)
            .where(m.c.message_id.in_(dead), m.c.state == DEAD)
            .values(**claim, attempts=0, outcome=REPLAYED, last_error=literal(note) + func.coalesce(m.c.last_error, ""))
        )
        conn.execute(
            update(dl)
            .where(dl.c.message_id.in_(dead), dl.c.resolved_at.is_(None), dl.c.stage != STAGE_INBOX)
            .values(resolved_at=ts)
        )
    return len(rows)


def _claimable(ts: datetime, order_codes: Sequence[str] = (), window: tuple[datetime, datetime] | None = None) -> Any:
    """Condition "a claim at ``ts`` may take this posting": pending, or claimed with an expired lease; with
    ``order_codes`` or ``window`` (a selective run, ``run_scope``) only postings of those orders / received in
    that window, dead-lettered ones included (they are replayed)."""
    m = t.inbox_message
    states = [m.c.state == PENDING, and_(m.c.state == CLAIMED, m.c.lease_until < ts)]
    conditions = []
    if order_codes:
        conditions.append(or_(m.c.order_code.in_(list(order_codes)), m.c.business_key.in_(list(order_codes))))
    if window is not None:
        # In UTC: the ledger stores UTC, and SQLite compares the wall time it is given.
        start, end = (bound.astimezone(UTC) for bound in window)
        conditions.extend([m.c.received_at >= start, m.c.received_at < end])
    if conditions:
        states.append(m.c.state == DEAD)
    return and_(or_(*states), *conditions)


def _extend_lease(batch_id: str, until: datetime) -> Any:
    """UPDATE moving the lease of the postings ``batch_id`` holds to ``until``, where that is later."""
    m = t.inbox_message
    return (
        update(m)
        .where(m.c.batch_id == batch_id, m.c.state == CLAIMED, or_(m.c.lease_until.is_(None), m.c.lease_until < until))
        .values(lease_until=until)
    )


def _in_shard(shard: int, shards: int) -> tuple[Any, ...]:
    """Conditions "posting in shard ``shard`` of ``shards``" (none when unsharded).

    :raises ValueError: unless 0 <= shard < shards.
    """
    if not 0 <= shard < shards:
        raise ValueError(f"shard must be in 0..{shards - 1} for {shards} shard(s), got {shard}")
    if shards == 1:
        return ()
    return (t.inbox_message.c.id % shards == shard,)


def _held_by(batch_id: str | None) -> tuple[Any, ...]:
    """Conditions "still claimed by ``batch_id``" (none when no batch is given)."""
    if batch_id is None:
        return ()
    m = t.inbox_message
    return (m.c.batch_id == batch_id, m.c.state == CLAIMED)


def _text(value: str | None) -> str | None:
    """Free text for the ledger: NUL removed (PostgreSQL text cannot hold it; an exception message can)."""
    return value.replace("\x00", "\\x00") if value else value


def _claimed(row: Any) -> ClaimedPosting:
    """The posting of an ``inbox_message`` row; ``replayed`` when it is dead (a dry run's selection) or claimed
    again from the dead (``_claim_claimable``)."""
    return ClaimedPosting(
        id=row.id,
        message_id=row.message_id,
        event_type=row.event_type,
        business_key=row.business_key,
        order_code=row.order_code,
        payload_json=row.payload,
        attempts=row.attempts,
        replayed=row.state == DEAD or row.outcome == REPLAYED,
    )


def _mapping(row: Any) -> dict[str, Any]:
    """Row as a dict with aware UTC datetimes (SQLite hands back naive ones)."""
    return {k: as_utc(v) if isinstance(v, datetime) else v for k, v in row._mapping.items()}


def _order(row: Any) -> dict[str, Any]:
    order = _mapping(row)
    order["lines"] = json.loads(order["lines"])
    order["erp_request"] = json.loads(order["erp_request"]) if order["erp_request"] else None
    return order


def _document(row: Any) -> dict[str, Any]:
    document = _mapping(row)
    document["payload"] = json.loads(document["payload"])
    return document


def _return_order(row: Any) -> dict[str, Any]:
    stored = _mapping(row)
    stored["lines"] = json.loads(stored["lines"])
    stored["erp_request"] = json.loads(stored["erp_request"]) if stored["erp_request"] else None
    return stored


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes for timezone-aware columns; normalise to aware UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


# Hot statements built once (F1 books hundreds of orders a second): building a statement and its cache key
# per call cost more CPU than SQLite running it; SQLAlchemy memoises the key per statement object. The columns
# to SET are the execution parameters named after columns (bound parameters start with "_").
_GET_ORDER = select(t.ajio_order).where(t.ajio_order.c.order_code == bindparam("_order_code"))
_ORDERS_TO_BOOK = select(
    t.ajio_order.c.order_code, t.ajio_order.c.state, t.ajio_order.c.create_message_id,
    t.ajio_order.c.erp_sales_order_id, t.ajio_order.c.erp_request,
).where(t.ajio_order.c.order_code.in_(bindparam("_codes", expanding=True)))
_UPDATE_ORDER_IF = update(t.ajio_order).where(
    t.ajio_order.c.order_code == bindparam("_order_code"), t.ajio_order.c.state == bindparam("_expected_state")
)
# finish_posting, by "only while batch _batch_id still holds the posting"
_FINISH_POSTING = {
    held: update(t.inbox_message)
    .where(
        t.inbox_message.c.message_id == bindparam("_message_id"),
        *((t.inbox_message.c.batch_id == bindparam("_batch_id"), t.inbox_message.c.state == CLAIMED) if held else ()),
    )
    .values(lease_until=None)
    for held in (False, True)
}
