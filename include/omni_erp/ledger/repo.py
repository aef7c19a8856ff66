"""Ledger operations. Each public method runs in one transaction and is safe to repeat."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import Engine, and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from omni_erp import settings
from omni_erp.ledger import tables as t
from omni_erp.ledger.engine import get_engine, ledger_url_for_conn_id, sqlite_url
from omni_erp.states import CLAIMED, DONE, IGNORED, PENDING
from omni_erp.timeutil import now

StoreResult = Literal["stored", "duplicate", "conflict"]



def content_hash(payload: Any) -> str:
    """Hash of the posting's JSON content, independent of key order and whitespace."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class ClaimedPosting:
    id: int
    message_id: str
    event_type: str
    business_key: str
    order_code: str
    payload: dict[str, Any]
    attempts: int


class Ledger:
    """The integration ledger over one SQLAlchemy engine (SQLite or PostgreSQL).

    :param url: SQLAlchemy URL; the schema is created or migrated on first use.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = get_engine(url)

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
        digest = content_hash(payload)
        ts = now()
        row = dict(
            message_id=message_id,
            event_type=event_type,
            business_key=business_key,
            order_code=order_code,
            content_hash=digest,
            payload=json.dumps(payload, ensure_ascii=False, default=str),
            received_at=ts,
            state=state,
            outcome="not_handled" if state == IGNORED else None,
            attempts=0,
            updated_at=ts,
        )
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(t.inbox_message).values(**row))
            return "stored"
        except IntegrityError:
            with self.engine.connect() as conn:
                existing = conn.execute(
                    select(t.inbox_message.c.content_hash).where(t.inbox_message.c.message_id == message_id)
                ).scalar_one()
            return "duplicate" if existing == digest else "conflict"

    def claim_postings(
        self, *, event_types: list[str], batch_id: str, limit: int = 500, lease: timedelta = timedelta(minutes=30)
    ) -> list[ClaimedPosting]:
        """Claim up to ``limit`` postings of ``event_types`` for ``batch_id``.

        Postings already claimed by the same batch are returned again (a retried claim task is
        idempotent); pending postings and claims whose lease expired (a crashed run) are added.
        Two workers claiming at once never receive the same posting: PostgreSQL skips rows locked by
        the other (``FOR UPDATE SKIP LOCKED``), SQLite serialises writers (``BEGIN IMMEDIATE``).
        """
        ts = now()
        m = t.inbox_message
        with self.engine.begin() as conn:
            claimable = or_(m.c.state == PENDING, and_(m.c.state == CLAIMED, m.c.lease_until < ts))
            query = (
                select(m.c.id)
                .where(m.c.event_type.in_(event_types), claimable)
                .order_by(m.c.id)
                .limit(limit)
            )
            if conn.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            ids = list(conn.execute(query).scalars())
            if ids:
                conn.execute(
                    update(m)
                    .where(m.c.id.in_(ids))
                    .values(state=CLAIMED, batch_id=batch_id, lease_until=ts + lease, updated_at=ts)
                )
            rows = conn.execute(
                select(m).where(m.c.batch_id == batch_id, m.c.state == CLAIMED, m.c.event_type.in_(event_types)).order_by(m.c.id)
            ).all()
        return [_claimed(r) for r in rows]

    def claimed_postings(self, batch_id: str, event_types: list[str] | None = None) -> list[ClaimedPosting]:
        """Postings still claimed by ``batch_id`` (not yet done, dead or released)."""
        m = t.inbox_message
        query = select(m).where(m.c.batch_id == batch_id, m.c.state == CLAIMED).order_by(m.c.id)
        if event_types:
            query = query.where(m.c.event_type.in_(event_types))
        with self.engine.connect() as conn:
            return [_claimed(r) for r in conn.execute(query).all()]

    def finish_posting(self, message_id: str, *, outcome: str, state: str = DONE, error: str | None = None) -> None:
        """Close a posting as done (or dead) with the outcome that the run report shows."""
        with self.engine.begin() as conn:
            conn.execute(
                update(t.inbox_message)
                .where(t.inbox_message.c.message_id == message_id)
                .values(state=state, outcome=outcome, last_error=error, lease_until=None, updated_at=now())
            )

    def release_posting(self, message_id: str, *, error: str) -> None:
        """Give a claimed posting back to the queue (the next run retries it) and note why."""
        m = t.inbox_message
        with self.engine.begin() as conn:
            conn.execute(
                update(m)
                .where(m.c.message_id == message_id)
                .values(
                    state=PENDING,
                    outcome="deferred",
                    attempts=m.c.attempts + 1,
                    last_error=error,
                    lease_until=None,
                    updated_at=now(),
                )
            )

    def release_unfinished(self, batch_id: str, *, error: str) -> int:
        """Give back every posting ``batch_id`` still holds (its run ended); returns how many."""
        m = t.inbox_message
        with self.engine.begin() as conn:
            return conn.execute(
                update(m)
                .where(m.c.batch_id == batch_id, m.c.state == CLAIMED)
                .values(state=PENDING, outcome="deferred", last_error=error, lease_until=None, updated_at=now())
            ).rowcount

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
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query).all()]

    # --- orders -------------------------------------------------------------------------------

    def get_order(self, order_code: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(t.ajio_order).where(t.ajio_order.c.order_code == order_code)).first()
        return _order(row) if row else None

    def register_order(
        self,
        *,
        order_code: str,
        po_number: str | None,
        state: str,
        create_message_id: str,
        lines: list[dict[str, Any]],
        total_amount: Decimal,
        erp_request: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """Insert the order if it is new and return the stored row (the first CREATE wins)."""
        ts = now()
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(t.ajio_order).values(
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
                )
        except IntegrityError:
            pass
        order = self.get_order(order_code)
        assert order is not None
        return order

    def update_order(self, order_code: str, **values: Any) -> None:
        with self.engine.begin() as conn:
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
        with self.engine.begin() as conn:
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

    def record_dead_letter(
        self,
        *,
        stage: str,
        reason: str,
        message_id: str | None = None,
        business_key: str | None = None,
        payload: str | None = None,
    ) -> bool:
        """Record something that cannot be processed; the same problem is recorded once. True if new."""
        key_source = f"{message_id}|{reason}" if message_id else f"{payload}|{reason}"
        dedupe_key = hashlib.sha256(key_source.encode()).hexdigest()
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(t.dead_letter).values(
                        stage=stage,
                        dedupe_key=dedupe_key,
                        message_id=message_id,
                        business_key=business_key,
                        reason=reason[:2000],
                        payload=payload[:20000] if payload else None,
                        created_at=now(),
                    )
                )
            return True
        except IntegrityError:
            return False

    def dead_letters(self, stage: str | None = None) -> list[dict[str, Any]]:
        query = select(t.dead_letter).order_by(t.dead_letter.c.id)
        if stage:
            query = query.where(t.dead_letter.c.stage == stage)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query).all()]

    def get_cursor(self, name: str, default: str | None = None) -> str | None:
        with self.engine.connect() as conn:
            value = conn.execute(select(t.sync_cursor.c.value).where(t.sync_cursor.c.name == name)).scalar()
        return default if value is None else value

    def set_cursor(self, name: str, value: str) -> None:
        ts = now()
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(t.sync_cursor).where(t.sync_cursor.c.name == name).values(value=value, updated_at=ts)
            ).rowcount
            if not changed:
                conn.execute(insert(t.sync_cursor).values(name=name, value=value, updated_at=ts))

    # --- reporting ----------------------------------------------------------------------------

    def posting_counts(self) -> dict[tuple[str, str, str | None], int]:
        """Count of postings by (event_type, state, outcome)."""
        m = t.inbox_message
        query = select(m.c.event_type, m.c.state, m.c.outcome, func.count()).group_by(m.c.event_type, m.c.state, m.c.outcome)
        with self.engine.connect() as conn:
            return {(e, s, o): n for e, s, o, n in conn.execute(query).all()}

    def order_counts(self) -> Counter[str]:
        query = select(t.ajio_order.c.state, func.count()).group_by(t.ajio_order.c.state)
        with self.engine.connect() as conn:
            return Counter({s: n for s, n in conn.execute(query).all()})

    def calls(self, idempotency_key: str | None = None) -> list[dict[str, Any]]:
        query = select(t.outbound_call).order_by(t.outbound_call.c.id)
        if idempotency_key:
            query = query.where(t.outbound_call.c.idempotency_key == idempotency_key)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query).all()]

    def postings(self, event_type: str | None = None) -> list[dict[str, Any]]:
        m = t.inbox_message
        query = select(m).order_by(m.c.id)
        if event_type:
            query = query.where(m.c.event_type == event_type)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query).all()]


def _claimed(row: Any) -> ClaimedPosting:
    return ClaimedPosting(
        id=row.id,
        message_id=row.message_id,
        event_type=row.event_type,
        business_key=row.business_key,
        order_code=row.order_code,
        payload=json.loads(row.payload),
        attempts=row.attempts,
    )


def _order(row: Any) -> dict[str, Any]:
    order = dict(row._mapping)
    order["lines"] = json.loads(order["lines"])
    order["erp_request"] = json.loads(order["erp_request"]) if order["erp_request"] else None
    return order


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes for timezone-aware columns; normalise to aware UTC."""
    from datetime import UTC

    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
