"""Claim leases: a live run renews its claims while it works; a dead run's claims go to the next run within minutes.

Time is moved with the package clock (``OMNI_ERP_CLOCK_OFFSET_S``), so minutes pass without sleeping.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from omni_erp.ledger import Ledger
from omni_erp.operators.base import DEFAULT_LEASE_MINUTES, LedgerOperator
from omni_erp.operators.cancellation import ErpOrderCancelOperator
from omni_erp.operators.completion import ErpOrderCompleteOperator
from omni_erp.operators.inbox import OmniInboxClaimOperator
from omni_erp.operators.order_posting import ErpSalesOrderCreateOperator, ErpSalesOrderMapOperator
from omni_erp.operators.returns import ErpSalesReturnOperator
from omni_erp.states import CLAIMED, DONE
from tests.flows import CREATE, create_posting, store


def _on(ledger: Ledger, operator):
    """The operator working on ``ledger`` (instead of the one its connection names)."""
    operator.ledger = ledger
    return operator


def _claim(ledger: Ledger, batch: str, **kwargs) -> int:
    claim = OmniInboxClaimOperator(task_id="claim_postings", batch_id=batch, event_types=[CREATE], **kwargs)
    return _on(ledger, claim).execute(context={})["claimed"]


class Clock:
    """The package clock, moved forward by hand."""

    def __init__(self, monkeypatch) -> None:
        self.monkeypatch = monkeypatch
        self.minutes = 0.0
        monkeypatch.setenv("OMNI_ERP_CLOCK_OFFSET_S", "0")

    def advance(self, minutes: float) -> None:
        self.minutes += minutes
        self.monkeypatch.setenv("OMNI_ERP_CLOCK_OFFSET_S", str(self.minutes * 60))


@pytest.fixture()
def clock(monkeypatch) -> Clock:
    return Clock(monkeypatch)


class Intruder:
    """Another run of the same flow on its own ledger handle, trying to claim the same postings."""

    def __init__(self, ledger_url: str) -> None:
        self.ledger = Ledger(ledger_url)
        self.tries = 0
        self.took: list[str] = []

    def try_to_claim(self) -> None:
        self.tries += 1
        batch = self.ledger.claim_postings(event_types=[CREATE], batch_id=f"intruder-{self.tries}")
        self.took += [p.message_id for p in batch]


def test_every_task_that_holds_claims_and_the_ledger_share_one_short_default_lease():
    from omni_erp.ledger.repo import DEFAULT_LEASE

    tasks = [
        OmniInboxClaimOperator(task_id="claim_postings", event_types=[CREATE]),
        ErpSalesOrderMapOperator(task_id="map_sales_orders"),
        ErpSalesOrderCreateOperator(task_id="create_sales_orders"),
        ErpOrderCancelOperator(task_id="cancel_orders"),
        ErpOrderCompleteOperator(task_id="complete_orders"),
        ErpSalesReturnOperator(task_id="create_return_orders"),
    ]
    assert {task.lease for task in tasks} == {DEFAULT_LEASE}
    # A dead F1 run's postings are free one lease later and taken by the next run (every 5 minutes),
    # well inside F1's 15-minute SLA.
    assert DEFAULT_LEASE + timedelta(minutes=5) <= timedelta(minutes=15) / 1.5


def test_a_dead_run_s_postings_are_taken_over_by_the_next_run_after_the_short_lease(erp, ledger_url, clock):
    """The chaos finding: a run died holding its batch (no report step gave it back)."""
    ledger = Ledger(ledger_url)
    store(ledger, *[create_posting(n, f"FN000000000{n}") for n in range(1, 4)])
    assert _claim(ledger, "f1/dead") == 3
    _on(ledger, ErpSalesOrderMapOperator(task_id="map_sales_orders", batch_id="f1/dead")).execute(context={})
    # ... and the run dies here: nothing books or releases its postings.

    clock.advance(DEFAULT_LEASE_MINUTES - 0.5)
    assert _claim(ledger, "f1/next-1") == 0  # the dead run's claims still hold
    clock.advance(0.5 + 1 / 60)
    assert _claim(ledger, "f1/next-2") == 3  # a lease later, not 30 minutes later
    _on(ledger, ErpSalesOrderMapOperator(task_id="map_sales_orders", batch_id="f1/next-2")).execute(context={})
    summary = _on(ledger, ErpSalesOrderCreateOperator(task_id="create_sales_orders", batch_id="f1/next-2")).execute(context={})

    assert summary == {"batch_id": "f1/next-2", "booked": 3}
    assert {(r["state"], r["outcome"], r["batch_id"]) for r in ledger.postings()} == {(DONE, "booked", "f1/next-2")}
    assert len(erp.state()["sales_orders"]) == 3


class SlowOperator(LedgerOperator):
    """Handles each posting in two minutes (the clock moves); meanwhile another run tries to claim."""

    def __init__(self, *, clock: Clock, intruder: Intruder, **kwargs) -> None:
        super().__init__(**kwargs)
        self.clock = clock
        self.intruder = intruder

    def execute(self, context):
        return self.process_each(self.ledger.claimed_postings(self.batch_id), self._handle, defer=self.defer_posting)

    def _handle(self, posting) -> str:
        self.clock.advance(2)
        self.intruder.try_to_claim()
        assert self.ledger.finish_posting(posting.message_id, outcome="handled", batch_id=self.batch_id)
        return "handled"


def test_a_live_run_keeps_its_claims_past_the_original_lease_against_a_concurrent_claimer(ledger_url, clock):
    ledger = Ledger(ledger_url)
    store(ledger, *[create_posting(n, f"FN000000000{n}") for n in range(1, 6)])
    assert _claim(ledger, "f1/live") == 5
    intruder = Intruder(ledger_url)

    operator = SlowOperator(task_id="work", batch_id="f1/live", clock=clock, intruder=intruder)
    summary = _on(ledger, operator).execute(context={})

    assert summary == {"batch_id": "f1/live", "handled": 5}
    assert clock.minutes == 10 > DEFAULT_LEASE_MINUTES  # twice the lease the claim gave
    assert (intruder.tries, intruder.took) == (5, [])
    assert {(r["state"], r["batch_id"]) for r in ledger.postings()} == {(DONE, "f1/live")}


class SlowCallOperator(ErpSalesOrderCreateOperator):
    """Each HTTP attempt takes two minutes (the clock moves), and another run tries to claim before it is recorded."""

    def __init__(self, *, clock: Clock, intruder: Intruder, **kwargs) -> None:
        super().__init__(**kwargs)
        self.clock = clock
        self.intruder = intruder

    def record_attempt(self, attempt) -> None:
        self.clock.advance(2)
        self.intruder.try_to_claim()
        super().record_attempt(attempt)


def test_one_call_that_outlasts_the_lease_keeps_its_claim(erp, ledger_url, clock):
    """The ERP answers 503 three times; four attempts take eight minutes, longer than the lease."""
    ledger = Ledger(ledger_url)
    store(ledger, create_posting(1, "FN0000000001"))
    assert _claim(ledger, "f1/live") == 1
    _on(ledger, ErpSalesOrderMapOperator(task_id="map_sales_orders", batch_id="f1/live")).execute(context={})
    erp.configure(fail_next=[503, 503, 503])
    intruder = Intruder(ledger_url)

    operator = SlowCallOperator(task_id="create_sales_orders", batch_id="f1/live", clock=clock, intruder=intruder)
    summary = _on(ledger, operator).execute(context={})

    assert summary == {"batch_id": "f1/live", "booked": 1}
    assert clock.minutes == 8 > DEFAULT_LEASE_MINUTES
    assert (intruder.tries, intruder.took) == (4, [])
    [posting] = ledger.postings()
    assert (posting["state"], posting["outcome"], posting["batch_id"]) == (DONE, "booked", "f1/live")


def test_a_renewal_that_finds_the_ledger_down_does_not_stop_the_batch(tmp_path, clock, capfd):
    ledger = Ledger.sqlite(tmp_path / "ledger" / "ledger.sqlite")
    store(ledger, *[create_posting(n, f"FN000000000{n}") for n in range(1, 4)])
    assert _claim(ledger, "f1/live") == 3
    postings = ledger.claimed_postings("f1/live")
    operator = _on(ledger, LedgerOperator(task_id="work", batch_id="f1/live"))
    handled: list[str] = []

    def handle(posting) -> str:
        clock.advance(2)  # every posting is due a renewal
        handled.append(posting.message_id)
        return "handled"

    # The ledger goes down: its connections are closed and its file can no longer be opened.
    ledger.engine.dispose()
    (tmp_path / "ledger").rename(tmp_path / "away")
    capfd.readouterr()
    try:
        summary = operator.process_each(postings, handle, defer=lambda posting, reason: None)
    finally:
        (tmp_path / "away").rename(tmp_path / "ledger")

    assert summary == {"batch_id": "f1/live", "handled": 3}
    assert handled == ["1", "2", "3"]
    assert capfd.readouterr().out.count("Could not renew the lease of batch f1/live (ledger unreachable") == 3
    assert {r["state"] for r in ledger.postings()} == {CLAIMED}  # the claims still hold until their lease ends


def test_a_lease_that_is_not_a_number_of_minutes_is_refused(ledger_url):
    with pytest.raises(ValueError, match="lease_minutes must be a number of minutes >= 0"):
        _claim(Ledger(ledger_url), "f1/bad", lease_minutes=-1)


def test_the_claim_warns_when_http_settings_make_renewals_too_far_apart(ledger_url, monkeypatch, capfd):
    monkeypatch.setenv("OMNI_ERP_HTTP_READ_TIMEOUT_S", "300")  # one attempt may take over five minutes
    capfd.readouterr()
    _claim(Ledger(ledger_url), "f1/run")
    assert "set lease_minutes to at least 14.0" in capfd.readouterr().out  # 2.5 x (5 s + 300 s + 30 s)
    monkeypatch.delenv("OMNI_ERP_HTTP_READ_TIMEOUT_S")
    _claim(Ledger(ledger_url), "f1/run")
    assert "is short for the HTTP settings" not in capfd.readouterr().out


class NoLedger:
    def __getattr__(self, name: str):
        raise AssertionError(f"the ledger was used: {name}")


def test_process_each_leaves_the_ledger_alone_for_items_that_are_not_postings(clock):
    """ERP documents carry no lease: working through them renews nothing."""
    operator = LedgerOperator(task_id="t", batch_id="b")
    operator.ledger = NoLedger()
    handle = lambda item: clock.advance(2) or "handled"  # noqa: E731 - time passes as in the tests above
    assert operator.process_each(["a", "b"], handle, defer=lambda item, reason: None) == {"batch_id": "b", "handled": 2}
