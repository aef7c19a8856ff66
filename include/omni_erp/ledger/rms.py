"""Ledger verbs of the RMS credit-note path (issue 12): returns whose e-credit note Increff RMS raises,
and the report files that carried them to RMS.

A mixin of ``Ledger`` (it uses the ledger's ``_read``/``_write``/``_insert_once``), kept apart from
``repo.py`` so the RMS path reads in one place. Every verb joins an open ``ledger.transaction()``.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import func, select, update

from omni_erp.ledger import tables as t
from omni_erp.timeutil import now

if TYPE_CHECKING:
    from sqlalchemy import Connection

# rms_return.state
RMS_TO_REPORT = "to_report"              # booked in the ERP without a credit note; the next report carries it
RMS_REPORTED = "reported_to_rms"         # in a report file; RMS raises the e-credit note from it
RMS_SETTLED = "settled"                  # RMS credit note number recorded
RMS_NOT_REPORTABLE = "not_reportable"    # no line traceable to a forward invoice: settle by hand (reason)

SettleResult = Literal["settled", "already_settled", "conflict", "unknown", "not_reported"]


class ConcurrentReportError(RuntimeError):
    """Another run reported some of the same returns first: this report is rolled back, nothing written twice."""


class RmsLedger:
    """RMS verbs of the ledger (mixed into ``omni_erp.ledger.Ledger``)."""

    # Provided by Ledger.
    def _read(self) -> AbstractContextManager[Connection]: ...  # pragma: no cover
    def _write(self) -> AbstractContextManager[Connection]: ...  # pragma: no cover
    def _insert_once(self, table: Any, **values: Any) -> bool: ...  # pragma: no cover

    def register_rms_return(self, *, return_order_code: str, order_code: str) -> bool:
        """Mark a return as credited through RMS (it waits for the next report); True when new."""
        ts = now()
        return self._insert_once(
            t.rms_return, return_order_code=return_order_code, order_code=order_code, state=RMS_TO_REPORT,
            registered_at=ts, updated_at=ts,
        )

    def get_rms_return(self, return_order_code: str) -> dict[str, Any] | None:
        r = t.rms_return
        with self._read() as conn:
            row = conn.execute(select(r).where(r.c.return_order_code == return_order_code)).first()
        return _row(row) if row else None

    def rms_returns(self, *, state: str | None = None, report_id: int | None = None) -> list[dict[str, Any]]:
        r = t.rms_return
        query = select(r).order_by(r.c.registered_at, r.c.return_order_code)
        if state:
            query = query.where(r.c.state == state)
        if report_id is not None:
            query = query.where(r.c.report_id == report_id)
        with self._read() as conn:
            return [_row(row) for row in conn.execute(query).all()]

    def rms_returns_to_report(self, booked_state: str) -> list[dict[str, Any]]:
        """Returns waiting for a report whose ERP return order is booked (``booked_state``), oldest first."""
        r, ro = t.rms_return, t.return_order
        query = (
            select(r)
            .join(ro, ro.c.return_order_code == r.c.return_order_code)
            .where(r.c.state == RMS_TO_REPORT, ro.c.state == booked_state)
            .order_by(r.c.registered_at, r.c.return_order_code)
        )
        with self._read() as conn:
            return [_row(row) for row in conn.execute(query).all()]

    def next_rms_sequence(self, report_date: str) -> int:
        rep = t.rms_report
        with self._read() as conn:
            last = conn.execute(select(func.max(rep.c.sequence)).where(rep.c.report_date == report_date)).scalar()
        return (last or 0) + 1

    def record_rms_report(
        self,
        *,
        file_name: str,
        report_date: str,
        sequence: int,
        location: str,
        row_count: int,
        unit_count: int,
        content: str,
        return_order_codes: Collection[str],
        batch_id: str | None = None,
    ) -> int:
        """Record a report and mark the returns it carries ``reported_to_rms``; call it inside the
        transaction that also writes the file, so the file and the ledger agree.

        :raises ConcurrentReportError: some return was reported (or the name taken) by another run meanwhile.
        """
        rep, r = t.rms_report, t.rms_return
        ts = now()
        if not self._insert_once(
            rep, file_name=file_name, report_date=report_date, sequence=sequence, location=location,
            row_count=row_count, unit_count=unit_count, content=content, batch_id=batch_id, created_at=ts,
        ):
            raise ConcurrentReportError(f"report {file_name} (or {report_date} number {sequence}) exists already")
        with self._write() as conn:
            report_id = conn.execute(select(rep.c.id).where(rep.c.file_name == file_name)).scalar_one()
            codes = sorted(set(return_order_codes))
            marked = conn.execute(
                update(r)
                .where(r.c.return_order_code.in_(codes), r.c.state == RMS_TO_REPORT)
                .values(state=RMS_REPORTED, report_id=report_id, reported_at=ts, updated_at=ts)
                .returning(r.c.return_order_code)
            ).all()
        if len(marked) != len(codes):
            raise ConcurrentReportError(
                f"{len(codes) - len(marked)} of the {len(codes)} returns of {file_name} were reported by another run"
            )
        return int(report_id)

    def mark_rms_not_reportable(self, return_order_code: str, reason: str) -> bool:
        r = t.rms_return
        with self._write() as conn:
            done = conn.execute(
                update(r)
                .where(r.c.return_order_code == return_order_code, r.c.state == RMS_TO_REPORT)
                .values(state=RMS_NOT_REPORTABLE, reason=reason, updated_at=now())
                .returning(r.c.return_order_code)
            ).all()
        return bool(done)

    def get_rms_report(self, file_name: str) -> dict[str, Any] | None:
        rep = t.rms_report
        with self._read() as conn:
            row = conn.execute(select(rep).where(rep.c.file_name == file_name)).first()
        return _row(row) if row else None

    def rms_reports(self) -> list[dict[str, Any]]:
        rep = t.rms_report
        with self._read() as conn:
            return [_row(row) for row in conn.execute(select(rep).order_by(rep.c.id)).all()]

    def mark_rms_report_rewritten(self, file_name: str) -> None:
        rep = t.rms_report
        with self._write() as conn:
            conn.execute(update(rep).where(rep.c.file_name == file_name).values(rewritten_at=now()))

    def settle_rms_return(self, return_order_code: str, credit_note_number: str) -> SettleResult:
        """Record the credit note RMS raised for a reported return; repeating the same number is harmless."""
        r = t.rms_return
        with self._write() as conn:
            row = conn.execute(select(r).where(r.c.return_order_code == return_order_code)).first()
            if row is None:
                return "unknown"
            if row.state == RMS_SETTLED:
                return "already_settled" if row.rms_credit_note_number == credit_note_number else "conflict"
            if row.state != RMS_REPORTED:
                return "not_reported"
            ts = now()
            conn.execute(
                update(r)
                .where(r.c.return_order_code == return_order_code, r.c.state == RMS_REPORTED)
                .values(state=RMS_SETTLED, rms_credit_note_number=credit_note_number, settled_at=ts, updated_at=ts)
            )
        return "settled"

    def posting_payload(self, message_id: str) -> dict[str, Any] | None:
        """The raw JSON Omni sent for a posting (fields our models do not read are kept in it)."""
        m = t.inbox_message
        with self._read() as conn:
            raw = conn.execute(select(m.c.payload).where(m.c.message_id == message_id)).scalar()
        return json.loads(raw) if raw else None


def iter_waiting(rows: list[dict[str, Any]], at: datetime) -> Iterator[tuple[dict[str, Any], float]]:
    """``(row, age in hours)`` of reported returns still waiting for their RMS credit note."""
    for row in rows:
        since = row["reported_at"] or row["registered_at"]
        yield row, (at - since).total_seconds() / 3600


def _row(row: Any) -> dict[str, Any]:
    """Row as a dict with aware UTC datetimes (SQLite hands back naive ones)."""
    return {
        k: (v.replace(tzinfo=UTC) if isinstance(v, datetime) and v.tzinfo is None else v) for k, v in row._mapping.items()
    }
