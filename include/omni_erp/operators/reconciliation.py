"""Operators of the reconciliation DAG (issue 10 items 4 and 7): business SLA alerts and the daily reconciliation.

Both read the ledger (``omni_erp.ledger.queries``) and hand the rows to pure rules (``omni_erp.rules.sla``,
``omni_erp.rules.reconciliation``); what they add is I/O: reading the ERP's feeds, sending alerts, writing files.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omni_erp.operators.base import ErpOperator, LedgerOperator, _error_text, _ledger_unreachable
from omni_erp.states import DOC_CREDIT_NOTE, DOC_INVOICE, DOC_UPLOAD_FAILED
from omni_erp.timeutil import IST, now

if TYPE_CHECKING:
    from airflow.sdk import Context

    from omni_erp.ledger.queries import ReconciliationQueries
    from omni_erp.rules.reconciliation import ErpFeeds, OmniState
    from omni_erp.rules.sla import SlaSettings

OUTPUT_FOLDER_ENV = "OMNI_ERP_RECONCILIATION_FOLDER"
OUTPUT_CONN_ENV = "OMNI_ERP_RECONCILIATION_CONN_ID"
OMNI_STATE_URL_ENV = "OMNI_ERP_OMNI_STATE_URL"


def _queries(operator: LedgerOperator) -> ReconciliationQueries:
    from omni_erp.ledger.queries import ReconciliationQueries

    return ReconciliationQueries(operator.ledger)


def send_alert(message: dict[str, Any]) -> bool:
    """Send one alert through the alert channel (``omni_erp.notifiers``); True when delivered, or when no
    channel is configured (the ERROR log line is then the alert, and re-sending it would only repeat it)."""
    from omni_erp.alerts import ALERTS_CONN_ID
    from omni_erp.connections import get_connection
    from omni_erp.notifiers import AlertNotifier

    logging.getLogger(__name__).error("Business SLA alert: %s", message["text"])
    if get_connection(ALERTS_CONN_ID) is None:
        return True
    return AlertNotifier().deliver(message)


def _positive(value: Any, name: str) -> float:
    """A templated number as a positive float; anything else is a clear error naming the parameter."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not number > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return number


class SlaAlertOperator(LedgerOperator):
    """Evaluate the business SLA rules and alert each breach once (``omni_erp.rules.sla``).

    One alert per rule with new breaches, listing their order codes; breaches alerted earlier are counted,
    not re-sent; a subject that stops breaching is closed (``sla_breach.cleared_at``), so a new breach of it
    alerts again. An alert is recorded only after it was sent: if sending fails, the rule's breaches stay
    new and the next run sends them, and this task fails after trying the other rules.

    :param einvoice_upload_minutes: how long an order may wait for its e-invoice at Omni (default 30).
    :param irn_cancel_warning_hours: alert when an IRN has at most this long left of its 24-hour window.
    :param irp_limit_warning_days: alert when a document is at most this long from the IRP's 30-day limit.
    """

    template_fields = (*LedgerOperator.template_fields, "einvoice_upload_minutes", "irn_cancel_warning_hours",
                       "irp_limit_warning_days")

    def __init__(
        self,
        *,
        einvoice_upload_minutes: float | str = 30,
        irn_cancel_warning_hours: float | str = 4,
        irp_limit_warning_days: float | str = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.einvoice_upload_minutes = einvoice_upload_minutes
        self.irn_cancel_warning_hours = irn_cancel_warning_hours
        self.irp_limit_warning_days = irp_limit_warning_days

    def sla_settings(self) -> SlaSettings:
        """The thresholds as rendered from the trigger form.

        :raises ValueError: a threshold is not a positive number, or lies outside its window.
        """
        from omni_erp.rules.sla import SlaSettings

        return SlaSettings(
            einvoice_upload_after=timedelta(minutes=_positive(self.einvoice_upload_minutes, "einvoice_upload_minutes")),
            irn_cancel_warning=timedelta(hours=_positive(self.irn_cancel_warning_hours, "irn_cancel_warning_hours")),
            irp_limit_warning=timedelta(days=_positive(self.irp_limit_warning_days, "irp_limit_warning_days")),
        )

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from omni_erp.rules import sla

        settings, at, queries = self.sla_settings(), now(), _queries(self)
        breaches = sla.evaluate(
            at=at,
            settings=settings,
            awaiting_upload=queries.orders_awaiting_upload(),
            rejected_uploads=[d for doc_type in (DOC_INVOICE, DOC_CREDIT_NOTE)
                              for d in self.ledger.documents(doc_type, states=[DOC_UPLOAD_FAILED])],
            pending_cancellations=queries.pending_cancellations(),
            unregistered_documents=queries.unregistered_documents(),
            dead_letters=queries.unresolved_dead_letters(),
        )
        plan = sla.plan_alerts(breaches, queries.open_sla_breaches())
        failed: list[str] = []
        for rule, new in plan.new.items():
            message = sla.alert_message(rule, new, plan.still_open.get(rule, 0))
            try:
                delivered = send_alert(message)
            except Exception as exc:
                if _ledger_unreachable(exc):
                    raise
                # Any other failure (webhook misconfigured, ...) is the alert's, not the run's.
                self.log.error("Could not send the %s alert: %s", rule, _error_text(exc))
                delivered = False
            if not delivered:
                self.log.error("The %s alert (%d breach(es)) was not delivered; the next run sends it", rule, len(new))
                failed.append(rule)
                continue
            queries.record_sla_alert(rule, {b.subject: (b.order_code, b.detail) for b in new}, at=at)
        for rule, subjects in plan.cleared.items():
            queries.clear_sla_breaches(rule, subjects, at=at)
            self.log.info("%s: %d earlier breach(es) no longer breach", rule, len(subjects))
        summary = {
            "breaches": {rule: sum(1 for b in breaches if b.rule == rule) for rule in sla.RULES},
            "alerted": {rule: len(new) for rule, new in plan.new.items() if rule not in failed},
            "still_open": dict(plan.still_open),
            "cleared": {rule: len(subjects) for rule, subjects in plan.cleared.items()},
        }
        self.log.info("SLA check: %s", summary)
        if failed:
            raise AirflowFailException(f"alerts for {', '.join(failed)} could not be sent; the next run sends them. {summary}")
        return summary


class ReconciliationReportOperator(ErpOperator):
    """Reconcile the ledger with the ERP and Omni and write the result as CSV files and one HTML page.

    The files go to ``<output_folder>/<date>_<run>/`` (``figures.csv``, ``differences.csv``, ``open_items.csv``,
    ``manual_settlements.csv``, ``dead_letters.csv``, ``duplicates.csv``, ``reconciliation.html``); the folder
    is an object-storage URL (``s3://bucket/prefix``, ``file:///...``: Airflow's ``ObjectStoragePath``, with
    ``output_conn_id``) or a local path. The HTML page's path is logged and returned in XCom with the key figures.

    If the ERP's feeds (or the Omni state, when ``omni_state_url`` is set) cannot be read, the report is still
    written with that side left empty and a note, and the task then fails so the run shows it.

    :param output_folder: where to write; default ``$OMNI_ERP_RECONCILIATION_FOLDER``, else ``$AIRFLOW_HOME/reconciliation``.
    :param output_conn_id: connection for an object-storage folder; default ``$OMNI_ERP_RECONCILIATION_CONN_ID``.
    :param erp_from_seq: read the ERP's feeds after this sequence number (0: all of them).
    :param omni_state_url: a URL answering the Omni sandbox's ``/_sandbox/state`` shape (test and demo stacks;
        Increff offers no query API), default ``$OMNI_ERP_OMNI_STATE_URL``; empty: Omni's side is the
        acknowledgements recorded in the ledger.
    :param max_erp_documents: stop reading a feed after this many documents (the counts are then lower bounds).
    """

    template_fields = (*ErpOperator.template_fields, "output_folder", "erp_from_seq", "omni_state_url")

    def __init__(
        self,
        *,
        output_folder: str | None = None,
        output_conn_id: str | None = None,
        erp_from_seq: int | str = 0,
        omni_state_url: str | None = None,
        max_erp_documents: int = 200_000,
        page_size: int = 500,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.output_folder = output_folder
        self.output_conn_id = output_conn_id
        self.erp_from_seq = erp_from_seq
        self.omni_state_url = omni_state_url
        self.max_erp_documents = max_erp_documents
        self.page_size = page_size

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from omni_erp.rules.reconciliation import csv_files, html_page, reconcile

        from_seq = _from_seq(self.erp_from_seq)
        at = now()
        snapshot = self._snapshot()
        erp, erp_problem = self._read_erp(from_seq)
        omni, omni_problem = self._read_omni_state()
        report = reconcile(snapshot, at=at, erp=erp, omni=omni, erp_problem=erp_problem)
        if omni_problem:
            report.notes.append(f"The Omni state could not be read ({omni_problem}): Omni's column shows acknowledgements.")
        run_id = str(context.get("run_id") or self.batch_id)
        folder = self._run_folder(at, run_id)
        files = {**csv_files(report), "reconciliation.html": html_page(report, title=f"omni-erp reconciliation {run_id}")}
        written = _write_files(folder, files)
        figures = report.key_figures()
        self.log.info("Reconciliation written to %s; open %s", folder, written["reconciliation.html"])
        from omni_erp.operators.report import format_table

        self.log.info("Counts per flow:\n%s", format_table(report.figures, ["flow", "ledger", "erp", "omni", "check", "measure"]))
        if report.differences:
            self.log.warning("%d document(s) differ:\n%s", len(report.differences),
                             format_table(report.differences, ["flow", "doc_type", "doc_number", "order_code", "difference"]))
        self.log.info("Key figures: %s", figures)
        result = {"folder": str(folder), "html": written["reconciliation.html"], **figures}
        problems = [p for p in (erp_problem and f"ERP feeds not read: {erp_problem}",
                                omni_problem and f"Omni state not read: {omni_problem}") if p]
        if problems:
            raise AirflowFailException(f"reconciliation written to {folder} without a side: {'; '.join(problems)}")
        return result

    def _snapshot(self) -> Any:
        from omni_erp.rules.reconciliation import LedgerSnapshot

        queries, ledger = _queries(self), self.ledger
        return LedgerSnapshot(
            posting_counts=queries.counts_by("inbox_message", "event_type", "state", "outcome"),
            order_counts=queries.counts_by("ajio_order", "state", "cancel_route"),
            return_counts=queries.counts_by("return_order", "kind", "state"),
            documents=queries.document_index(),
            open_orders=queries.open_orders(),
            open_postings=queries.open_postings(),
            open_documents=queries.open_documents(),
            open_returns=queries.open_return_orders(),
            manual_settlements=ledger.manual_settlements(),
            dead_letters=queries.unresolved_dead_letters(),
            omni_acknowledged=queries.successful_calls_by_key("omni"),
            erp_answered=queries.successful_calls_by_key("erp", more_than=1),
            orders_with_erp_order=queries.orders_with_erp_order(),
            rms_open=[r for r in ledger.rms_returns() if r["state"] != "settled"],
        )

    def _read_erp(self, from_seq: int) -> tuple[ErpFeeds | None, str | None]:
        """Both document feeds of the ERP after ``from_seq``; (None, why) when the ERP cannot be read."""
        from omni_erp.rules.reconciliation import ErpFeeds

        documents: dict[str, dict[str, dict[str, Any]]] = {}
        unreadable, truncated = 0, False
        feeds: list[tuple[str, Callable[..., Any], str]] = [
            (DOC_INVOICE, self.erp.einvoices_since, "invoice_number"),
            (DOC_CREDIT_NOTE, self.erp.credit_notes_since, "credit_note_number"),
        ]
        try:
            for doc_type, read_page, number_field in feeds:
                listed: dict[str, dict[str, Any]] = {}
                since = from_seq
                while True:
                    page = read_page(since, limit=self.page_size)
                    for item in page.items:
                        listed[getattr(item, number_field)] = {
                            "order_code": item.order_code, "status": getattr(item, "status", None), "seq": item.seq,
                        }
                    unreadable += len(page.unreadable)
                    if len(listed) >= self.max_erp_documents:
                        truncated = True
                        break
                    if len(page.items) + len(page.unreadable) < self.page_size or page.next_cursor <= since:
                        break
                    since = page.next_cursor
                documents[doc_type] = listed
        except Exception as exc:
            if _ledger_unreachable(exc):
                raise  # the ledger is unreachable (the ERP's answers are recorded in it)
            self.log.error("Could not read the ERP's feeds: %s", _error_text(exc))
            return None, _error_text(exc)
        return ErpFeeds(documents=documents, from_seq=from_seq, unreadable=unreadable, truncated=truncated), None

    def _read_omni_state(self) -> tuple[OmniState | None, str | None]:
        """The Omni sandbox's state when ``omni_state_url`` is set (10 s timeout, 3 attempts)."""
        url = (self.omni_state_url or os.environ.get(OMNI_STATE_URL_ENV) or "").strip()
        if not url or url == "None":
            return None, None
        import requests

        from omni_erp.rules.reconciliation import OmniState

        problem = ""
        for attempt in range(3):
            try:
                response = requests.get(url, timeout=10)
                response.raise_for_status()
                state = response.json()
                return OmniState(
                    documents={
                        "invoice": {d["body"]["invoiceNumber"] for d in state.get("invoices", [])},
                        "credit_note": {d["body"]["creditNoteNumber"] for d in state.get("credit_notes", [])},
                    },
                    duplicates=dict(state.get("duplicates") or {}),
                ), None
            except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
                problem = _error_text(exc)
                self.log.warning("Omni state not read (attempt %d of 3): %s", attempt + 1, problem)
        return None, problem

    def _run_folder(self, at: Any, run_id: str) -> Any:
        base = (self.output_folder or os.environ.get(OUTPUT_FOLDER_ENV) or "").strip()
        if not base or base == "None":
            base = str(Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow")) / "reconciliation")
        name = f"{at.astimezone(IST):%Y-%m-%d_%H%M}_{re.sub(r'[^A-Za-z0-9._-]+', '_', run_id)[:120]}"
        if "://" in base:
            from airflow.sdk import ObjectStoragePath

            conn_id = self.output_conn_id or os.environ.get(OUTPUT_CONN_ENV) or None
            return ObjectStoragePath(base, conn_id=conn_id) / name
        return Path(base) / name


def _from_seq(value: Any) -> int:
    if value in (None, "", "None"):
        return 0
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"erp_from_seq must be a whole number >= 0, got {value!r}") from None
    if number < 0:
        raise ValueError(f"erp_from_seq must be a whole number >= 0, got {value!r}")
    return number


def _write_files(folder: Any, files: dict[str, str]) -> dict[str, str]:
    """Write every file into ``folder`` (a ``Path`` or ``ObjectStoragePath``); returns name -> where.

    A local file is written beside its place and renamed into it, so a reader never sees half a file; the
    HTML page, which names the run's result, is written last.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in sorted(files, key=lambda n: n.endswith(".html")):
        target = folder / name
        if isinstance(folder, Path):
            partial = folder / f".{name}.partial"
            partial.write_text(files[name], encoding="utf-8")
            partial.replace(target)
        else:
            with target.open("w", encoding="utf-8") as handle:
                handle.write(files[name])
        written[name] = str(target)
    return written
