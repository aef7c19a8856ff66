"""Ledger verbs of the alerts (issue 10): one alert per failed run, outages summarised rather than re-sent.

``AlertBook.run_failed`` decides, in one transaction, whether a failed run's alert is sent:

* a run alerts once: the first failing task records the run, later ones of the same run are duplicates;
* failures with the same incident key (``erp_unavailable``, ``omni_unavailable``, ``failed:<dag_id>``, ...)
  less than ``quiet_gap`` apart form one incident: its first run is alerted, the following ones are
  counted, and at most every ``repeat_after`` one summary goes out ("ERP down since 12:05, 6 runs failed");
* a deadline alert is sent only for a run that has not alerted as failed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import select, text, update

from omni_erp.ledger import tables as t

Outcome = Literal["sent", "summarised", "suppressed", "duplicate_run"]
KIND_FAILED = "failed"
KIND_DEADLINE = "deadline"


@dataclass(frozen=True)
class AlertDecision:
    """What to do with one failed run's alert, and the incident it belongs to.

    :param outcome: ``sent`` (first of its incident), ``summarised`` (a summary is due), ``suppressed``
        (counted, not sent) or ``duplicate_run`` (this run already alerted).
    """

    outcome: Outcome
    incident_key: str
    incident_id: int | None = None
    since: datetime | None = None
    runs_failed: int = 0
    runs_by_dag: dict[str, int] = field(default_factory=dict)

    @property
    def send(self) -> bool:
        return self.outcome in ("sent", "summarised")


class AlertBook:
    """Alert records over a ledger engine (``Ledger.from_conn_id().engine``).

    :param engine: SQLAlchemy engine of the ledger, schema migrated.
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def run_failed(
        self,
        dag_id: str,
        run_id: str,
        incident_key: str,
        reason: str,
        *,
        now: datetime,
        repeat_after: timedelta,
        quiet_gap: timedelta,
    ) -> AlertDecision:
        """Record that run ``run_id`` of ``dag_id`` failed and decide whether to send an alert (see module doc)."""
        run, incident = t.alert_run, t.alert_incident
        with self.engine.begin() as conn:
            _serialise(conn)
            inserted = conn.execute(
                _insert_ignoring_conflicts(conn, run).values(
                    dag_id=dag_id, run_id=run_id, kind=KIND_FAILED, outcome="suppressed", reason=reason[:2000], created_at=now
                )
            ).first()
            if inserted is None:
                return AlertDecision("duplicate_run", incident_key)
            current = conn.execute(
                select(incident)
                .where(incident.c.incident_key == incident_key, incident.c.last_seen >= now - quiet_gap)
                .order_by(incident.c.id.desc())
                .limit(1)
            ).first()
            if current is None:
                incident_id = conn.execute(
                    incident.insert()
                    .values(
                        incident_key=incident_key, first_seen=now, last_seen=now, runs_failed=1, alerts_sent=1,
                        last_sent_at=now, last_reason=reason[:2000],
                    )
                    .returning(incident.c.id)
                ).scalar_one()
                outcome: Outcome = "sent"
                since, runs_failed = now, 1
            else:
                incident_id, since, runs_failed = current.id, _aware(current.first_seen), current.runs_failed + 1
                due = now - _aware(current.last_sent_at) >= repeat_after
                outcome = "summarised" if due else "suppressed"
                conn.execute(
                    update(incident)
                    .where(incident.c.id == incident_id)
                    .values(
                        last_seen=now, runs_failed=runs_failed, last_reason=reason[:2000],
                        **({"alerts_sent": incident.c.alerts_sent + 1, "last_sent_at": now} if due else {}),
                    )
                )
            conn.execute(
                update(run)
                .where(run.c.dag_id == dag_id, run.c.run_id == run_id, run.c.kind == KIND_FAILED)
                .values(incident_id=incident_id, outcome=outcome)
            )
            by_dag = Counter(
                row.dag_id for row in conn.execute(
                    select(run.c.dag_id).where(run.c.incident_id == incident_id, run.c.kind == KIND_FAILED)
                )
            )
        return AlertDecision(outcome, incident_key, incident_id, since, runs_failed, dict(sorted(by_dag.items())))

    def deadline_missed(self, dag_id: str, run_id: str, *, now: datetime) -> bool:
        """Record a deadline alert for the run; False when the run already alerted (failed, or a deadline before)."""
        run = t.alert_run
        with self.engine.begin() as conn:
            _serialise(conn)
            already = conn.execute(
                select(run.c.kind).where(run.c.dag_id == dag_id, run.c.run_id == run_id).limit(1)
            ).first()
            if already is not None:
                return False
            conn.execute(
                run.insert().values(dag_id=dag_id, run_id=run_id, kind=KIND_DEADLINE, outcome="sent", created_at=now)
            )
        return True

    def runs(self, dag_id: str | None = None) -> list[dict[str, Any]]:
        """Every recorded alert run (for tests and for a person reading the ledger)."""
        query = select(t.alert_run).order_by(t.alert_run.c.created_at)
        if dag_id is not None:
            query = query.where(t.alert_run.c.dag_id == dag_id)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]


def _serialise(conn: Any) -> None:
    """Alert decisions are rare and read-then-write: take one lock (SQLite's BEGIN IMMEDIATE already does)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(727276)"))


def _insert_ignoring_conflicts(conn: Any, table: Any) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    return dialect_insert(table).on_conflict_do_nothing().returning(*table.primary_key.columns)


def _aware(value: datetime) -> datetime:
    """SQLite gives naive datetimes back; the ledger stores UTC."""
    from datetime import UTC

    return value if value.tzinfo else value.replace(tzinfo=UTC)
