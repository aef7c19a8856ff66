"""Group commit of the booking writes (issue 8: CPU per booked order): several ERP answers recorded in one
ledger transaction, still exactly once, still routed and isolated per item.

Against the ERP sandbox over real HTTP, on SQLite and PostgreSQL: a booking task killed after the ERP
answered and before its group was committed books nothing twice when the batch is worked again; a bad item
in a group fails alone and its neighbours' bookings are recorded.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest
import sqlalchemy as sa

from omni_erp.ledger import Ledger
from omni_erp.ledger import tables as t
from omni_erp.operators.base import GroupCommit
from omni_erp.operators.inbox import OmniInboxClaimOperator
from omni_erp.operators.order_posting import ErpSalesOrderCreateOperator, ErpSalesOrderMapOperator
from omni_erp.states import CLAIMED, DONE, ORDER_BOOKED, ORDER_READY
from tests.flows import CREATE, create_posting, store


@pytest.fixture()
def ledger(ledger_url, monkeypatch) -> Ledger:
    """A fresh ledger on SQLite or PostgreSQL, and ``omni_erp_ledger`` pointing the operators at it."""
    url = sa.make_url(ledger_url)
    if url.get_backend_name() == "sqlite":
        conn = {"conn_type": "sqlite", "host": url.database}
    else:
        conn = {"conn_type": "postgres", "host": url.host, "port": url.port, "login": url.username, "schema": url.database}
    monkeypatch.setenv("AIRFLOW_CONN_OMNI_ERP_LEDGER", json.dumps(conn))
    return Ledger.from_conn_id()


def _claim_and_map(batch: str, count: int) -> list[str]:
    codes = [f"FG{n:010d}" for n in range(1, count + 1)]
    store(Ledger.from_conn_id(), *(create_posting(n, code) for n, code in enumerate(codes, start=1)))
    OmniInboxClaimOperator(task_id="claim", batch_id=batch, event_types=[CREATE]).execute(context={})
    ErpSalesOrderMapOperator(task_id="map", batch_id=batch).execute(context={})
    return codes


def _erp_orders(erp) -> dict[str, str]:
    """Order code -> ERP sales order id; fails if the ERP holds two sales orders for one order."""
    orders = erp.state()["sales_orders"]
    codes = Counter(o["orderCode"] for o in orders)
    assert [c for c, n in codes.items() if n > 1] == [], "double booking in the ERP"
    return {o["orderCode"]: o["salesOrderId"] for o in orders}


def _ledger_orders(ledger: Ledger) -> dict[str, tuple[str, str | None]]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.select(t.ajio_order.c.order_code, t.ajio_order.c.state, t.ajio_order.c.erp_sales_order_id))
        return {code: (state, sales_order_id) for code, state, sales_order_id in rows}


class Killed(BaseException):
    """The task process being stopped (SIGTERM, a task timeout): not an item's problem, nothing catches it."""


def test_a_task_killed_between_the_erp_answer_and_the_group_commit_books_nothing_twice(erp, ledger, monkeypatch):
    codes = _claim_and_map("omni_order_posting/scheduled__1", 40)
    erp.configure(latency_ms=5)

    def killed(self, booked):
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(ErpSalesOrderCreateOperator, "_record_booking", killed)
        first = ErpSalesOrderCreateOperator(task_id="create", batch_id="omni_order_posting/scheduled__1", max_in_flight=8)
        with pytest.raises(Killed):
            first.execute(context={})

    booked_before = _erp_orders(erp)
    assert booked_before  # the ERP booked orders whose answers never reached the ledger
    assert {state for state, _ in _ledger_orders(ledger).values()} == {ORDER_READY}
    assert {p["state"] for p in ledger.postings(CREATE)} == {CLAIMED}

    # The retry of the task works the same batch: every order is booked once, the lost answers replayed by key.
    summary = ErpSalesOrderCreateOperator(
        task_id="create", batch_id="omni_order_posting/scheduled__1", max_in_flight=8
    ).execute(context={})
    assert summary["already_booked"] == len(booked_before)
    assert summary.get("booked", 0) == len(codes) - len(booked_before)
    booked = _erp_orders(erp)
    assert sorted(booked) == codes
    assert _ledger_orders(ledger) == {code: (ORDER_BOOKED, booked[code]) for code in codes}
    assert {p["state"] for p in ledger.postings(CREATE)} == {DONE}


def test_a_bad_item_in_a_group_fails_alone_and_the_others_are_recorded(erp, ledger):
    codes = _claim_and_map("b", 6)
    operator = ErpSalesOrderCreateOperator(task_id="create", batch_id="b")
    messages = {p["order_code"]: p["message_id"] for p in ledger.postings(CREATE)}
    first_recorded = threading.Event()
    queued_behind = threading.Event()
    record = operator._record_booking

    def record_slowly_at_first(booked):
        if booked[0] == codes[0]:  # the first group (this item alone) waits until the others queue behind it
            first_recorded.set()
            assert queued_behind.wait(10)
        return record(booked)

    commit = GroupCommit(operator.ledger, record_slowly_at_first)  # the ledger whose transaction record joins
    # codes[3]'s ERP id is no value a database can store: recording it raises inside the group's transaction.
    ids = {code: f"SO-{code}" for code in codes} | {codes[3]: {"not": "bindable"}}
    results: dict[str, object] = {}

    def submit(code: str) -> None:
        try:
            results[code] = commit.submit((code, messages[code], ids[code]))
        except Exception as exc:  # noqa: BLE001 - the item's own failure is what is checked
            results[code] = exc

    leader = threading.Thread(target=submit, args=(codes[0],))
    leader.start()
    assert first_recorded.wait(10)
    followers = [threading.Thread(target=submit, args=(code,)) for code in codes[1:]]
    for thread in followers:
        thread.start()
    deadline = time.monotonic() + 10
    while len(commit._queue) < len(followers) and time.monotonic() < deadline:
        time.sleep(0.01)
    queued_behind.set()
    for thread in [leader, *followers]:
        thread.join(10)

    assert isinstance(results.pop(codes[3]), Exception)
    assert results == {code: True for code in codes if code != codes[3]}
    stored = _ledger_orders(ledger)
    assert stored.pop(codes[3]) == (ORDER_READY, None)  # the bad item: nothing written
    assert stored == {code: (ORDER_BOOKED, f"SO-{code}") for code in codes if code != codes[3]}
    states = {p["order_code"]: p["state"] for p in ledger.postings(CREATE)}
    assert states.pop(codes[3]) == CLAIMED
    assert set(states.values()) == {DONE}
    # The first item alone, then the group of five failed whole and was recorded one item at a time.
    assert commit.groups == 1 + 4

