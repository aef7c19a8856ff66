"""Ledger verbs of the document upload operators (F2, F6): the upload queue read a page at a time, and the
per-document take and outcome writes as single prepared statements (issue 8: CPU per upload).

A mixin of ``Ledger`` (it uses the ledger's ``_read`` and ``_write``), kept apart from ``repo.py``. The reads
replace, per page of documents, what the operators used to read per document (the document again, its
order twice, its open cancellations); the writes are the same state changes as ``update_document``, each
still its own transaction, built once instead of per call.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import DateTime, bindparam, select, update

from omni_erp.ledger import tables as t
from omni_erp.states import CLAIMED, DOC_SKIPPED, DOC_UPLOADED, PENDING
from omni_erp.timeutil import now

if TYPE_CHECKING:
    from sqlalchemy import Connection

# Documents per read of the upload queue: the documents of a page, their orders and their open
# cancellations are three queries; memory stays bounded however long the queue.
UPLOAD_PAGE_SIZE = 200

_d = t.erp_document
# Compare-and-set: the document is taken for one upload attempt only while it is exactly as the queue read it
# (same state, same attempt count), so a document another run or try took, uploaded or changed meanwhile is
# never sent twice. Built once: building the statement cost more CPU than running it.
_AS_READ = (
    _d.c.doc_type == bindparam("b_doc_type"),
    _d.c.doc_number == bindparam("b_doc_number"),
    _d.c.state == bindparam("b_state"),
    _d.c.upload_attempts == bindparam("b_attempts"),
)
_TAKE = (
    update(_d)
    .where(*_AS_READ)
    .values(upload_attempts=_d.c.upload_attempts + 1, batch_id=bindparam("b_batch_id"), updated_at=bindparam("b_ts"))
)
_SKIP = (
    update(_d)
    .where(*_AS_READ)
    .values(state=DOC_SKIPPED, reason=bindparam("b_reason"), batch_id=bindparam("b_batch_id"), updated_at=bindparam("b_ts"))
)
_UPLOADED = (
    update(_d)
    .where(_d.c.doc_type == bindparam("b_doc_type"), _d.c.doc_number == bindparam("b_doc_number"))
    .values(
        state=DOC_UPLOADED, uploaded_at=bindparam("b_ts"), reason=None, batch_id=bindparam("b_batch_id"),
        updated_at=bindparam("b_ts"),
    )
)

_TIMESTAMPS = tuple(c.name for c in _d.columns if isinstance(c.type, DateTime))


def _aware(value: Any) -> Any:
    """SQLite hands back naive datetimes for timezone-aware columns: aware UTC, as the ledger's other reads."""
    return value.replace(tzinfo=UTC) if isinstance(value, datetime) and value.tzinfo is None else value


class DocumentUploadLedger:
    """The upload queue and the per-document writes of an upload (mixed into ``omni_erp.ledger.Ledger``)."""

    # Provided by Ledger.
    def _read(self) -> AbstractContextManager[Connection]: ...  # pragma: no cover
    def _write(self) -> AbstractContextManager[Connection]: ...  # pragma: no cover

    def upload_queue(
        self, doc_type: str, *, states: Sequence[str], page_size: int = UPLOAD_PAGE_SIZE
    ) -> Iterator[list[dict[str, Any]]]:
        """Documents of ``doc_type`` in ``states``, oldest feed position first (as ``documents``), a page at a time.

        The queue's order is read once (ids only); each page is then read whole, without the documents that
        left ``states`` since (another run uploaded them). A page holds the rows as ``get_document`` returns them.
        """
        d = _d
        order = select(d.c.id).where(d.c.doc_type == doc_type, d.c.state.in_(list(states))).order_by(d.c.seq, d.c.id)
        with self._read() as conn:
            ids = list(conn.scalars(order))
        for start in range(0, len(ids), page_size):
            chunk = ids[start : start + page_size]
            query = select(d).where(d.c.id.in_(chunk), d.c.state.in_(list(states)))
            with self._read() as conn:
                rows = {row.id: row for row in conn.execute(query)}
            page = []
            for doc_id in chunk:
                if (row := rows.get(doc_id)) is not None:
                    # A plain dict of the row, then only the timestamp columns made aware (RowMapping.items and a
                    # check of every value cost 8 % of an upload's CPU).
                    document = dict(zip(row._fields, row, strict=True))
                    for name in _TIMESTAMPS:
                        document[name] = _aware(document[name])
                    document["payload"] = json.loads(document["payload"])
                    page.append(document)
            if page:
                yield page

    def orders_by_code(self, order_codes: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The orders among ``order_codes`` the ledger holds, by code, each as ``get_order`` returns it (one query)."""
        from omni_erp.ledger.repo import _order

        codes = sorted({c for c in order_codes if c})
        if not codes:
            return {}
        with self._read() as conn:
            rows = conn.execute(select(t.ajio_order).where(t.ajio_order.c.order_code.in_(codes))).all()
        return {row.order_code: _order(row) for row in rows}

    def orders_with_open_postings(self, order_codes: Sequence[str], event_type: str) -> set[str]:
        """Those of ``order_codes`` with a posting of ``event_type`` stored but not processed yet
        (``has_open_posting`` for many orders in one query)."""
        codes = sorted({c for c in order_codes if c})
        if not codes:
            return set()
        m = t.inbox_message
        query = (
            select(m.c.order_code)
            .where(m.c.order_code.in_(codes), m.c.event_type == event_type, m.c.state.in_([PENDING, CLAIMED]))
            .distinct()
        )
        with self._read() as conn:
            return set(conn.scalars(query))

    def take_document(self, doc_type: str, doc_number: str, *, state: str, attempts: int, batch_id: str | None) -> bool:
        """Count one upload attempt of the document for ``batch_id`` if it is still in ``state`` with ``attempts``
        attempts (compare-and-set, one statement); False when anything changed it since it was read."""
        values = {
            "b_doc_type": doc_type, "b_doc_number": doc_number, "b_state": state, "b_attempts": attempts,
            "b_batch_id": batch_id, "b_ts": now(),
        }
        with self._write() as conn:
            return conn.execute(_TAKE, values).rowcount == 1

    def skip_document(
        self, doc_type: str, doc_number: str, *, state: str, attempts: int, reason: str, batch_id: str | None
    ) -> bool:
        """Mark the document ``skipped`` with the reason if it is still as the queue read it (compare-and-set, as
        ``take_document``; no attempt counted); False when anything changed it since."""
        values = {
            "b_doc_type": doc_type, "b_doc_number": doc_number, "b_state": state, "b_attempts": attempts,
            "b_reason": reason, "b_batch_id": batch_id, "b_ts": now(),
        }
        with self._write() as conn:
            return conn.execute(_SKIP, values).rowcount == 1

    def mark_document_uploaded(self, doc_type: str, doc_number: str, *, batch_id: str | None) -> None:
        """Omni accepted the document: ``uploaded`` now, no reason (``update_document`` with those values)."""
        values = {"b_doc_type": doc_type, "b_doc_number": doc_number, "b_batch_id": batch_id, "b_ts": now()}
        with self._write() as conn:
            conn.execute(_UPLOADED, values)
