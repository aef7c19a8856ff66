"""LedgerOperator.process_each: one bad item never stops a batch, nothing is lost, and the run shows red."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from airflow.sdk.exceptions import AirflowFailException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omni_erp.exceptions import RemoteUnavailableError
from omni_erp.hooks.base import ConnectionConfigError
from omni_erp.ledger import Ledger
from omni_erp.operators.base import LedgerOperator
from omni_erp.operators.inbox import OmniInboxClaimOperator
from omni_erp.operators.order_posting import ErpSalesOrderCreateOperator, ErpSalesOrderMapOperator
from omni_erp.states import CLAIMED, DEAD, DONE, PENDING
from tests.flows import CREATE, create_posting, store


class PoisonPill(Exception):
    """What a handler raises for an item it cannot cope with (stands for any bug or surprise in a handler)."""


class CountingOperator(LedgerOperator):
    """Finishes every claimed posting, except those named in ``poison``, whose handling raises ``error``."""

    def __init__(self, *, poison: dict[str, BaseException], **kwargs) -> None:
        super().__init__(**kwargs)
        self.poison = poison

    def execute(self, context):
        return self.process_each(
            self.ledger.claimed_postings(self.batch_id),
            self._handle,
            defer=self.defer_posting,
            give_up=self.dead_letter_posting,
        )

    def _handle(self, posting) -> str:
        if posting.message_id in self.poison:
            raise self.poison[posting.message_id]
        self.ledger.finish_posting(posting.message_id, outcome="handled", batch_id=self.batch_id)
        return "handled"


def _on(ledger: Ledger, operator):
    """The operator working on ``ledger`` (instead of the one its connection names)."""
    operator.ledger = ledger
    return operator


def _claim(batch: str, ledger: Ledger | None = None) -> None:
    claim = OmniInboxClaimOperator(task_id="claim", batch_id=batch, event_types=[CREATE])
    (_on(ledger, claim) if ledger else claim).execute(context={})


def _by_id(ledger: Ledger) -> dict[str, dict]:
    return {row["message_id"]: row for row in ledger.postings()}


def test_a_poison_posting_is_deferred_then_dead_lettered_while_the_good_ones_are_done(ledger_url, monkeypatch):
    monkeypatch.delenv("OMNI_ERP_MAX_ITEM_ATTEMPTS", raising=False)  # the default: 3 attempts
    ledger = Ledger(ledger_url)
    store(ledger, *[create_posting(i, f"FN000000000{i}") for i in range(1, 6)])
    poison = {"3": PoisonPill("the handler cannot cope with FN0000000003\u202e")}

    def run_batch(batch: str):
        _claim(batch, ledger)
        return _on(ledger, CountingOperator(task_id="t", batch_id=batch, poison=poison)).execute(context={})

    for run in (1, 2):
        with pytest.raises(AirflowFailException, match=r"1 item\(s\) deferred of \d in this run") as failed:
            run_batch(f"run-{run}")
        assert "PoisonPill" in str(failed.value)
        rows = _by_id(ledger)
        assert {m: r["state"] for m, r in rows.items() if m != "3"} == dict.fromkeys(["1", "2", "4", "5"], DONE)
        assert rows["3"]["state"] == PENDING and rows["3"]["attempts"] == run
        assert f"(attempt {run} of 3)" in rows["3"]["last_error"]
        assert "\\u202e" in rows["3"]["last_error"] and "\u202e" not in rows["3"]["last_error"]

    with pytest.raises(AirflowFailException, match=r"1 item\(s\) dead-lettered, rejected or failed of 1 in this run"):
        run_batch("run-3")
    poisoned = _by_id(ledger)["3"]
    assert (poisoned["state"], poisoned["outcome"]) == (DEAD, "dead_letter")
    [dead] = ledger.dead_letters("order_posting")
    assert dead["message_id"] == "3" and dead["business_key"] == "FN0000000003"
    assert dead["reason"].startswith("gave up after 3 attempts: unexpected error: PoisonPill:")

    assert run_batch("run-4") == {"batch_id": "run-4"}  # nothing holds the queue any more


def test_a_ledger_outage_fails_the_task_and_blames_no_item(ledger_path, monkeypatch):
    ledger = Ledger.sqlite(ledger_path)
    store(ledger, create_posting(1, "FN0000000001"), create_posting(2, "FN0000000002"))
    _claim("run-1")
    # A real database that cannot be reached: SQLite cannot open a file in a directory that does not exist.
    unreachable = sa.create_engine(f"sqlite:///{ledger_path.parent / 'no-such-dir' / 'ledger.sqlite'}")

    def outage(posting):
        with unreachable.connect():
            return "never"

    operator = CountingOperator(task_id="t", batch_id="run-1", poison={})
    with pytest.raises(sa.exc.OperationalError):
        operator.process_each(
            ledger.claimed_postings("run-1"), outage, defer=operator.defer_posting, give_up=operator.dead_letter_posting
        )
    assert {r["state"] for r in ledger.postings()} == {CLAIMED}
    assert all(r["attempts"] == 0 and r["last_error"] is None for r in ledger.postings())
    assert ledger.dead_letters() == []


def test_an_erp_outage_never_dead_letters_however_often_a_posting_was_deferred(erp, ledger_path, monkeypatch):
    monkeypatch.setenv("OMNI_ERP_MAX_ITEM_ATTEMPTS", "2")
    ledger = Ledger.sqlite(ledger_path)
    store(ledger, create_posting(1, "FN0000000001"))
    for run in range(1, 4):
        _claim(f"run-{run}")
        if run == 1:
            ErpSalesOrderMapOperator(task_id="m", batch_id="run-1").execute(context={})
            erp.configure(error_rate=1.0)
        with pytest.raises(AirflowFailException, match=r"1 item\(s\) deferred"):
            ErpSalesOrderCreateOperator(task_id="b", batch_id=f"run-{run}").execute(context={})
    [row] = ledger.postings()
    assert (row["state"], row["attempts"]) == (PENDING, 3) and "503" in row["last_error"]
    assert ledger.dead_letters() == []


def test_a_misconfigured_erp_connection_fails_the_task_and_leaves_the_postings_alone(erp, ledger_path, monkeypatch):
    ledger = Ledger.sqlite(ledger_path)
    store(ledger, create_posting(1, "FN0000000001"), create_posting(2, "FN0000000002"))
    _claim("run-1")
    ErpSalesOrderMapOperator(task_id="m", batch_id="run-1").execute(context={})
    monkeypatch.setenv("AIRFLOW_CONN_ERP_DEFAULT", json.dumps({"conn_type": "http", "host": erp.url}))  # no token
    with pytest.raises(ConnectionConfigError, match="needs the ERP API token"):
        ErpSalesOrderCreateOperator(task_id="b", batch_id="run-1").execute(context={})
    assert [(r["state"], r["attempts"]) for r in ledger.postings()] == [(CLAIMED, 0), (CLAIMED, 0)]
    assert erp.state()["sales_orders"] == []


def test_a_corrupt_ledger_row_is_isolated_and_the_other_orders_are_booked(erp, ledger_path, monkeypatch):
    """F1 for real: one order's stored ERP request cannot be read back (an older version wrote it)."""
    monkeypatch.setenv("OMNI_ERP_MAX_ITEM_ATTEMPTS", "2")
    ledger = Ledger.sqlite(ledger_path)
    store(ledger, *[create_posting(i, f"FN000000000{i}") for i in range(1, 5)])
    _claim("run-1")
    ErpSalesOrderMapOperator(task_id="m", batch_id="run-1").execute(context={})
    ledger.update_order("FN0000000002", erp_request=json.dumps({"orderCode": "FN0000000002", "lines": "??"}))

    with pytest.raises(AirflowFailException, match=r"1 item\(s\) deferred of 4 in this run \(posting 2"):
        ErpSalesOrderCreateOperator(task_id="b", batch_id="run-1").execute(context={})
    assert sorted(o["orderCode"] for o in erp.state()["sales_orders"]) == ["FN0000000001", "FN0000000003", "FN0000000004"]
    row = _by_id(ledger)["2"]
    assert row["state"] == PENDING and "ValidationError" in row["last_error"]

    _claim("run-2")
    with pytest.raises(AirflowFailException, match="dead-lettered"):
        ErpSalesOrderCreateOperator(task_id="b", batch_id="run-2").execute(context={})
    assert _by_id(ledger)["2"]["state"] == DEAD
    [dead] = ledger.dead_letters("order_posting")
    assert dead["business_key"] == "FN0000000002" and "gave up after 2 attempts" in dead["reason"]
    assert len(erp.state()["sales_orders"]) == 3


# --- the contract as a property: any mix of good items, poison items and outages ---------------------------


@dataclass(frozen=True)
class Item:
    name: str
    kind: str  # good | poison | outage
    attempts: int


ITEMS = st.lists(
    st.builds(Item, name=st.text(max_size=8), kind=st.sampled_from(["good", "poison", "outage"]), attempts=st.integers(0, 6)),
    max_size=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=ITEMS, limit=st.integers(1, 4))
def test_every_item_gets_exactly_one_outcome_and_only_good_batches_succeed(items, limit, monkeypatch):
    monkeypatch.setenv("OMNI_ERP_MAX_ITEM_ATTEMPTS", str(limit))
    handled: list[int] = []
    deferred: list[int] = []
    dead: list[int] = []
    position = {id(item): n for n, item in enumerate(items)}

    def handle(item: Item) -> str:
        if item.kind == "poison":
            raise PoisonPill(item.name)
        if item.kind == "outage":
            raise RemoteUnavailableError("erp", 503, "down")
        handled.append(position[id(item)])
        return "handled"

    operator = LedgerOperator(task_id="t", batch_id="b")
    try:
        summary = operator.process_each(
            items,
            handle,
            defer=lambda item, reason: deferred.append(position[id(item)]),
            give_up=lambda item, reason: dead.append(position[id(item)]),
            max_consecutive_unavailable=len(items) + 1,  # the circuit breaker has its own test
        )
    except AirflowFailException:
        failed = True
    else:
        failed = False
        assert summary == {"batch_id": "b", **({"handled": len(items)} if items else {})}

    assert sorted(handled + deferred + dead) == list(range(len(items)))  # each item exactly once
    assert handled == [n for n, item in enumerate(items) if item.kind == "good"]
    assert sorted(dead) == [n for n, item in enumerate(items) if item.kind == "poison" and item.attempts + 1 >= limit]
    assert failed == any(item.kind != "good" for item in items)


def test_an_item_whose_deferral_cannot_be_recorded_does_not_stop_the_batch():
    handled: list[str] = []

    def defer(item: str, reason: str) -> None:
        raise ValueError("cannot record this one")

    def handle(item: str) -> str:
        if item == "bad":
            raise PoisonPill(item)
        handled.append(item)
        return "handled"

    with pytest.raises(AirflowFailException, match=r"1 item\(s\) dead-lettered, rejected or failed of 3"):
        LedgerOperator(task_id="t", batch_id="b").process_each(["a", "bad", "c"], handle, defer=defer)
    assert handled == ["a", "c"]
