"""F1 with a run scope (issue 10.5, 10.6): dry runs, reprocessing chosen orders, backfill windows.

Real Airflow (``dag.test``), the real ERP sandbox and real SQLite ledgers. A dry run must leave every ledger
table and the ERP byte-equal and log the exact requests a real run then sends; ``order_codes`` replays a
dead-lettered posting once its cause is fixed and books it once; a window takes only what was received in it.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from airflow.sdk.exceptions import AirflowFailException

from omni_erp.ledger import Ledger
from omni_erp.ledger.engine import sqlite_url
from omni_erp.operators.inbox import OmniInboxClaimOperator
from omni_erp.operators.order_posting import ErpSalesOrderCreateOperator, ErpSalesOrderMapOperator
from omni_erp.operators.report import LedgerBatchReportOperator
from omni_erp.states import DEAD, DONE, ORDER_BOOKED, ORDER_REJECTED, PENDING
from omni_erp.timeutil import IST
from tests.flows import CREATE, book, create_posting, store
from tests.secret_scan import database_rows

pytestmark = pytest.mark.integration

DAG_ID = "omni_order_posting"
WOULD_POST = re.compile(r"DRY RUN would POST /api/v1/sales-orders key (\S+) body (\{.*?\})(?:\s|$|\")", re.M)


def _without_po(message_id: int, order_code: str, *, po_in: str | None = None) -> dict:
    """A CREATE whose Ajio PO is not where the default mapping reads it (``attribute1``): absent, or in ``po_in``."""
    posting = create_posting(message_id, order_code)
    po = posting["orderCustomAttributes"].pop("attribute1")
    if po_in:
        posting["orderCustomAttributes"][po_in] = po
    return posting


def _fully_cancelled(message_id: int, order_code: str) -> dict:
    posting = create_posting(message_id, order_code)
    for item in posting["orderItems"]:
        item["cancelledQuantity"] = item["orderedQuantity"]
    return posting


def _logged_requests(text: str) -> dict[str, dict]:
    """``{idempotency key: body}`` of every ``DRY RUN would POST`` line of the task logs."""
    found: dict[str, dict] = {}
    for key, body in WOULD_POST.findall(text):
        found[key] = json.loads(body)
    return found


def _sales_order_posts(erp) -> int:
    return sum(n for endpoint, n in erp.state()["request_counts"].items() if "sales-orders" in endpoint and "POST" in endpoint)


def test_dry_run_changes_nothing_and_logs_the_requests_the_real_run_then_sends(erp, ledger_path, run_dag, capfd):
    ledger = Ledger.sqlite(ledger_path)
    # An order mapped by an earlier run whose booking did not happen (its posting went back to the queue).
    earlier = book(ledger, create_posting(6, "FN0000000006"), create=False)
    ledger.release_unfinished(earlier, error="ERP unavailable")
    store(
        ledger,
        *(create_posting(n, f"FN000000000{n}") for n in (1, 2, 3)),
        _without_po(4, "FN0000000004"),
        _fully_cancelled(5, "FN0000000005"),
    )
    url = sqlite_url(ledger_path)
    ledger_before, erp_before = database_rows(url), erp.state()
    capfd.readouterr()

    dag = run_dag(DAG_ID)
    # A batch of 5 (posting 6 was stored first; the fully cancelled 5 is the sixth) booked by 2 shards.
    conf = {"limit": 5, "shards": 2}
    dry = dag(dry_run=True, **conf)

    out = capfd.readouterr().out
    assert dry.state == "success"
    assert database_rows(url) == ledger_before  # every table, every column
    assert erp.state() == erp_before  # no request reached the ERP at all
    claim, mapped = dag.xcom(dry, "claim_postings"), dag.xcom(dry, "map_sales_orders")
    assert (claim["dry_run"], claim["would_claim"], claim["would_replay"]) == (True, 5, 0)
    assert {k: v for k, v in mapped.items() if k.startswith("would")} == {"would_book": 4, "would_dead_letter": 1}
    shards = [dry.get_task_instance("create_sales_orders", map_index=k).xcom_pull(task_ids="create_sales_orders", map_indexes=k)
              for k in (0, 1)]
    assert all(s["dry_run"] for s in shards) and sum(s.get("would_book", 0) for s in shards) == 4
    assert sum(s.get("skipped", 0) for s in shards) == 1  # posting 4; the sixth posting is beyond the limit here too
    report = dag.xcom(dry, "report_outcome")
    assert report["dry_run"] is True and report["tasks"]["map_sales_orders"] == mapped
    assert "dry run: nothing was sent or recorded" in out
    assert "DRY RUN would dead-letter posting 4 (order 'FN0000000004'): Ajio PO number missing" in out
    logged = _logged_requests(out)
    assert set(logged) == {f"create:FN000000000{n}" for n in (1, 2, 3, 6)}

    real = dag(**conf)

    assert real.state == "failed"  # the posting without a PO is dead-lettered: red, as always
    sent = {o["orderCode"]: o["request"] for o in erp.state()["sales_orders"]}
    assert {f"create:{code}": body for code, body in sent.items()} == logged  # exactly what the dry run logged
    keys_sent = {c["idempotency_key"] for c in ledger.calls() if c["operation"] == "create_sales_order"}
    assert keys_sent == set(logged)
    assert {r["message_id"]: r["state"] for r in ledger.postings()}["5"] == PENDING  # beyond the batch, in both runs


def test_order_codes_replays_a_dead_lettered_posting_once_its_mapping_is_fixed(erp, ledger_path, run_dag, monkeypatch, capfd):
    """The client put the Ajio PO in ``attribute2``: dead-lettered, then replayed once OMNI_ERP_PO_PATH says so."""
    ledger = Ledger.sqlite(ledger_path)
    store(
        ledger,
        create_posting(1, "FN0000000001"),
        _without_po(2, "FN0000000002", po_in="attribute2"),
        _without_po(3, "FN0000000003"),  # really has no PO: stays dead
    )
    dag = run_dag(DAG_ID)
    first = dag()
    assert first.state == "failed"
    assert [o["orderCode"] for o in erp.state()["sales_orders"]] == ["FN0000000001"]
    open_letters = {d["business_key"]: d for d in ledger.dead_letters("order_posting")}
    assert set(open_letters) == {"FN0000000002", "FN0000000003"}

    monkeypatch.setenv("OMNI_ERP_PO_PATH", "orderCustomAttributes.attribute2")  # the mapping fixed
    url = sqlite_url(ledger_path)
    before = database_rows(url)
    capfd.readouterr()
    dry = dag(dry_run=True, order_codes=["FN0000000002", "FN0000000001"])
    assert dry.state == "success"
    assert database_rows(url) == before
    logged = _logged_requests(capfd.readouterr().out)
    assert list(logged) == ["create:FN0000000002"] and logged["create:FN0000000002"]["poNumber"] == "4042600002"
    assert dag.xcom(dry, "claim_postings")["would_replay"] == 1

    replay = dag(order_codes=["FN0000000002", "FN0000000001"])

    assert replay.state == "success"
    assert dag.xcom(replay, "claim_postings") | {"batch_id": None} == {
        "batch_id": None, "claimed": 1, "by_event_type": {CREATE: 1}, "retried": 0, "replayed": 1
    }
    booked = [o for o in erp.state()["sales_orders"] if o["orderCode"] == "FN0000000002"]
    assert len(booked) == 1 and booked[0]["request"] == logged["create:FN0000000002"]
    order = ledger.get_order("FN0000000002")
    assert (order["state"], order["po_number"]) == (ORDER_BOOKED, "4042600002")
    rows = {r["message_id"]: r for r in ledger.postings()}
    assert (rows["2"]["state"], rows["2"]["outcome"], rows["2"]["attempts"]) == (DONE, "booked", 0)
    assert "replayed by batch" in (rows["2"]["last_error"] or "") or rows["2"]["last_error"] is None
    letters = {d["business_key"]: d for d in ledger.dead_letters("order_posting")}
    assert letters["FN0000000002"]["resolved_at"] is not None  # resolved by the replay
    assert letters["FN0000000003"]["resolved_at"] is None and rows["3"]["state"] == DEAD  # not asked for: untouched

    posts = _sales_order_posts(erp)
    again = dag(order_codes=["FN0000000002", "FN0000000001"])
    assert again.state == "success" and dag.xcom(again, "claim_postings")["claimed"] == 0
    assert _sales_order_posts(erp) == posts  # a booked order is never booked twice


def _f1(batch: str, **scope) -> tuple[dict, bool]:
    """Claim, map and book one batch with the real F1 operators and the given scope, as the DAG does (booking
    runs even when mapping failed); returns the claim's summary and whether the run is red."""
    claim = OmniInboxClaimOperator(task_id="c", batch_id=batch, event_types=[CREATE], **scope).execute(context={})
    red = False
    for step in (ErpSalesOrderMapOperator(task_id="m", batch_id=batch, **scope), ErpSalesOrderCreateOperator(task_id="b", batch_id=batch, **scope)):
        try:
            step.execute(context={})
        except AirflowFailException:
            red = True
    return claim, red


def test_an_order_the_erp_rejected_is_booked_once_when_replayed_after_the_cause_is_fixed(erp, ledger_path):
    ledger = Ledger.sqlite(ledger_path)
    store(ledger, create_posting(1, "FN0000000001"))
    erp.configure(fail_next=[400])  # e.g. the buyer is not set up in the ERP yet
    assert _f1("run-1")[1]  # red: rejected
    assert ledger.get_order("FN0000000001")["state"] == ORDER_REJECTED
    assert ledger.postings()[0]["state"] == DEAD

    # Fixed in the ERP; a run without order codes leaves the dead posting alone, one naming it replays it.
    assert _f1("run-2") == ({"batch_id": "run-2", "claimed": 0, "by_event_type": {}, "retried": 0, "replayed": 0}, False)
    replay, red = _f1("run-3", order_codes=["FN0000000001"])
    assert (replay["replayed"], red) == (1, False)

    assert [o["orderCode"] for o in erp.state()["sales_orders"]] == ["FN0000000001"]
    assert ledger.get_order("FN0000000001")["state"] == ORDER_BOOKED
    assert all(d["resolved_at"] is not None for d in ledger.dead_letters("order_posting"))
    assert _f1("run-4", order_codes=["FN0000000001"])[0]["claimed"] == 0


def test_a_backfill_window_takes_only_the_postings_received_in_it(erp, ledger_path, monkeypatch):
    ledger = Ledger.sqlite(ledger_path)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6)
    for hour, n in ((0, 1), (1, 2), (2, 3), (3, 4)):  # received an hour apart
        monkeypatch.setenv("OMNI_ERP_CLOCK_OFFSET_S", str((start + timedelta(hours=hour) - datetime.now(UTC)).total_seconds()))
        store(ledger, create_posting(n, f"FN000000000{n}") if n != 3 else _without_po(n, "FN0000000003"))
    monkeypatch.delenv("OMNI_ERP_CLOCK_OFFSET_S")
    # The run's data interval, as Airflow renders it (here in IST): from 1 h to 3 h after the first posting.
    window = f"{(start + timedelta(hours=1)).astimezone(IST).isoformat()}/{(start + timedelta(hours=3)).astimezone(IST).isoformat()}"

    claim, red = _f1("backfill-1", window=window)
    assert (claim["claimed"], red) == (2, True)  # posting 3 has no PO: the run is red

    assert [o["orderCode"] for o in erp.state()["sales_orders"]] == ["FN0000000002"]
    states = {r["message_id"]: r["state"] for r in ledger.postings()}
    assert states == {"1": PENDING, "2": DONE, "3": DEAD, "4": PENDING}
    # Re-running the backfill books nothing new: 2 is done, 3 is replayed and still has no PO.
    claim, red = _f1("backfill-2", window=window)
    assert (claim["claimed"], claim["replayed"], red) == (1, 1, True)
    assert [o["orderCode"] for o in erp.state()["sales_orders"]] == ["FN0000000002"]
    assert [d["resolved_at"] for d in ledger.dead_letters("order_posting")] == [None]  # dead again: open again
    assert ledger.get_order("FN0000000001") is None  # outside the window: untouched
    assert {r["message_id"]: r["state"] for r in ledger.postings()} == states


def test_a_replayed_posting_the_mapping_never_reached_is_given_back_not_closed(erp, ledger_path):
    """The mapping task failed before a replayed posting (say the ledger blinked): booking must not close it."""
    ledger = Ledger.sqlite(ledger_path)
    store(ledger, create_posting(1, "FN0000000001"))
    erp.configure(fail_next=[400])
    assert _f1("run-1")[1]
    OmniInboxClaimOperator(task_id="c", batch_id="run-2", event_types=[CREATE], order_codes=["FN0000000001"]).execute(context={})

    booked = ErpSalesOrderCreateOperator(task_id="b", batch_id="run-2").execute(context={})  # mapping did not run

    assert booked == {"batch_id": "run-2", "skipped": 1}
    with pytest.raises(AirflowFailException, match="not processed in this run"):
        LedgerBatchReportOperator(task_id="r", batch_id="run-2").execute(context={})
    assert ledger.postings()[0]["state"] == PENDING and erp.state()["sales_orders"] == []
    assert _f1("run-3") == ({"batch_id": "run-3", "claimed": 1, "by_event_type": {CREATE: 1}, "retried": 0, "replayed": 0}, False)
    assert [o["orderCode"] for o in erp.state()["sales_orders"]] == ["FN0000000001"]


def test_a_replayed_posting_whose_order_the_erp_already_holds_is_not_booked_twice(erp, ledger_path):
    """The ERP booked the order but its answer never arrived, and the posting ended dead-lettered: a replay
    sends the stored request under the same key, and the ERP answers with the order it has."""
    from omni_erp import keys
    from omni_erp.hooks.erp import ErpHook
    from omni_erp.models.erp import SalesOrderRequest

    ledger = Ledger.sqlite(ledger_path)
    batch = book(ledger, create_posting(1, "FN0000000001"), create=False)  # mapped, not booked by us
    order = ledger.get_order("FN0000000001")
    ErpHook().create_sales_order(
        SalesOrderRequest.model_validate(order["erp_request"]), idempotency_key=keys.create_sales_order("FN0000000001")
    )  # ... but by the ERP, whose answer was lost
    ledger.dead_letter_posting("1", stage="order_posting", reason="gave up after 3 attempts", batch_id=batch)

    claim, red = _f1("replay", order_codes=["FN0000000001"])

    assert (claim["replayed"], red) == (1, False)
    state = erp.state()
    assert [o["orderCode"] for o in state["sales_orders"]] == ["FN0000000001"] and state["duplicates"] == {"sales_order": 1}
    assert ledger.get_order("FN0000000001")["erp_sales_order_id"] == state["sales_orders"][0]["salesOrderId"]
    assert ledger.postings()[0]["outcome"] == "booked"


def test_a_dry_run_names_what_it_would_close_without_booking_and_books_only_what_a_real_run_would(
    erp, ledger_path, capfd
):
    from decimal import Decimal

    from omni_erp.states import ORDER_CANCELLED

    ledger = Ledger.sqlite(ledger_path)
    book(ledger, create_posting(1, "FN0000000001"))  # booked
    ledger.register_order(  # F3 recorded its cancellation before any CREATE arrived
        order_code="FN0000000002", po_number=None, state=ORDER_CANCELLED, create_message_id=None, lines=[],
        total_amount=Decimal(0), erp_request=None,
    )
    erp.configure(fail_next=[400])
    with pytest.raises(AirflowFailException, match="rejected"):
        book(ledger, create_posting(3, "FN0000000003"))  # rejected by the ERP: dead-lettered
    batch = book(ledger, create_posting(4, "FN0000000004"), create=False)
    ledger.update_order("FN0000000004", state=ORDER_BOOKED, erp_sales_order_id="SO-EXTERNAL")  # booked, F2 matched it
    ledger.dead_letter_posting("4", stage="order_posting", reason="gave up after 3 attempts", batch_id=batch)
    store(ledger, create_posting(11, "FN0000000001"), create_posting(2, "FN0000000002"))  # a re-delivery; a late CREATE
    before = database_rows(sqlite_url(ledger_path))
    scope = {"dry_run": True, "order_codes": json.dumps([f"FN000000000{n}" for n in (1, 2, 3, 4)])}
    capfd.readouterr()

    mapped = ErpSalesOrderMapOperator(task_id="m", **scope).execute(context={})
    booked = ErpSalesOrderCreateOperator(task_id="b", **scope).execute(context={})

    assert {k: v for k, v in mapped.items() if k.startswith("would")} == {
        "would_book": 1, "would_close_already_booked": 1, "would_close_cancelled_before_booking": 1,
        "would_close_duplicate_order": 1,
    }
    assert (booked["would_book"], booked["already_booked"], booked["skipped"]) == (1, 1, 2)
    out = capfd.readouterr().out
    assert list(_logged_requests(out)) == ["create:FN0000000003"]  # the rejected order, mapped again
    assert "DRY RUN would map again order 'FN0000000003' from posting 3 (replaying the dead-lettered posting) " \
        "(rejected by the ERP before, PO 4042600003) and book it" in out
    assert "posting 11 (order 'FN0000000001') without booking: duplicate_order" in out
    assert database_rows(sqlite_url(ledger_path)) == before
