"""One alert per failed run on real Airflow (issue 10.3): ``dag.test()`` runs the task runner, which calls each
failed task's ``on_failure_callback`` - here two tasks fail in each run (``upload_invoices`` and then
``report_outcome``), which used to send two alerts per run, every run, for as long as Omni was down.
"""

from __future__ import annotations

import pytest

from omni_erp.ledger import Ledger
from omni_erp.ledger.alerts import AlertBook
from tests.flows import book, create_posting, wait_for_einvoices

pytestmark = pytest.mark.integration


def test_an_omni_outage_sends_one_alert_for_two_red_runs(erp, omni, ledger_path, run_dag, webhook):
    ledger = Ledger.sqlite(ledger_path)
    book(ledger, create_posting(1, "FN0000000001"), create_posting(2, "FN0000000002"))
    wait_for_einvoices(2)
    omni.configure(error_rate=1.0)  # Omni answers 503 to everything
    dag = run_dag("erp_invoice_upload")

    first, second = dag(), dag()

    assert (first.state, second.state) == ("failed", "failed")
    for run in (first, second):
        assert {t: run.get_task_instance(t).state for t in ("upload_invoices", "report_outcome")} == {
            "upload_invoices": "failed", "report_outcome": "failed"}
    assert [(a["kind"], a["incident"], a["run_id"]) for a in webhook.received] == [
        ("run_failed", "omni_unavailable", first.run_id)
    ]
    assert webhook.received[0]["text"].startswith(f"Omni down: erp_invoice_upload run {first.run_id} failed: upload_invoices:")
    records = AlertBook(ledger.engine).runs("erp_invoice_upload")
    assert [(r["run_id"], r["outcome"]) for r in records] == [(first.run_id, "sent"), (second.run_id, "suppressed")]
