"""The per-run outcome table that a data engineer reads in the task log."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from omni_erp.operators.base import LedgerOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class LedgerBatchReportOperator(LedgerOperator):
    """Log one line per posting this run touched (state, outcome, ERP id, error) and return the counts.

    Runs even when an upstream task failed (use ``trigger_rule="all_done"``), so the log always says
    what happened to every order of the run.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        import pandas as pd

        rows = self.ledger.batch_postings(self.batch_id)
        counts = Counter(f"{r['state']}:{r['outcome'] or '-'}" for r in rows)
        if rows:
            table = pd.DataFrame(rows)
            table["last_error"] = table["last_error"].fillna("").str.slice(0, 80)
            with pd.option_context("display.max_rows", 1000, "display.width", 250, "display.max_colwidth", 80):
                self.log.info("Outcome of batch %s (%d postings):\n%s", self.batch_id, len(rows), table.to_string(index=False))
        else:
            self.log.info("Batch %s touched no postings", self.batch_id)
        self.log.info("Totals: %s", dict(counts))
        return {"batch_id": self.batch_id, "postings": len(rows), "by_outcome": dict(sorted(counts.items()))}
