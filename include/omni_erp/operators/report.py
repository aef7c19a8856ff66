"""The per-run outcome table that a data engineer reads in the task log."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from omni_erp.operators.base import LedgerOperator
from omni_erp.states import (
    DEAD,
    DOC_CREDIT_NOTE,
    DOC_INVALID,
    DOC_INVOICE,
    DOC_MISMATCH,
    DOC_UNMATCHED,
    DOC_UPLOAD_FAILED,
    PENDING,
)

if TYPE_CHECKING:
    from airflow.sdk import Context


class LedgerBatchReportOperator(LedgerOperator):
    """Close the run's batch: log one line per posting and ERP document it touched and return the counts.

    Meant to run last with ``trigger_rule="all_done"``, so the log always says what happened to every
    order of the run. Postings the run still holds (an upstream task failed) go back to the queue at
    once instead of waiting for their lease to expire.

    It is the DAG's only leaf, and Airflow decides a run's state from its leaves: so after logging it
    fails - the run shows red and the failure alert fires - when any other task of the run failed, or
    when any item of the batch was deferred (posting back in the queue), dead-lettered, or is an ERP
    document that could not be matched or uploaded.

    In a dry run it releases and reads nothing of a batch (there is none): it says "dry run: nothing was sent
    or recorded", logs and returns what each upstream task would have done (their XCom summaries), and fails
    only when an upstream task failed.

    :param fail_on_unfinished: fail when items of the batch were deferred, dead-lettered or failed.
    :param show_rms_waiting: also list the returns waiting for their Increff RMS credit note, with their age (issue 12).
    """

    def __init__(self, *, fail_on_unfinished: bool = True, show_rms_waiting: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail_on_unfinished = fail_on_unfinished
        self.show_rms_waiting = show_rms_waiting

    def execute(self, context: Context) -> dict[str, Any]:
        if self.scope.dry_run:
            return self._dry_run_report(context)
        released = self.ledger.release_unfinished(self.batch_id, error="the run ended before this posting was processed")
        if released:
            self.log.warning("Released %d posting(s) this run did not finish; the next run takes them", released)
        rows = self.ledger.batch_postings(self.batch_id)
        counts = Counter(f"{r['state']}:{r['outcome'] or '-'}" for r in rows)
        if rows:
            self._log_table(f"Outcome of batch {self.batch_id} ({len(rows)} postings)", rows, "last_error")
        else:
            self.log.info("Batch %s touched no postings", self.batch_id)
        documents = [
            {k: d[k] for k in ("doc_type", "doc_number", "order_code", "related_code", "state", "reason")}
            for doc_type in (DOC_INVOICE, DOC_CREDIT_NOTE)
            for d in self.ledger.documents(doc_type, batch_id=self.batch_id)
        ]
        if documents:
            self._log_table(f"ERP documents of batch {self.batch_id} ({len(documents)})", documents, "reason")
        counts.update(f"{d['doc_type']}:{d['state']}" for d in documents)
        if self.show_rms_waiting:
            from omni_erp.operators.rms import rms_waiting_rows

            if waiting := rms_waiting_rows(self.ledger):
                self._log_table(f"Returns waiting for their RMS credit note ({len(waiting)})", waiting, "report")
            counts["rms:reported_to_rms"] = len(waiting)
        self.log.info("Totals: %s", dict(counts))
        problems = self._failed_tasks(context)
        if self.fail_on_unfinished:
            problems += _item_problems(rows, documents)
        if problems:
            raise AirflowFailException("; ".join(problems))
        return {
            "batch_id": self.batch_id,
            "postings": len(rows),
            "documents": len(documents),
            "by_outcome": dict(sorted(counts.items())),
        }

    def _dry_run_report(self, context: Context) -> dict[str, Any]:
        """The report of a dry run: the upstream tasks' summaries; no ledger access at all."""
        tasks = self._upstream_summaries(context)
        self.log.info("dry run: nothing was sent or recorded. What this run would have done, by task:")
        for task_id, summary in tasks.items():
            self.log.info("  %s: %s", task_id, summary)
        problems = self._failed_tasks(context)
        if problems:
            raise AirflowFailException("dry run: " + "; ".join(problems))
        return {"batch_id": self.batch_id, "dry_run": True, "tasks": tasks}

    def _upstream_summaries(self, context: Context) -> dict[str, Any]:
        """Each upstream task's XCom summary (a mapped task's: one per map index, in order); empty outside a run."""
        ti = context.get("ti")
        if ti is None:
            return {}
        summaries: dict[str, Any] = {}
        for task_id in sorted(self.get_flat_relative_ids(upstream=True)):
            value = ti.xcom_pull(task_ids=task_id)
            if value is None or isinstance(value, dict):
                summaries[task_id] = value
            else:  # a mapped task: its values, one per map index
                summaries[task_id] = list(value)
        return summaries

    def _failed_tasks(self, context: Context) -> list[str]:
        """"task(s) X failed in this run", read from Airflow (the report runs after every other task)."""
        ti = context.get("ti")
        if ti is None or not hasattr(ti, "get_task_states"):  # called outside a task runner (unit tests)
            return []
        upstream = sorted(self.get_flat_relative_ids(upstream=True))
        if not upstream:
            return []
        states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id], task_ids=upstream).get(ti.run_id, {})
        failed = sorted(task_id for task_id, state in states.items() if state in FAILED_TASK_STATES)
        if not failed:
            return []
        self.log.error("Task(s) of this run failed: %s", ", ".join(failed))
        return [f"task(s) {', '.join(failed)} failed in this run (see their logs)"]

    def _log_table(self, title: str, rows: list[dict[str, Any]], text_column: str) -> None:
        """Log rows as one aligned table with the free-text column last and in full (``format_table``)."""
        columns = [c for c in rows[0] if c != text_column] + [text_column]
        self.log.info("%s:\n%s", title, format_table(rows, columns))


# What a table shows for a missing value (no id yet, no error): the same mark in every run and column.
BLANK = "-"


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Rows as an aligned plain-text table: a header line, then one line per row.

    Every column but the last is padded to its widest value; the last is written in full (it holds the
    error text, which people need whole), so put free text last. A missing value (``None``, NaN, an
    empty or all-space string, an absent key) is always ``BLANK``; line breaks and other control characters inside a
    value become spaces, so each row stays one line of the log.
    """
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column), *(len(line[i]) for line in cells)]) for i, column in enumerate(columns)]

    def line(values: list[str]) -> str:
        return "  ".join([*(v.ljust(w) for v, w in zip(values[:-1], widths[:-1], strict=True)), values[-1]]).rstrip()

    return "\n".join([line(list(columns)), *(line(values) for values in cells)])


def _cell(value: Any) -> str:
    if value is None or value != value:  # value != value: a float NaN
        return BLANK
    text = "".join(c if c.isprintable() else " " for c in str(value))
    return text if text.strip() else BLANK  # empty or only spaces: the same blank as a missing value


FAILED_TASK_STATES = frozenset({"failed", "upstream_failed"})
# Documents a person must look at: the ERP's document could not be matched or Omni refused it.
FAILED_DOCUMENT_STATES = frozenset({DOC_UPLOAD_FAILED, DOC_UNMATCHED, DOC_MISMATCH, DOC_INVALID})


def _item_problems(rows: list[dict[str, Any]], documents: list[dict[str, Any]]) -> list[str]:
    """One sentence per kind of item this run could not finish, with the first reason."""
    problems = []
    unfinished = [r for r in rows if r["state"] == PENDING]
    if unfinished:
        problems.append(
            f"{len(unfinished)} of {len(rows)} posting(s) were not processed in this run and wait for the next one; "
            f"first reason: {unfinished[0]['last_error']}"
        )
    dead = [r for r in rows if r["state"] == DEAD]
    if dead:
        problems.append(
            f"{len(dead)} of {len(rows)} posting(s) were dead-lettered in this run (see dead_letter); "
            f"first reason: {dead[0]['last_error']}"
        )
    failed_documents = [d for d in documents if d["state"] in FAILED_DOCUMENT_STATES]
    if failed_documents:
        first = failed_documents[0]
        problems.append(
            f"{len(failed_documents)} of {len(documents)} ERP document(s) were not uploaded ({first['doc_type']} "
            f"{first['doc_number']!r}: {first['state']}, {first['reason']})"
        )
    return problems
