"""The watchers against a real ledger (SQLite and PostgreSQL) and the ERP sandbox, run on an asyncio loop as the
triggerer runs them: a burst fires once, nothing fires again without new work, and the loop is never blocked."""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Awaitable, Callable

import pytest

from omni_erp.ledger import Ledger
from omni_erp.triggers import ErpFeedTrigger, LedgerPostingsTrigger
from tests.flows import CANCEL, CREATE, book, create_posting, record_invoices, store

# Quick polls; a quiet window long enough that a loaded machine's slow writes still look like one burst.
FAST = {"poll_interval_s": 0.05, "quiet_s": 1.0, "max_wait_s": 10.0}


def watch(trigger, scenario: Callable[[list[dict]], Awaitable[None]]) -> list[dict]:
    """Run ``trigger`` on a fresh event loop while ``scenario(fired)`` runs; the payloads it fired (the list
    ``scenario`` sees filling up as events come)."""

    async def main() -> list[dict]:
        fired: list[dict] = []

        async def collect() -> None:
            async for event in trigger.run():
                fired.append(event.payload)

        watcher = asyncio.create_task(collect())
        try:
            await scenario(fired)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        return fired

    return asyncio.run(main())


def postings(first: int, count: int, prefix: str = "FNBURST") -> list[dict]:
    return [create_posting(first + n, f"{prefix}{first + n:06d}") for n in range(count)]


def use_ledger(ledger_url: str, monkeypatch) -> Ledger:
    """The ledger at ``ledger_url``, reachable through the ``omni_erp_ledger`` connection as in production."""
    import json

    from sqlalchemy.engine import make_url

    url = make_url(ledger_url)
    if url.get_backend_name() == "sqlite":
        conn = {"conn_type": "sqlite", "host": url.database}
    else:
        conn = {"conn_type": "postgres", "host": url.host, "port": url.port, "login": url.username, "schema": url.database}
    monkeypatch.setenv("AIRFLOW_CONN_OMNI_ERP_LEDGER", json.dumps(conn))
    return Ledger(ledger_url)


@pytest.fixture()
def ledger_conn(ledger_url, monkeypatch) -> Ledger:
    """This test's ledger on SQLite and on PostgreSQL, through the ledger connection."""
    return use_ledger(ledger_url, monkeypatch)


def test_a_burst_of_postings_fires_once_and_nothing_fires_without_new_work(ledger_conn):
    trigger = LedgerPostingsTrigger(event_type=CREATE, **FAST)
    fired_after_burst: list[int] = []

    async def scenario(fired: list[dict]) -> None:
        await asyncio.sleep(0.5)  # an empty inbox: nothing to announce
        assert fired == []
        for n in range(0, 40, 8):  # 40 postings in 5 quick bursts, each well inside the quiet window
            await asyncio.to_thread(store, ledger_conn, *postings(n + 1, 8))
            await asyncio.sleep(0.05)
        await asyncio.sleep(2.5)
        fired_after_burst.append(len(fired))
        await asyncio.sleep(2.0)  # the postings stay pending (no run took them): still nothing new

    fired = watch(trigger, scenario)

    assert fired_after_burst == [1]
    [event] = fired
    assert event["reason"] == "new" and event["watching"] == f"ledger postings {CREATE}"
    assert event["newest"] == max(p["id"] for p in ledger_conn.postings(CREATE))


def test_only_the_flows_own_event_type_and_new_work_fire_again(sqlite_ledger_url, monkeypatch):
    ledger_conn = use_ledger(sqlite_ledger_url, monkeypatch)
    trigger = LedgerPostingsTrigger(event_type=CREATE, **FAST)

    async def scenario(fired: list[dict]) -> None:
        await asyncio.to_thread(store, ledger_conn, *postings(1, 5))
        await asyncio.sleep(1.5)
        cancel = {**create_posting(900, "FNBURST000001"), "eventType": CANCEL}
        await asyncio.to_thread(store, ledger_conn, cancel)  # another flow's work
        await asyncio.sleep(1.5)
        await asyncio.to_thread(store, ledger_conn, *postings(6, 3))
        await asyncio.sleep(2.0)

    fired = watch(trigger, scenario)

    assert [e["reason"] for e in fired] == ["new", "new"]
    assert fired[1]["newest"] > fired[0]["newest"]


def test_before_the_ledger_exists_the_watcher_waits_without_creating_it(tmp_path, monkeypatch):
    import json

    path = tmp_path / "not-yet.sqlite"
    monkeypatch.setenv("AIRFLOW_CONN_OMNI_ERP_LEDGER", json.dumps({"conn_type": "sqlite", "host": str(path)}))

    async def scenario(fired: list[dict]) -> None:
        await asyncio.sleep(0.5)

    assert watch(LedgerPostingsTrigger(event_type=CREATE, **FAST), scenario) == []
    assert not path.exists() or path.stat().st_size == 0


def test_the_einvoice_feed_fires_once_per_batch_of_new_invoices_beyond_the_cursor(erp, ledger_path):
    ledger = Ledger.from_conn_id()
    trigger = ErpFeedTrigger(feed="einvoices", cursor_name="erp_einvoice_seq", **FAST)

    async def scenario(fired: list[dict]) -> None:
        await asyncio.sleep(0.4)
        assert fired == []
        await asyncio.to_thread(book, ledger, *postings(1, 6, prefix="FNFEED"))  # F1 books 6; the ERP e-invoices them
        await asyncio.sleep(2.5)
        assert len(fired) == 1
        await asyncio.to_thread(record_invoices, 6)  # F2 reads them: the cursor passes them
        await asyncio.sleep(2.0)
        assert len(fired) == 1
        await asyncio.to_thread(book, ledger, *postings(7, 2, prefix="FNFEED"))
        await asyncio.sleep(2.5)

    fired = watch(trigger, scenario)

    assert [e["reason"] for e in fired] == ["new", "new"]
    seqs = sorted(i["seq"] for i in erp.state()["invoices"])
    assert (fired[0]["newest"], fired[1]["newest"]) == (seqs[5], seqs[7])


def test_a_slow_erp_never_blocks_the_triggerer_loop(erp, ledger_path):
    """The feed is read in a worker thread: other coroutines keep their pace while the ERP takes a second to answer."""
    erp.configure(latency_ms=1000)
    trigger = ErpFeedTrigger(feed="einvoices", cursor_name="erp_einvoice_seq", **FAST)
    gaps: list[float] = []

    async def scenario(fired: list[dict]) -> None:
        last = time.monotonic()
        end = last + 2.5
        while time.monotonic() < end:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    watch(trigger, scenario)

    assert erp.state()["request_counts"].get("GET /api/v1/e-invoices", 0) >= 2  # it did ask, more than once
    assert max(gaps) < 0.5  # a probe on the loop would stall it for the ERP's whole second


@pytest.mark.parametrize(
    "trigger",
    [LedgerPostingsTrigger(event_type=CREATE), ErpFeedTrigger(feed="credit_notes", cursor_name="erp_credit_note_seq")],
    ids=["ledger", "feed"],
)
def test_a_trigger_is_rebuilt_from_what_it_serializes(trigger):
    from airflow.triggers.base import BaseEventTrigger

    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)

    assert rebuilt.serialize() == (classpath, kwargs)
    assert BaseEventTrigger.hash(*rebuilt.serialize()) == BaseEventTrigger.hash(classpath, kwargs)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: LedgerPostingsTrigger(event_type="OUTWARD_ORDER_SHIPMENT_DISPATCH"), "event_type"),
        (lambda: ErpFeedTrigger(feed="orders", cursor_name="x"), "feed"),
        (lambda: LedgerPostingsTrigger(event_type=CREATE, poll_interval_s=0), "poll_interval_s"),
        (lambda: LedgerPostingsTrigger(event_type=CREATE, quiet_s=10, max_wait_s=1), "quiet_s"),
    ],
)
def test_bad_settings_fail_when_the_dag_file_is_parsed(build, message):
    with pytest.raises(ValueError, match=message):
        build()
