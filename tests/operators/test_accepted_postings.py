"""Property: no posting the inbox accepts can make any flow's item handling raise out of its batch (issue 6).

Generated postings of every event type go through the real inbox; the ones it stores are worked by every
flow's operators against the real ERP and Omni sandboxes. Some postings are tied to an earlier CREATE
(same order code) so the deeper paths run too: cancellations of booked orders, completions with foreign
SKUs, returns of orders that exist. Whatever the data, each operator either finishes or ends its batch with
``AirflowFailException`` (the run shows red), and every stored posting ends done, dead or ignored, or waits
in the queue with a reason - never claimed by nobody, never pending without a word.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager

import pytest
from airflow.sdk.exceptions import AirflowFailException
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omni_erp.inbox.app import InboxSettings, build_standalone_app
from omni_erp.ledger import Ledger
from omni_erp.ledger.engine import sqlite_url
from omni_erp.operators.cancellation import ErpOrderCancelOperator
from omni_erp.operators.completion import ErpOrderCompleteOperator
from omni_erp.operators.credit_notes import ErpCreditNoteFetchOperator, OmniCreditNoteUploadOperator
from omni_erp.operators.inbox import OmniInboxClaimOperator
from omni_erp.operators.invoice_upload import ErpEInvoiceFetchOperator, OmniInvoiceUploadOperator
from omni_erp.operators.order_posting import ErpSalesOrderCreateOperator, ErpSalesOrderMapOperator
from omni_erp.operators.report import LedgerBatchReportOperator
from omni_erp.operators.returns import ErpSalesReturnOperator
from omni_erp.states import CLAIMED, DEAD, DONE, IGNORED, PENDING
from tests.conftest import INBOX_KEY
from tests.strategies import outward_postings, return_postings, valid_postings

CREATE, CANCEL, COMPLETE, RETURN = (
    "OUTWARD_ORDER_CREATE", "OUTWARD_ORDER_CANCEL", "OUTWARD_ORDER_COMPLETE", "RETURN_ORDER_COMPLETE",
)
# Each flow as the DAG wires it: the event types it claims, then its operators in order.
FLOWS = {
    "f1": ([CREATE], [ErpSalesOrderMapOperator, ErpSalesOrderCreateOperator]),
    "f2": ([], [ErpEInvoiceFetchOperator, OmniInvoiceUploadOperator]),
    "f3": ([CANCEL], [ErpOrderCancelOperator]),
    "f4": ([COMPLETE], [ErpOrderCompleteOperator]),
    "f5": ([RETURN], [ErpSalesReturnOperator, ErpCreditNoteFetchOperator, OmniCreditNoteUploadOperator]),
}


@st.composite
def life_cycles(draw: st.DrawFn) -> list[dict]:
    """A few valid postings; some follow an earlier CREATE of the same order (with its items), as Omni would."""
    creates = draw(st.lists(outward_postings(CREATE), min_size=1, max_size=3))
    postings = list(creates)
    for _ in range(draw(st.integers(0, 4))):
        base = draw(st.sampled_from(creates))
        follow_up = draw(st.one_of(outward_postings(CANCEL), outward_postings(COMPLETE), return_postings(RETURN)))
        if "returnOrderCode" in follow_up:
            follow_up["forwardOrderCode"] = base["orderCode"]
        else:
            follow_up["orderCode"] = base["orderCode"]
            if draw(st.booleans()):
                follow_up["orderItems"] = base["orderItems"]
        postings.append(follow_up)
    postings += draw(st.lists(valid_postings(), max_size=3))
    return postings


@contextmanager
def _ledger_of_this_example(directory):
    """A fresh embedded ledger per generated example (the operators resolve it from the environment)."""
    path = directory / f"ledger-{time.monotonic_ns()}.sqlite"
    before = os.environ.get("OMNI_ERP_LEDGER_PATH")
    os.environ["OMNI_ERP_LEDGER_PATH"] = str(path)
    try:
        yield path
    finally:
        if before is None:
            os.environ.pop("OMNI_ERP_LEDGER_PATH", None)
        else:
            os.environ["OMNI_ERP_LEDGER_PATH"] = before


def _run_flow(flow: str, batch_id: str) -> None:
    event_types, operators = FLOWS[flow]
    steps = [OmniInboxClaimOperator(task_id="claim", batch_id=batch_id, event_types=event_types)] if event_types else []
    steps += [operator(task_id=operator.__name__, batch_id=batch_id) for operator in operators]
    steps.append(LedgerBatchReportOperator(task_id="report", batch_id=batch_id))
    for step in steps:
        try:
            step.execute(context={})
        except AirflowFailException:
            pass  # the batch ended red on purpose; anything else escaping is the bug this test hunts


@pytest.mark.integration
@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(postings=life_cycles())
def test_no_accepted_posting_makes_a_flow_raise_out_of_its_batch(postings, erp, omni, tmp_path):
    erp.reset()
    omni.reset()
    with _ledger_of_this_example(tmp_path) as path:
        ledger = Ledger(sqlite_url(path))
        client = TestClient(build_standalone_app(InboxSettings(api_key=INBOX_KEY, ledger_url=ledger.url)))
        answers = [
            client.post("/omni/postings", content=json.dumps(p), headers={"X-Api-Key": INBOX_KEY, "Content-Type": "application/json"})
            for p in postings
        ]
        assert all(a.status_code in (200, 409) for a in answers), [(a.status_code, a.text) for a in answers]
        stored = ledger.postings()
        assert stored, "every generated example holds at least one CREATE the inbox accepts"

        for flow in FLOWS:
            _run_flow(flow, batch_id=f"{flow}/property")
        time.sleep(0.1)  # the ERP sandbox e-invoices a moment after booking
        for flow in FLOWS:
            _run_flow(flow, batch_id=f"{flow}/property-again")

        for row in ledger.postings():
            assert row["state"] in (DONE, DEAD, IGNORED, PENDING), row
            assert row["state"] != CLAIMED
            if row["state"] in (PENDING, DEAD):
                assert row["last_error"], f"posting {row['message_id']} is {row['state']} without a reason"
