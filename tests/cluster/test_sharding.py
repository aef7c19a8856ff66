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
