"""The per-run outcome table that a data engineer reads in the task log."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from omni_erp.operators.base import LedgerOperator
from omni_erp.states import DOC_CREDIT_NOTE, DOC_INVOICE, PENDING

if TYPE_CHECKING:
    from airflow.sdk import Context


class LedgerBatchReportOperator(LedgerOperator):
    """Close the run's batch: log one line per posting and ERP document it touched and return the counts.

    Meant to run last with ``trigger_rule="all_done"``, so the log always says what happened to every
    order of the run. Postings the run still holds (an upstream task failed) go back to the queue at
    once instead of waiting for their lease to expire. When any posting of the batch is left
    unprocessed the task fails after logging, so the run shows red and alerts fire.

    :param fail_on_unfinished: fail when postings of the batch were deferred to a later run.
    """

    def __init__(self, *, fail_on_unfinished: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail_on_unfinished = fail_on_unfinished

    def execute(self, context: Context) -> dict[str, Any]:
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
        self.log.info("Totals: %s", dict(counts))
        unfinished = [r for r in rows if r["state"] == PENDING]
        if unfinished and self.fail_on_unfinished:
            raise AirflowFailException(
                f"{len(unfinished)} of {len(rows)} posting(s) were not processed in this run and wait for the next one; "
                f"first reason: {unfinished[0]['last_error']}"
            )
        return {
            "batch_id": self.batch_id,
            "postings": len(rows),
            "documents": len(documents),
            "by_outcome": dict(sorted(counts.items())),
        }

    def _log_table(self, title: str, rows: list[dict[str, Any]], text_column: str) -> None:
        """Log rows as one aligned table, the free-text column cut to 80 characters."""
        import pandas as pd

        table = pd.DataFrame(rows)
        table[text_column] = table[text_column].fillna("").str.slice(0, 80)
        with pd.option_context("display.max_rows", 1000, "display.width", 250, "display.max_colwidth", 80):
            self.log.info("%s:\n%s", title, table.to_string(index=False))
