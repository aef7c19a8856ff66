"""Sharded claims (issue 9.1): the shards of one batch split its postings without overlap or gap, on both ledgers,
and shards working at once on PostgreSQL never take the same posting."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_erp.ledger import Ledger
from omni_erp.states import CLAIMED, PENDING
from tests.flows import CREATE, create_posting, store


def _store(ledger: Ledger, count: int, first: int = 1) -> None:
    store(ledger, *(create_posting(n, f"FN{n:010d}") for n in range(first, first + count)))


def test_the_shards_of_a_batch_split_it_without_overlap_or_gap(ledger_url):
    ledger = Ledger(ledger_url)
    _store(ledger, 23)
    shards = 4
    claimed = {k: ledger.claim_postings(event_types=[CREATE], batch_id="f1/run", shard=k, shards=shards) for k in range(shards)}
    ids = [p.message_id for ps in claimed.values() for p in ps]
    assert Counter(ids) == Counter(str(n) for n in range(1, 24))  # every posting once
    assert all(claimed[k] for k in range(shards))  # and every shard got a part
    # Each shard reads back exactly its own part of the shared batch (what its push task works on).
    for k in range(shards):
        again = ledger.claimed_postings("f1/run", [CREATE], shard=k, shards=shards)
        assert [p.message_id for p in again] == [p.message_id for p in claimed[k]]
    assert len(ledger.claimed_postings("f1/run", [CREATE])) == 23  # unsharded: the whole batch (the report's view)


@settings(max_examples=15, deadline=None)
@given(count=st.integers(0, 30), shards=st.integers(1, 6), limit=st.integers(1, 12))
def test_any_number_of_shards_partitions_the_pending_postings(tmp_path_factory, count, shards, limit):
    from omni_erp.ledger.engine import sqlite_url

    ledger = Ledger(sqlite_url(tmp_path_factory.mktemp("shards") / "ledger.sqlite"))
    _store(ledger, count)
    seen: list[str] = []
    for k in range(shards):
        page = ledger.claim_postings(event_types=[CREATE], batch_id="b", shard=k, shards=shards, limit=limit)
        assert len(page) <= limit
        assert {int(p.message_id) % shards for p in page} <= {k}  # ids are 1..count, in insertion order
        seen += [p.message_id for p in page]
    assert len(seen) == len(set(seen))
    assert len(seen) == sum(min(limit, len([n for n in range(1, count + 1) if n % shards == k])) for k in range(shards))


@pytest.mark.parametrize(("shard", "shards"), [(-1, 2), (2, 2), (0, 0)])
def test_a_shard_outside_its_range_is_refused(sqlite_ledger_url, shard, shards):
    ledger = Ledger(sqlite_ledger_url)
    with pytest.raises(ValueError, match="shard must be in"):
        ledger.claim_postings(event_types=[CREATE], batch_id="b", shard=shard, shards=shards)
    with pytest.raises(ValueError, match="shard must be in"):
        ledger.claimed_postings("b", shard=shard, shards=shards)


def test_a_dead_shards_claims_are_released_by_the_report_or_expire(ledger_url):
    ledger = Ledger(ledger_url)
    _store(ledger, 6)
    ledger.claim_postings(event_types=[CREATE], batch_id="run-1", shard=1, shards=2)
    # (A claim renews the lease of the whole batch, so the shard that dies must be the last to claim here.)
    ledger.claim_postings(event_types=[CREATE], batch_id="run-1", shard=0, shards=2, lease=timedelta(0))
    # Shard 0's lease (zero here) ran out: the next run takes its postings; shard 1's stay with run-1.
    taken = ledger.claim_postings(event_types=[CREATE], batch_id="run-2")
    assert sorted(int(p.message_id) for p in taken) == [2, 4, 6]
    # run-1's report gives back what it still holds.
    assert ledger.release_unfinished("run-1", error="run ended") == 3
    assert Counter(p["state"] for p in ledger.postings()) == Counter({PENDING: 3, CLAIMED: 3})


@pytest.mark.postgres
def test_shards_claiming_at_once_never_take_the_same_posting(pg_ledger_url):
    """Eight claimers (two runs x four shards) race on PostgreSQL; SKIP LOCKED keeps them apart."""
    ledger = Ledger(pg_ledger_url)
    _store(ledger, 200)
    start = threading.Barrier(8)
    results: dict[tuple[str, int], list[str]] = {}

    def claim(batch: str, shard: int) -> None:
        start.wait()
        got = []
        while page := ledger.claim_postings(event_types=[CREATE], batch_id=f"{batch}-{len(got)}", shard=shard, shards=4, limit=7):
            got += [p.message_id for p in page]
        results[(batch, shard)] = got

    threads = [threading.Thread(target=claim, args=(b, k)) for b in ("a", "b") for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    every = [m for got in results.values() for m in got]
    assert Counter(every) == Counter(str(n) for n in range(1, 201))
    for (_, shard), got in results.items():
        assert {int(m) % 4 for m in got} <= {shard}


def test_sharded_push_tasks_each_book_their_own_part_and_together_every_order_once(erp, ledger_path):
    """The F1 push step as three mapped tasks on one batch: disjoint parts, every order booked once, a retry books nothing."""
    from omni_erp.operators.inbox import OmniInboxClaimOperator
    from omni_erp.operators.order_posting import ErpSalesOrderCreateOperator, ErpSalesOrderMapOperator

    ledger = Ledger.sqlite(ledger_path)
    _store(ledger, 12)
    OmniInboxClaimOperator(task_id="claim", batch_id="f1/run", event_types=[CREATE]).execute(context={})
    ErpSalesOrderMapOperator(task_id="map", batch_id="f1/run").execute(context={})
    summaries = [
        ErpSalesOrderCreateOperator(task_id="create", batch_id="f1/run", shard=k, shards="3").execute(context={})
        for k in range(3)
    ]
    assert [s["booked"] for s in summaries] == [4, 4, 4]
    assert Counter(o["orderCode"] for o in erp.state()["sales_orders"]) == Counter(f"FN{n:010d}" for n in range(1, 13))
    again = ErpSalesOrderCreateOperator(task_id="create", batch_id="f1/run", shard=1, shards=3).execute(context={})
    assert again.get("booked", 0) == 0  # the shard's postings are done: a retry finds nothing to book
    assert len(erp.state()["sales_orders"]) == 12


@pytest.mark.parametrize("bad", ["0", "17", "two"])
def test_a_bad_shards_param_fails_the_task_before_any_booking(erp, ledger_path, bad):
    from omni_erp.operators.order_posting import ErpSalesOrderCreateOperator
    from omni_erp.operators.shards import ShardIdsOperator

    with pytest.raises(ValueError, match="shards must be a whole number from 1 to 16"):
        ShardIdsOperator(task_id="shard_ids", shards=bad).execute(context={})
    with pytest.raises(ValueError, match="shards must be a whole number"):
        ErpSalesOrderCreateOperator(task_id="create", batch_id="b", shards=bad).execute(context={})
    assert erp.state()["sales_orders"] == []


@pytest.mark.integration
def test_f1_with_four_shards_books_every_order_once_in_four_mapped_tasks(erp, inbox, ledger_path, run_dag):
    from omni_erp.sandbox.pusher import PostingPusher
    from tests.conftest import INBOX_KEY

    postings = [create_posting(n, f"FN{n:010d}") for n in range(1, 21)]
    assert PostingPusher(inbox, INBOX_KEY, backoff_s=0.01).push(postings).accepted == 20
    run = run_dag("omni_order_posting")(shards=4)
    assert run.state == "success"
    shard_tis = sorted((ti.map_index, ti.state) for ti in run.get_task_instances() if ti.task_id == "create_sales_orders")
    assert shard_tis == [(k, "success") for k in range(4)]
    assert Counter(o["orderCode"] for o in erp.state()["sales_orders"]) == Counter(p["orderCode"] for p in postings)
