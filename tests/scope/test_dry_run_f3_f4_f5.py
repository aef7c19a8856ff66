"""Dry runs of F3 (cancellation), F4 (completion) and F5 (returns): nothing sent, nothing recorded, exact bodies logged.

Real parts: the ERP sandbox behind a recording proxy on 127.0.0.1 (what the ERP really received), the F1 and F2
operators to set up booked and invoiced orders, the ledger on SQLite and PostgreSQL, and ``dag.test()``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import requests
import sqlalchemy as sa
from airflow.sdk.exceptions import AirflowFailException
from fastapi import FastAPI, Request, Response
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omni_erp.ledger import Ledger
from omni_erp.operators.cancellation import ErpOrderCancelOperator
from omni_erp.operators.completion import ErpOrderCompleteOperator
from omni_erp.operators.dry_run import WouldSend, dry_run_adapter
from omni_erp.operators.inbox import OmniInboxClaimOperator
from omni_erp.operators.returns import ErpSalesReturnOperator
from omni_erp.sandbox.lifecycle import cancel_posting, complete_posting, return_posting
from omni_erp.sandbox.serve import serve_in_thread
from omni_erp.states import CANCEL_IRN, CANCEL_NOT_BOOKED, CANCEL_SALES_ORDER, RETURN_CUSTOMER, RETURN_READY
from tests.conftest import ERP_TOKEN
from tests.flows import book, create_posting, record_invoices

CANCEL, COMPLETE, RETURN = "OUTWARD_ORDER_CANCEL", "OUTWARD_ORDER_COMPLETE", "RETURN_ORDER_COMPLETE"
SKU_A = "460491724004"  # x2 at 1120.00 in the CREATE fixture
WOULD_SEND = re.compile(r"DRY RUN would (POST|PUT|PATCH|DELETE) (\S+) key (\S+) body ")
FLOWS = {
    CANCEL: ErpOrderCancelOperator,
    COMPLETE: ErpOrderCompleteOperator,
    RETURN: ErpSalesReturnOperator,
}


# --- helpers --------------------------------------------------------------------------------------


def ledger_snapshot(ledger: Ledger) -> dict[str, list[tuple]]:
    """Every row of every ledger table, in a stable order: equal snapshots mean nothing was written."""
    meta = sa.MetaData()
    meta.reflect(ledger.engine)
    with ledger.engine.connect() as conn:
        return {
            name: sorted(tuple(map(repr, row)) for row in conn.execute(sa.select(table)).all())
            for name, table in sorted(meta.tables.items())
        }


def erp_writes_and_documents(erp) -> dict:
    """The ERP sandbox's documents and the write requests it answered (reads may come and go)."""
    state = erp.state()
    state["request_counts"] = {k: n for k, n in state["request_counts"].items() if not k.startswith("GET ")}
    return state


def logged_requests(text: str) -> list[tuple[str, str, str, str]]:
    """The ERP requests a dry run logged: (method, endpoint, key, body) per ``DRY RUN would POST`` line, the body
    exactly as logged (the JSON text, or Tally's XML envelope; the log line goes on after it)."""
    found = []
    for line in text.splitlines():
        match = WOULD_SEND.search(line)
        if match:
            start = match.end()
            if line.startswith("<", start):
                end = line.index("</ENVELOPE>", start) + len("</ENVELOPE>")
            else:
                _, end = json.JSONDecoder().raw_decode(line, start)
            found.append((*match.groups(), line[start:end]))
    return found


def _proxy_app(target: str, writes: list[tuple[str, str, str, str]]):
    """A pass-through to ``target`` that records every write request exactly as it arrived."""
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def forward(path: str, request: Request) -> Response:
        body = await request.body()
        if request.method != "GET":
            writes.append((request.method, f"/{path}", request.headers.get("Idempotency-Key", "-"), body.decode()))
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "idempotency-key", "content-type")}
        answer = requests.request(
            request.method, f"{target}/{path}", params=request.query_params, data=body, headers=headers, timeout=10
        )
        return Response(answer.content, status_code=answer.status_code, media_type=answer.headers.get("content-type"))

    return app


@pytest.fixture()
def erp_wire(erp, monkeypatch):
    """``erp_default`` through a recording proxy: yields the list of write requests the ERP really received."""
    writes: list[tuple[str, str, str, str]] = []
    with serve_in_thread(_proxy_app(erp.url, writes)) as proxy:
        monkeypatch.setenv("AIRFLOW_CONN_ERP_DEFAULT", json.dumps({"conn_type": "http", "host": proxy.url, "password": ERP_TOKEN}))
        yield writes


@pytest.fixture()
def any_ledger(ledger_url, monkeypatch) -> Ledger:
    """This test's ledger on SQLite and on PostgreSQL; every operator of the test uses it."""
    ledger = Ledger(ledger_url)
    monkeypatch.setattr(Ledger, "from_conn_id", classmethod(lambda cls, conn_id=None: ledger))
    return ledger


def store_any(ledger: Ledger, *postings: dict) -> None:
    """Store postings as the inbox does (a return under its returnOrderCode, for its forward order)."""
    for p in postings:
        assert ledger.record_posting(
            message_id=str(p["messageId"]), event_type=p["eventType"], business_key=p.get("returnOrderCode") or p["orderCode"],
            order_code=p.get("forwardOrderCode") or p["orderCode"], payload=p,
        ) == "stored"


def lifecycle(ledger: Ledger, erp) -> dict[str, dict]:
    """Booked and invoiced orders with pending F3, F4 and F5 postings of every kind a run meets.

    A: invoiced (IRN cancel); B: booked, its invoice held (sales-order cancel); C: never seen (cancelled before
    booking); E: invoiced, one unit cancelled after e-invoicing (return order); F: invoiced, returned with one
    unit passing QC and one failing; plus a completion and a return of an unknown order (dead letters), and
    re-deliveries of A's cancellation and F's return under new messageIds (closed as repeats, nothing sent twice).
    """
    a, b, c, e, f, x = (create_posting(960001 + n, f"FN00000096{n:02d}") for n in range(6))
    erp.configure(invoice_hold=[b["orderCode"]])
    book(ledger, a, b, e, f)
    record_invoices(3)
    store_any(
        ledger,
        cancel_posting(a, 961001), cancel_posting(b, 961002), cancel_posting(c, 961003), cancel_posting(a, 961011),
        complete_posting(e, 962001, cancelled_after_invoice={SKU_A: 1}), complete_posting(x, 962002),
        return_posting(f, 963001, return_order_code="RTN-F", units=[(SKU_A, "PASS"), (SKU_A, "FAIL")]),
        return_posting(x, 963002, return_order_code="RTN-X", units=[(SKU_A, "PASS")]),
        return_posting(f, 963011, return_order_code="RTN-F", units=[(SKU_A, "PASS"), (SKU_A, "FAIL")]),
    )
    return {"A": a, "B": b, "C": c, "E": e, "F": f, "X": x}


def dry_run(event_type: str, capfd, **scope) -> tuple[dict, list[tuple[str, str, str, str]], str]:
    """Run one flow's operator dry (no claim: it selects its postings itself): its summary, the requests it
    logged and its log (task logs go to stdout outside a task runner)."""
    capfd.readouterr()
    summary = FLOWS[event_type](task_id="dry", batch_id=f"dry/{event_type}", dry_run=True, **scope).execute(context={})
    log = capfd.readouterr().out
    return summary, logged_requests(log), log


def real_run(ledger: Ledger, event_type: str) -> Counter[str]:
    """Claim and run one flow for real; the outcome of each posting of its batch, as a dry run names it."""
    batch = f"real/{event_type}"
    OmniInboxClaimOperator(task_id="claim", batch_id=batch, event_types=[event_type]).execute(context={})
    try:
        FLOWS[event_type](task_id="real", batch_id=batch).execute(context={})
    except AirflowFailException:
        pass  # red: the lifecycle has dead letters, which the outcomes show
    return Counter(f"would_{p['outcome']}" for p in ledger.batch_postings(batch))


def would_outcomes(summary: dict) -> Counter[str]:
    return Counter({k: n for k, n in summary.items() if k.startswith("would_")})


# --- tests ----------------------------------------------------------------------------------------


def test_dry_runs_change_nothing_and_log_exactly_what_the_real_runs_then_send(erp, erp_wire, any_ledger, capfd):
    orders = lifecycle(any_ledger, erp)
    ledger_before, erp_before = ledger_snapshot(any_ledger), erp_writes_and_documents(erp)
    erp_wire.clear()

    cancel, cancel_sent, _ = dry_run(CANCEL, capfd)
    complete, complete_sent, complete_log = dry_run(COMPLETE, capfd)
    returns, return_sent, return_log = dry_run(RETURN, capfd)

    # Nothing written (every table, outbound_call included), nothing sent; the ERP has not heard of the run.
    assert ledger_snapshot(any_ledger) == ledger_before
    assert erp_writes_and_documents(erp) == erp_before
    assert erp_wire == []
    assert cancel == {
        "batch_id": f"dry/{CANCEL}", "dry_run": True,
        f"would_{CANCEL_IRN}": 1, f"would_{CANCEL_SALES_ORDER}": 1, f"would_{CANCEL_NOT_BOOKED}": 1, "would_already_cancelled": 1,
    }
    assert complete == {
        "batch_id": f"dry/{COMPLETE}", "dry_run": True, "would_return_order_created": 1, "would_dead_letter": 1,
        "new_shipments": 1,
    }
    assert returns == {
        "batch_id": f"dry/{RETURN}", "dry_run": True, "would_booked": 1, "would_already_booked": 1, "would_dead_letter": 1,
        "manual_units": 1,
    }
    a, b = (any_ledger.get_order(orders[name]["orderCode"]) for name in "AB")
    assert sorted((e, k) for _, e, k, _ in cancel_sent) == sorted([
        ("/api/v1/e-invoices/cancel-irn", f"cancel-irn:{a['erp_invoice_number']}"),  # A: its IRN and its sales order
        (f"/api/v1/sales-orders/{a['erp_sales_order_id']}/cancel", f"cancel:{a['order_code']}"),
        (f"/api/v1/sales-orders/{b['erp_sales_order_id']}/cancel", f"cancel:{b['order_code']}"),  # B: its sales order
    ])
    assert [(e, k) for _, e, k, _ in complete_sent + return_sent] == [
        ("/api/v1/return-orders", f"return:PC-{orders['E']['orderCode']}-1"), ("/api/v1/return-orders", "return:RTN-F"),
    ]
    assert f"DRY RUN would dead-letter completion 962002 (order {orders['X']['orderCode']})" in complete_log
    assert "DRY RUN would dead-letter return posting 963002 (RTN-X): forward order" in return_log
    assert "DRY RUN would list unit RTN-F-2 (460491724004, QC FAIL) of return RTN-F for manual settlement" in return_log

    # The real runs then do what the dry runs said, and send exactly those requests: method, endpoint, key and
    # body byte for byte, as the ERP received them.
    assert real_run(any_ledger, CANCEL) == would_outcomes(cancel)
    assert real_run(any_ledger, COMPLETE) == would_outcomes(complete)
    # (the ledger closes a repeat of a booked return as booked too)
    assert real_run(any_ledger, RETURN) == would_outcomes(returns) + Counter(would_booked=1) - Counter(would_already_booked=1)
    assert Counter(erp_wire) == Counter(cancel_sent + complete_sent + return_sent)


def test_order_codes_and_a_window_restrict_a_dry_run(erp, ledger_path, capfd):
    ledger = Ledger.sqlite(ledger_path)
    orders = lifecycle(ledger, erp)
    before = ledger_snapshot(ledger)
    a, f = orders["A"]["orderCode"], orders["F"]["orderCode"]

    cancel, cancel_sent, cancel_log = dry_run(CANCEL, capfd, order_codes=[a])
    assert cancel == {"batch_id": f"dry/{CANCEL}", "dry_run": True, f"would_{CANCEL_IRN}": 1, "would_already_cancelled": 1}
    assert {json.loads(body).get("invoiceNumber") for _, _, _, body in cancel_sent} == {
        ledger.get_order(a)["erp_invoice_number"], None,  # the IRN cancel names A's invoice; the sales-order cancel has no body
    }
    assert orders["B"]["orderCode"] not in cancel_log and orders["C"]["orderCode"] not in cancel_log

    # A return is selected by its forward order or by its return order code.
    for codes in ([f], ["RTN-F"]):
        returns, return_sent, _ = dry_run(RETURN, capfd, order_codes=codes)
        assert would_outcomes(returns) == {"would_booked": 1, "would_already_booked": 1}
        assert [k for _, _, k, _ in return_sent] == ["return:RTN-F"]
    nothing, sent, _ = dry_run(COMPLETE, capfd, order_codes=["FN-NOT-THERE"])
    assert (nothing, sent) == ({"batch_id": f"dry/{COMPLETE}", "dry_run": True}, [])

    # A backfill run's window: the postings received in it (all of them, a moment ago), or none before it.
    at = datetime.now(UTC)
    covering, before_them = f"{(at - timedelta(hours=1)).isoformat()}/{(at + timedelta(minutes=1)).isoformat()}", (
        f"{(at - timedelta(hours=2)).isoformat()}/{(at - timedelta(hours=1)).isoformat()}"
    )
    assert would_outcomes(dry_run(COMPLETE, capfd, window=covering)[0]) == {"would_return_order_created": 1, "would_dead_letter": 1}
    assert dry_run(COMPLETE, capfd, window=before_them)[:2] == ({"batch_id": f"dry/{COMPLETE}", "dry_run": True}, [])
    assert would_outcomes(dry_run(CANCEL, capfd, window=covering, order_codes=[a])[0]) == {
        f"would_{CANCEL_IRN}": 1, "would_already_cancelled": 1,
    }
    assert ledger_snapshot(ledger) == before


def test_one_odd_posting_does_not_stop_a_dry_run(erp, erp_wire, ledger_path, capfd):
    # G's return order was registered by a run that died before booking it, with a request that no longer
    # validates (an older release's shape): resending it fails unexpectedly. F's return is fine.
    ledger = Ledger.sqlite(ledger_path)
    f, g = create_posting(966001, "FN0000009901"), create_posting(966002, "FN0000009902")
    book(ledger, f, g)
    record_invoices(2)
    ledger.register_return_order(
        return_order_code="RTN-G", order_code=g["orderCode"], kind=RETURN_CUSTOMER, state=RETURN_READY,
        lines=[], erp_request={"returnOrderCode": "RTN-G", "lines": "unreadable"}, message_id="966102",
    )
    store_any(
        ledger,
        return_posting(g, 966102, return_order_code="RTN-G", units=[(SKU_A, "PASS")]),
        return_posting(f, 966101, return_order_code="RTN-F", units=[(SKU_A, "PASS")]),
    )
    before = ledger_snapshot(ledger)
    erp_wire.clear()

    capfd.readouterr()
    with pytest.raises(AirflowFailException, match=r"1 item\(s\) deferred of 2"):
        ErpSalesReturnOperator(task_id="dry", batch_id="dry/odd", dry_run=True).execute(context={})
    log = capfd.readouterr().out
    # G is reported as the real run would treat it (back to the queue with the error); F is still worked out.
    assert "DRY RUN would put posting 966102 (order FN0000009902) back in the queue: unexpected error: ValidationError" in log
    assert [k for _, _, k, _ in logged_requests(log)] == ["return:RTN-F"]
    assert (ledger_snapshot(ledger), erp_wire) == (before, [])


def test_a_dry_run_logs_the_adapters_own_request_erpnext(ledger_path, fast_retries, monkeypatch, capfd):
    # ERPNext reads the sales order first (a GET, which a dry run may send) and cancels it through a Frappe
    # method: the logged request is ERPNext's, not the generic contract's. No e-invoice comes (a long delay).
    from omni_erp.sandbox.erpnext import create_erpnext_sandbox

    writes: list[tuple[str, str, str, str]] = []
    with (
        serve_in_thread(create_erpnext_sandbox(api_key="k", api_secret="s3cr3t", invoice_delay_s=3600)) as site,
        serve_in_thread(_proxy_app(site.url, writes)) as proxy,
    ):
        conn = {"conn_type": "erpnext", "host": proxy.url, "login": "k", "password": "s3cr3t"}
        monkeypatch.setenv("AIRFLOW_CONN_ERP_DEFAULT", json.dumps(conn))
        ledger = Ledger.sqlite(ledger_path)
        h = create_posting(967001, "FN0000009951")
        book(ledger, h)
        store_any(ledger, cancel_posting(h, 967101))
        before = ledger_snapshot(ledger)
        writes.clear()

        summary, logged, _ = dry_run(CANCEL, capfd)
        assert (summary[f"would_{CANCEL_SALES_ORDER}"], writes, ledger_snapshot(ledger)) == (1, [], before)
        [(method, endpoint, key, body)] = logged
        assert (method, endpoint, key) == ("POST", "/api/method/frappe.client.cancel", f"cancel:{h['orderCode']}")
        assert json.loads(body) == {"doctype": "Sales Order", "name": ledger.get_order(h["orderCode"])["erp_sales_order_id"]}

        assert real_run(ledger, CANCEL) == would_outcomes(summary)
        # Frappe takes no Idempotency-Key header (the adapter keys by a document field): compare the rest.
        assert [(m, e, b) for m, e, _, b in writes] == [(method, endpoint, body)]


def test_a_dry_run_logs_the_adapters_own_request_tally(ledger_path, fast_retries, monkeypatch, capfd):
    # Tally reads through POSTs too (XML exports), which a dry run sends; its one write, the voucher import that
    # cancels the Sales Order, is logged as Tally's XML and not sent. No invoice comes (a long delay).
    from omni_erp.sandbox.tally import create_tally_sandbox

    writes: list[tuple[str, str, str, str]] = []
    with (
        serve_in_thread(create_tally_sandbox(company="Dry Run Co", invoice_delay_s=3600)) as tally,
        serve_in_thread(_proxy_app(tally.url, writes)) as proxy,
    ):
        monkeypatch.setenv("AIRFLOW_CONN_ERP_DEFAULT", json.dumps({"conn_type": "tally", "host": proxy.url, "login": "Dry Run Co"}))
        ledger = Ledger.sqlite(ledger_path)
        t = create_posting(968001, "FN0000009961")
        book(ledger, t)
        store_any(ledger, cancel_posting(t, 968101))
        before = ledger_snapshot(ledger)
        writes.clear()

        summary, logged, _ = dry_run(CANCEL, capfd)
        imports = [w for w in writes if "<TALLYREQUEST>Import Data</TALLYREQUEST>" in w[3]]
        assert (summary[f"would_{CANCEL_SALES_ORDER}"], imports, ledger_snapshot(ledger)) == (1, [], before)
        assert writes, "the dry run looked the voucher up in Tally"
        [(method, endpoint, key, body)] = logged
        assert (method, endpoint, key) == ("POST", "/", f"cancel:{t['orderCode']}")
        assert 'ACTION="Cancel"' in body and f'TAGVALUE="{ledger.get_order(t["orderCode"])["erp_sales_order_id"]}"' in body

        writes.clear()
        assert real_run(ledger, CANCEL) == would_outcomes(summary)
        assert [(m, e, b) for m, e, _, b in writes if "<TALLYREQUEST>Import Data</TALLYREQUEST>" in b] == [(method, endpoint, body)]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(invoice=st.text(min_size=1, max_size=40), order_code=st.text(min_size=1, max_size=40), reason=st.text(max_size=200))
def test_the_logged_body_is_the_wire_body_whatever_the_text(recording_erp, invoice, order_code, reason):
    # Quotes, backslashes, newlines, non-Latin text: the log line stays one line and its body is byte for byte
    # what the same adapter call puts on the wire.
    bodies, dry, real = recording_erp
    with pytest.raises(WouldSend) as stopped:
        dry.request_credit_note(invoice, order_code, reason, idempotency_key="credit:k")
    line = f"DRY RUN would {stopped.value.describe()} [task log] loc=dry_run.py:1"
    assert "\n" not in line and "\r" not in line
    bodies.clear()
    real.request_credit_note(invoice, order_code, reason, idempotency_key="credit:k")
    assert logged_requests(line) == [("POST", "/api/v1/credit-notes", "credit:k", bodies[0])]


@pytest.fixture()
def recording_erp(monkeypatch, fast_retries):
    """An HTTP server on 127.0.0.1 that records each request body and answers like the ERP's credit-note call;
    yields its bodies, a dry-run ErpHook and a real one pointed at it."""
    from omni_erp.hooks.erp import ErpHook

    bodies: list[str] = []
    app = FastAPI()

    @app.post("/{path:path}")
    async def record(path: str, request: Request) -> dict:
        bodies.append((await request.body()).decode())
        return {"creditNoteRequestId": "CNR-1", "status": "PENDING"}

    with serve_in_thread(app) as server:
        monkeypatch.setenv("AIRFLOW_CONN_ERP_DEFAULT", json.dumps({"conn_type": "http", "host": server.url, "password": ERP_TOKEN}))
        yield bodies, dry_run_adapter(ErpHook()), ErpHook()


# --- the DAGs, with dag.test() ------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.postgres
def test_cancellation_dag_dry_run_for_one_order_then_the_real_run_sends_what_it_logged(erp, erp_wire, pg_ledger_url, run_dag, capfd, monkeypatch):
    # The ledger on PostgreSQL here (the F5 DAG test below uses the embedded SQLite one).
    ledger = Ledger(pg_ledger_url)
    monkeypatch.setattr(Ledger, "from_conn_id", classmethod(lambda cls, conn_id=None: ledger))
    a, b = create_posting(964001, "FN0000009701"), create_posting(964002, "FN0000009702")
    book(ledger, a, b)
    record_invoices(2)
    store_any(ledger, cancel_posting(a, 964101), cancel_posting(b, 964102))
    before, erp_before = ledger_snapshot(ledger), erp_writes_and_documents(erp)
    erp_wire.clear()
    dag = run_dag("omni_order_cancellation")

    capfd.readouterr()
    dry = dag(dry_run=True, order_codes=[a["orderCode"]])
    dry_log = capfd.readouterr().out
    assert dry.state == "success"
    assert dag.xcom(dry, "cancel_orders") == {"batch_id": f"omni_order_cancellation/{dry.run_id}", "dry_run": True, f"would_{CANCEL_IRN}": 1}
    assert (ledger_snapshot(ledger), erp_writes_and_documents(erp), erp_wire) == (before, erp_before, [])
    logged = logged_requests(dry_log)
    assert sorted(k for _, _, k, _ in logged) == sorted([f"cancel:{a['orderCode']}", f"cancel-irn:{ledger.get_order(a['orderCode'])['erp_invoice_number']}"])

    real = dag(order_codes=[a["orderCode"]])
    assert real.state == "success"
    assert Counter(erp_wire) == Counter(logged)
    assert ledger.get_order(a["orderCode"])["cancel_route"] == CANCEL_IRN
    assert ledger.get_order(b["orderCode"])["cancel_route"] is None  # not in the run's order codes: untouched


@pytest.mark.integration
def test_return_dag_dry_run_changes_nothing_in_the_ledger_the_erp_or_omni(erp, omni, erp_wire, ledger_path, run_dag, capfd):
    ledger = Ledger.sqlite(ledger_path)
    f = create_posting(965001, "FN0000009801")
    book(ledger, f)
    record_invoices(1)
    store_any(ledger, return_posting(f, 965101, return_order_code="RTN-9801", units=[(SKU_A, "PASS"), (SKU_A, "FAIL")]))
    before, erp_before, omni_before = ledger_snapshot(ledger), erp_writes_and_documents(erp), omni.state()
    erp_wire.clear()
    dag = run_dag("omni_return_credit_note")

    capfd.readouterr()
    dry = dag(dry_run=True)
    dry_log = capfd.readouterr().out
    assert dry.state == "success"
    assert dag.xcom(dry, "create_return_orders") == {
        "batch_id": f"omni_return_credit_note/{dry.run_id}", "dry_run": True, "would_booked": 1, "manual_units": 1,
    }
    assert (ledger_snapshot(ledger), erp_writes_and_documents(erp), omni.state(), erp_wire) == (before, erp_before, omni_before, [])
    logged = logged_requests(dry_log)
    assert [k for _, _, k, _ in logged] == ["return:RTN-9801"]

    assert dag().state == "success"
    assert [w for w in erp_wire if "return-orders" in w[1]] == logged


@pytest.mark.integration
def test_completion_dag_dry_run_then_the_real_run_books_the_return_order_it_logged(erp, erp_wire, ledger_path, run_dag, capfd):
    ledger = Ledger.sqlite(ledger_path)
    e = create_posting(969001, "FN0000009991")
    book(ledger, e)
    record_invoices(1)
    store_any(ledger, complete_posting(e, 969101, cancelled_after_invoice={SKU_A: 1}))
    before, erp_before = ledger_snapshot(ledger), erp_writes_and_documents(erp)
    erp_wire.clear()
    dag = run_dag("omni_order_completion")

    capfd.readouterr()
    dry = dag(dry_run=True)
    dry_log = capfd.readouterr().out
    assert dry.state == "success"
    assert dag.xcom(dry, "complete_orders") == {
        "batch_id": f"omni_order_completion/{dry.run_id}", "dry_run": True, "would_return_order_created": 1, "new_shipments": 1,
    }
    assert (ledger_snapshot(ledger), erp_writes_and_documents(erp), erp_wire) == (before, erp_before, [])
    logged = logged_requests(dry_log)
    assert [k for _, _, k, _ in logged] == [f"return:PC-{e['orderCode']}-1"]

    assert dag().state == "success"
    assert erp_wire == logged
