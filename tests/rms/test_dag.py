"""omni_return_credit_note on the RMS credit-note path (issue 12), with dag.test() against the sandboxes:
returns booked without an ERP credit note, reported to RMS once, regenerated on demand, settled; and
switching the path between runs."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from omni_erp.ledger import Ledger
from omni_erp.ledger.rms import RMS_REPORTED, RMS_SETTLED
from omni_erp.rules.rms import REPORT_COLUMNS, read_report
from omni_erp.sandbox.lifecycle import return_posting
from omni_erp.sandbox.pusher import generate_orders
from tests.dags.test_omni_return_credit_note import _invoice, _posts, _push

pytestmark = pytest.mark.integration

DAG_ID = "omni_return_credit_note"


@pytest.fixture()
def report_dir(tmp_path, monkeypatch):
    folder = tmp_path / "rms"
    monkeypatch.setenv("OMNI_ERP_RMS_REPORT_DIR", str(folder))
    return folder


def _booked_orders(inbox, run_dag, ledger: Ledger, count: int, seed: int) -> list[dict]:
    creates = generate_orders(count, seed=seed, partially_cancelled_rate=0.0)
    _push(inbox, creates)
    assert run_dag("omni_order_posting")().state == "success"
    _invoice(ledger, {c["orderCode"] for c in creates})
    return creates


def _units(create: dict, qc: str | None = "PASS") -> list[tuple[str, str | None]]:
    return [(i["channelSkuCode"], qc) for i in create["orderItems"] for _ in range(i["orderedQuantity"] - i["cancelledQuantity"])]


# dag.test() keeps a run's conf in dag.params for the next run (tests/dags pass since_seq=None the same way).
NO_PARAMS = {"credit_note_path": None, "rms_regenerate": None, "rms_credit_notes": None, "since_seq": None, "retry_failed": False}


def _run(dag, **conf):
    return dag(**(NO_PARAMS | conf))


def _files(folder) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.glob("*.csv"))} if folder.exists() else {}


def test_rms_path_books_without_credit_note_reports_once_regenerates_and_settles(
    erp, omni, inbox, ledger_path, run_dag, report_dir, monkeypatch
):
    monkeypatch.setenv("OMNI_ERP_CREDIT_NOTE_PATH", "rms")
    ledger = Ledger.sqlite(ledger_path)
    full, mixed, failed = _booked_orders(inbox, run_dag, ledger, 3, seed=31)
    # Every unit of `mixed` back: the last one fails QC, and one more unit comes without a QC status.
    mixed_units = _units(mixed)
    assert len({sku for sku, _ in mixed_units}) >= 2 and len(mixed_units) >= 3
    mixed_units[-1] = (mixed_units[-1][0], "FAIL")
    returns = [
        return_posting(full, 810001, return_order_code="RMS-FULL", units=_units(full), return_type="RETURN_TO_ORIGIN"),
        return_posting(mixed, 810002, return_order_code="RMS-MIXED", units=[*mixed_units, (mixed_units[0][0], None)]),
        return_posting(failed, 810003, return_order_code="RMS-QCBAD", units=_units(failed, "FAIL")[:1]),
    ]
    _push(inbox, returns)
    erp.configure(invoice_delay_s=0.0)  # a credit note, had one been asked for, would appear at once

    dag = run_dag(DAG_ID)
    first = _run(dag)
    assert first.state == "success"
    # The ERP booked both returns with PASS units, and raised no credit note; nothing went to Omni.
    erp_state = erp.state()
    assert sorted(r["returnOrderCode"] for r in erp_state["return_orders"]) == ["RMS-FULL", "RMS-MIXED"]
    assert erp_state["credit_notes"] == []
    assert omni.state()["credit_notes"] == [] and _posts(omni, "creditNote") == 0

    [(name, text)] = _files(report_dir).items()
    summary = dag.xcom(first, "report_to_rms")
    assert summary["file"] == name and summary["returns"] == 2
    rows = read_report(text)
    assert tuple(rows[0]) == REPORT_COLUMNS
    expected = Counter({(p["returnOrderCode"], sku): n for p in returns[:2] for sku, n in Counter(
        s for s, qc in ((i["channelSkuCode"], i["qcStatus"]) for i in p["items"]) if qc == "PASS").items()})
    assert Counter({(r["returnOrderId"], r["clientSku"]): int(r["quantity"]) for r in rows}) == expected
    assert len(rows) == len(expected) == summary["rows"]  # one row per returned SKU
    for row in rows:
        order = ledger.get_order(row["forwardChannelOrderId"])
        assert row["purchaseOrderNumber"] == order["po_number"] and row["forwardInvoiceNumber"] == order["erp_invoice_number"]
        assert row["forwardIrn"] == order["irn"] and row["timeZone"] == "Asia/Kolkata" and row["returnOrderTime"]
    assert {r["return_order_code"]: r["state"] for r in ledger.rms_returns()} == {
        "RMS-FULL": RMS_REPORTED, "RMS-MIXED": RMS_REPORTED
    }
    assert ledger.get_rms_return("RMS-QCBAD") is None  # nothing passed QC: manual settlement only
    assert dag.xcom(first, "report_outcome")["by_outcome"]["rms:reported_to_rms"] == 2  # the outcome table lists them
    assert {m["return_order_code"] for m in ledger.manual_settlements()} == {"RMS-MIXED", "RMS-QCBAD"}

    # Re-run, and the same returns delivered again: no second report, no return reported twice.
    _push(inbox, [p | {"messageId": p["messageId"] + 100} for p in returns])
    second = _run(dag)
    assert second.state == "success"
    assert list(_files(report_dir)) == [name]
    assert dag.xcom(second, "report_to_rms")["file"] is None
    assert len(erp.state()["return_orders"]) == 2

    # The file is lost: regenerated byte for byte from the ledger; still nothing reported twice.
    (report_dir / name).unlink()
    # ... and RMS raised the credit note of one return (trigger param), then of the other (a CSV import).
    third = _run(dag, rms_regenerate=name, rms_credit_notes="RMS-FULL=RMSCN/0001")
    assert third.state == "success"
    assert _files(report_dir) == {name: text}
    assert ledger.get_rms_report(name)["rewritten_at"] is not None
    assert dag.xcom(third, "report_outcome")["by_outcome"]["rms:reported_to_rms"] == 1
    settlement = report_dir.parent / "rms_credit_notes.csv"
    settlement.write_text("returnOrderId,creditNoteNumber,amount\r\nRMS-MIXED,RMSCN/0002,100\r\n")
    assert _run(dag, rms_credit_notes=str(settlement)).state == "success"
    assert ledger.rms_returns(state=RMS_REPORTED) == []
    assert {r["return_order_code"]: (r["state"], r["rms_credit_note_number"]) for r in ledger.rms_returns()} == {
        "RMS-FULL": (RMS_SETTLED, "RMSCN/0001"), "RMS-MIXED": (RMS_SETTLED, "RMSCN/0002"),
    }


def test_switching_the_path_between_runs_keeps_each_return_on_its_own_path(
    erp, omni, inbox, ledger_path, run_dag, report_dir, monkeypatch
):
    monkeypatch.delenv("OMNI_ERP_CREDIT_NOTE_PATH", raising=False)
    ledger = Ledger.sqlite(ledger_path)
    a, b, c = _booked_orders(inbox, run_dag, ledger, 3, seed=37)
    erp.configure(invoice_delay_s=0.0)
    dag = run_dag(DAG_ID)

    # Run 1, erp path (the default): the ERP credits A and the credit note is uploaded.
    _push(inbox, [return_posting(a, 820001, return_order_code="SW-A", units=_units(a))])
    assert _run(dag).state == "success"
    assert [n["body"]["returnOrderId"] for n in omni.state()["credit_notes"]] == ["SW-A"]
    assert _files(report_dir) == {}

    # Run 2, rms by the trigger param: B is booked without credit note and reported; A is not reported.
    _push(inbox, [return_posting(b, 820002, return_order_code="SW-B", units=_units(b))])
    assert _run(dag, credit_note_path="rms").state == "success"
    [(first_name, first_text)] = _files(report_dir).items()
    assert {r["returnOrderId"] for r in read_report(first_text)} == {"SW-B"}
    assert [n["returnOrderCode"] for n in erp.state()["credit_notes"]] == ["SW-A"]

    # Run 3, rms by the setting: a return registered while the path was erp (C is booked later because the
    # ERP was down) keeps its ERP credit note.
    erp.configure(error_rate=1.0)
    for task in dag.dag.tasks:  # the run fails at once instead of waiting for Airflow's task retries
        monkeypatch.setattr(task, "retries", 0)
    _push(inbox, [return_posting(c, 820003, return_order_code="SW-C", units=_units(c))])
    assert _run(dag).state == "failed"  # ERP down: C registered on the erp path, waits
    assert ledger.get_return_order("SW-C")["state"] == "ready_to_book"
    erp.configure(error_rate=0.0)
    monkeypatch.setenv("OMNI_ERP_CREDIT_NOTE_PATH", "rms")
    assert _run(dag).state == "success"
    assert sorted(n["body"]["returnOrderId"] for n in omni.state()["credit_notes"]) == ["SW-A", "SW-C"]
    assert list(_files(report_dir)) == [first_name]  # SW-B not reported again, SW-A/SW-C never
    assert ledger.get_rms_return("SW-C") is None

    # Run 4, back to erp: the rms-path return stays reported, nothing of it is uploaded.
    monkeypatch.setenv("OMNI_ERP_CREDIT_NOTE_PATH", "erp")
    assert _run(dag).state == "success"
    assert ledger.get_rms_return("SW-B")["state"] == RMS_REPORTED
    assert Counter(n["body"]["returnOrderId"] for n in omni.state()["credit_notes"]) == Counter({"SW-A": 1, "SW-C": 1})


def test_rms_path_with_an_erp_that_cannot_skip_the_credit_note_books_nothing(monkeypatch, ledger_path):
    from airflow.sdk.exceptions import AirflowFailException

    from omni_erp.operators.returns import ErpSalesReturnOperator

    monkeypatch.setenv(
        "AIRFLOW_CONN_ERP_DEFAULT",
        json.dumps({"conn_type": "erpnext", "host": "http://127.0.0.1:9", "login": "k", "password": "s"}),
    )
    operator = ErpSalesReturnOperator(task_id="create", batch_id="b", credit_note_path="rms")
    with pytest.raises(AirflowFailException, match="cannot book a return without an e-credit note"):
        operator.execute(context={})
