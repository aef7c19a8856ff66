"""Ledger reads that pick a run's ERP documents and RMS returns by its scope (issue 10.5/10.6, ``run_scope``).

A mixin of ``Ledger`` (it uses the ledger's ``_read``), kept apart from ``repo.py`` so the document side of
the run scope reads in one place. Read only: a real run re-checks each document's state before it acts,
and a dry run acts on nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, or_, select

from omni_erp.ledger import tables as t
from omni_erp.ledger.rms import RMS_TO_REPORT
from omni_erp.states import DOC_CREDIT_NOTE

if TYPE_CHECKING:
    from sqlalchemy import Connection

Window = tuple[datetime, datetime]


def utc_window(window: Window | None) -> Window | None:
    """The window in UTC: the ledger stores UTC, and SQLite compares the wall time it is given."""
    if window is None:
        return None
    start, end = window
    return start.astimezone(UTC), end.astimezone(UTC)


def _aware(row: Any) -> dict[str, Any]:
    """Row as a dict with aware UTC datetimes (SQLite hands back naive ones), as the ledger's other reads."""
    return {k: v.replace(tzinfo=UTC) if isinstance(v, datetime) and v.tzinfo is None else v for k, v in row._mapping.items()}


class DocumentScopeLedger:
    """Scope-aware selections of ERP documents and RMS returns (mixed into ``omni_erp.ledger.Ledger``)."""

    # Provided by Ledger.
    def _read(self) -> AbstractContextManager[Connection]: ...  # pragma: no cover

    def select_documents(
        self,
        doc_type: str,
        *,
        states: Sequence[str],
        order_codes: Sequence[str] = (),
        window: Window | None = None,
    ) -> list[dict[str, Any]]:
        """Documents of ``doc_type`` in ``states``, oldest feed position first, restricted to a run's scope.

        ``order_codes``: only documents of these orders (a credit note also by its return order code, as
        postings match their business key); ``window``: only documents recorded (``created_at``, when we
        first read them from the feed) at ``start <= t < end``. Both: the intersection; neither: every
        document in ``states``.
        """
        d = t.erp_document
        conditions = [d.c.doc_type == doc_type, d.c.state.in_(list(states))]
        if order_codes:
            codes = list(order_codes)
            by_order = d.c.order_code.in_(codes)
            conditions.append(
                or_(by_order, d.c.related_code.in_(codes)) if doc_type == DOC_CREDIT_NOTE else by_order
            )
        if (bounds := utc_window(window)) is not None:
            conditions += [d.c.created_at >= bounds[0], d.c.created_at < bounds[1]]
        query = select(d).where(and_(*conditions)).order_by(d.c.seq, d.c.id)
        with self._read() as conn:
            return [{**_aware(r), "payload": json.loads(r.payload)} for r in conn.execute(query).all()]

    def select_rms_returns_to_report(
        self,
        booked_state: str,
        *,
        order_codes: Sequence[str] = (),
        window: Window | None = None,
    ) -> list[dict[str, Any]]:
        """``RmsLedger.rms_returns_to_report`` restricted to a run's scope, oldest first.

        ``order_codes`` match the forward order or the return order code; ``window`` is on ``registered_at``
        (when F5 recorded the return as credited through RMS).
        """
        r, ro = t.rms_return, t.return_order
        conditions = [r.c.state == RMS_TO_REPORT, ro.c.state == booked_state]
        if order_codes:
            codes = list(order_codes)
            conditions.append(or_(r.c.order_code.in_(codes), r.c.return_order_code.in_(codes)))
        if (bounds := utc_window(window)) is not None:
            conditions += [r.c.registered_at >= bounds[0], r.c.registered_at < bounds[1]]
        query = (
            select(r)
            .join(ro, ro.c.return_order_code == r.c.return_order_code)
            .where(and_(*conditions))
            .order_by(r.c.registered_at, r.c.return_order_code)
        )
        with self._read() as conn:
            return [_aware(row) for row in conn.execute(query).all()]
