"""Two or three runs of one flow at once on the PostgreSQL ledger, each a real OS process: nothing is done twice.

A scheduled run overlapping a manual trigger, or two workers, run the same operators on the same
inbox at the same time (``tests/operators/concurrent_worker.py``; a start line makes them overlap).
Each posting must be claimed and finished by exactly one run and each order touched once in the ERP
sandbox. Issue 7.2: a task retried while its first try is still alive works the SAME batch twice; that
must book nothing twice and must not take the other try's booking for a cancellation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from omni_erp import keys
from omni_erp.ledger import Ledger
from omni_erp.ledger import tables as t
from omni_erp.sandbox.lifecycle import cancel_posting
from omni_erp.states import CANCEL_SALES_ORDER, CLAIMED, DONE, ORDER_BOOKED, ORDER_CANCELLED
from tests.conftest import REPO
from tests.flows import CANCEL, CREATE, book, create_posting, store

pytestmark = pytest.mark.postgres

CREATE_ORDER = "POST /api/v1/sales-orders"
CANCEL_ORDER = "POST /api/v1/sales-orders/{salesOrderId}/cancel"
START_TIMEOUT_S = 180  # three interpreters importing Airflow at once on a busy 2-core machine
JOB_TIMEOUT_S = 180


def ledger_connection(url: str) -> str:
    """``AIRFLOW_CONN_OMNI_ERP_LEDGER`` for a PostgreSQL URL (trust authentication: no password)."""
    parts = sa.make_url(url)
    return json.dumps({"conn_type": "postgres", "host": parts.host, "port": parts.port, "login": parts.username,
                       "schema": parts.database})


@dataclass
class WorkerResult:
    """What one worker did in one job: the batch, when, and per round the postings claimed and the summaries."""

    batch_id: str
    started: float
    ended: float
    rounds: list[dict[str, Any]]
    log: str

    @property
    def claimed(self) -> list[str]:
        return [message_id for r in self.rounds for message_id in r["claimed"]]

    def outcomes(self) -> Counter[str]:
        """Outcome counts of the flow's last operator over every round (create_sales_orders / cancel_orders)."""
        total: Counter[str] = Counter()
        for r in self.rounds:
            last = r.get("summaries", [{}])[-1]
            total.update({k: v for k, v in last.items() if isinstance(v, int)})
        return total


class WorkerPool:
    """Worker processes (``tests/operators/concurrent_worker.py``) started once, given jobs that start together."""

    def __init__(self, directory: Path, size: int) -> None:
        self.dir = directory
        self.names = [f"w{n}" for n in range(size)]
        self.jobs = 0
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self) -> None:
        for name in self.names:
            with (self.dir / f"{name}.log").open("w") as log:
                self.procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "tests.operators.concurrent_worker", "--dir", str(self.dir), "--name", name],
                    cwd=REPO, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT,
                )

    def stop(self) -> None:
        (self.dir / "stop").write_text("stop")
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _log(self, name: str) -> str:
        return (self.dir / f"{name}.log").read_text(errors="replace")

    def _wait(self, files: dict[str, Path], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(path.exists() for path in files.values()):
            for name in files:
                assert self.procs[name].poll() is None, f"worker {name} exited: {self._log(name)[-3000:]}"
            assert time.monotonic() < deadline, f"workers did not {what} within {timeout_s} s"
            time.sleep(0.02)

    def run(self, flow: str, batch_ids: list[str], *, limit: int = 500) -> list[WorkerResult]:
        """One worker per batch id runs ``flow``; all start at once when all are ready. Their results, in order."""
        k, self.jobs = self.jobs, self.jobs + 1
        names = self.names[: len(batch_ids)]
        self._wait({n: self.dir / f"{n}.ready-{k}" for n in self.names}, START_TIMEOUT_S, "get ready")
        log_sizes = {n: len(self._log(n)) for n in names}
        job = {n: {"flow": flow, "batch_id": b, "limit": limit} for n, b in zip(names, batch_ids, strict=True)}
        (self.dir / f"job-{k}.tmp").write_text(json.dumps(job))
        (self.dir / f"job-{k}.tmp").rename(self.dir / f"job-{k}.json")  # the start line: appears at once
        outputs = {n: self.dir / f"{n}.out-{k}.json" for n in names}
        self._wait(outputs, JOB_TIMEOUT_S, f"finish job {k}")
        return [WorkerResult(**json.loads(outputs[n].read_text()), log=self._log(n)[log_sizes[n]:]) for n in names]


@pytest.fixture(scope="module")
def workers(postgres_url, _erp_server, tmp_path_factory):
    """Three worker processes for this module, with the ledger, ERP and retry settings the tests use."""
    from tests.conftest import ERP_TOKEN

    with pytest.MonkeyPatch.context() as env:
        env.setenv("AIRFLOW_CONN_OMNI_ERP_LEDGER", ledger_connection(postgres_url))
        env.setenv("AIRFLOW_CONN_ERP_DEFAULT", json.dumps({"conn_type": "http", "host": _erp_server.url, "password": ERP_TOKEN}))
        env.setenv("OMNI_ERP_HTTP_MAX_ATTEMPTS", "4")
        env.setenv("OMNI_ERP_HTTP_BASE_DELAY_S", "0.01")
        env.setenv("OMNI_ERP_HTTP_MAX_DELAY_S", "0.05")
        env.setenv("OMNI_ERP_HTTP_READ_TIMEOUT_S", "2")
        pool = WorkerPool(tmp_path_factory.mktemp("workers"), size=3)
        pool.start()
        try:
            yield pool
        finally:
            pool.stop()


@pytest.fixture()
def ledger(pg_ledger_url, workers, monkeypatch) -> Ledger:
    """A fresh PostgreSQL ledger, also the ``omni_erp_ledger`` connection of this process and the workers."""
    monkeypatch.setenv("AIRFLOW_CONN_OMNI_ERP_LEDGER", ledger_connection(pg_ledger_url))
    return Ledger(pg_ledger_url)


def assert_runs_overlapped(results: list[WorkerResult]) -> None:
    """Every run claimed work and all of them were working at one same moment."""
    assert all(r.claimed for r in results), [len(r.claimed) for r in results]
    assert max(r.started for r in results) < min(r.ended for r in results), "the runs did not overlap"


def assert_clean_runs(results: list[WorkerResult]) -> None:
    for r in results:
        for round_ in r.rounds:
            assert "stuck" not in round_, f"{r.batch_id}: {round_}"
            assert not [s for s in round_["summaries"] if "error" in s], f"{r.batch_id}: {round_['summaries']}"


def claim_owners(results: list[WorkerResult]) -> dict[str, list[str]]:
    owners: dict[str, list[str]] = {}
    for r in results:
        for message_id in r.claimed:
            owners.setdefault(message_id, []).append(r.batch_id)
    return owners


def calls_by_key(ledger: Ledger) -> dict[str, list[str | None]]:
    """``{idempotency key: [batch id of each ERP attempt recorded under it]}`` from ``outbound_call``."""
    c = t.outbound_call
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.select(c.c.idempotency_key, c.c.batch_id).where(c.c.idempotency_key.is_not(None))).all()
    calls: dict[str, list[str | None]] = {}
    for key, batch_id in rows:
        calls.setdefault(key, []).append(batch_id)
    return calls


def creates(count: int, first_message_id: int) -> list[dict]:
    return [create_posting(first_message_id + n, f"FN{first_message_id + n:010d}") for n in range(count)]


def test_three_overlapping_f1_runs_claim_and_book_each_order_exactly_once(erp, ledger, workers):
    postings = creates(200, 950001)
    store(ledger, *postings)
    erp.configure(latency_ms=10)  # each booking takes a moment, so the runs interleave for a while
    batches = ["omni_order_posting/scheduled__2026-12-03T10:05:00+00:00",
               "omni_order_posting/manual__2026-12-03T10:05:02+00:00", "omni_order_posting/worker-3"]

    results = workers.run("f1", batches, limit=10)

    assert_clean_runs(results)
    assert_runs_overlapped(results)
    owners = claim_owners(results)
    assert sorted(owners) == sorted(str(p["messageId"]) for p in postings)
    assert {m: b for m, b in owners.items() if len(b) != 1} == {}, "postings claimed by more than one run"
    assert sum(r.outcomes()["booked"] for r in results) == len(postings)

    state = erp.state()
    assert Counter(o["orderCode"] for o in state["sales_orders"]) == Counter(p["orderCode"] for p in postings)
    assert state["request_counts"][CREATE_ORDER] == len(postings)  # one create per key: no run re-sent one
    assert state["duplicates"].get("sales_order", 0) == 0
    calls = calls_by_key(ledger)
    erp_ids = {o["orderCode"]: o["salesOrderId"] for o in state["sales_orders"]}
    rows = {r["message_id"]: r for r in ledger.postings(CREATE)}
    for posting in postings:
        row, code = rows[str(posting["messageId"])], posting["orderCode"]
        assert (row["state"], row["outcome"], row["batch_id"]) == (DONE, "booked", owners[row["message_id"]][0])
        assert calls[keys.create_sales_order(code)] == owners[row["message_id"]]  # one call, by the run that claimed it
        order = ledger.get_order(code)
        assert (order["state"], order["erp_sales_order_id"]) == (ORDER_BOOKED, erp_ids[code])


def test_three_overlapping_f3_runs_cancel_each_order_exactly_once(erp, ledger, workers):
    orders = creates(60, 960001)
    erp.configure(invoice_hold=[o["orderCode"] for o in orders])  # booked, not e-invoiced: cancel the sales order
    book(ledger, *orders)
    cancels = [cancel_posting(o, 970001 + n) for n, o in enumerate(orders)]
    store(ledger, *cancels)
    erp.configure(latency_ms=10)

    batches = ["omni_order_cancellation/scheduled__2026-12-03T10:15:00+00:00",
               "omni_order_cancellation/manual__2026-12-03T10:15:01+00:00", "omni_order_cancellation/worker-3"]
    results = workers.run("f3", batches, limit=5)

    assert_clean_runs(results)
    assert_runs_overlapped(results)
    owners = claim_owners(results)
    assert sorted(owners) == sorted(str(c["messageId"]) for c in cancels)
    assert {m: b for m, b in owners.items() if len(b) != 1} == {}, "postings claimed by more than one run"
    assert sum(r.outcomes()[CANCEL_SALES_ORDER] for r in results) == len(orders)

    state = erp.state()
    assert {o["orderCode"]: o["status"] for o in state["sales_orders"]} == {o["orderCode"]: "CANCELLED" for o in orders}
    assert state["request_counts"][CANCEL_ORDER] == len(orders)
    assert state["duplicates"].get("sales_order_cancel", 0) == 0
    calls = calls_by_key(ledger)
    for row in ledger.postings(CANCEL):
        assert (row["state"], row["outcome"], [row["batch_id"]]) == (DONE, CANCEL_SALES_ORDER, owners[row["message_id"]])
        assert calls[keys.cancel_sales_order(row["order_code"])] == owners[row["message_id"]]
    for o in orders:
        order = ledger.get_order(o["orderCode"])
        assert (order["state"], order["cancel_route"]) == (ORDER_CANCELLED, CANCEL_SALES_ORDER)


def test_a_retry_running_beside_its_first_try_books_nothing_twice_and_sees_no_cancellation(erp, ledger, workers):
    """Issue 7.2: two processes work the SAME batch (a task retried while its first try is still alive)."""
    postings = creates(100, 980001)
    batch = book(ledger, *postings, create=False)  # claim_postings and map_sales_orders are done
    erp.configure(latency_ms=20)  # both tries are inside the ERP call for the same order at once

    first_try, retry = workers.run("f1-create", [batch, batch])

    assert_clean_runs([first_try, retry])
    assert_runs_overlapped([first_try, retry])
    state = erp.state()
    assert Counter(o["orderCode"] for o in state["sales_orders"]) == Counter(p["orderCode"] for p in postings)
    assert state["duplicates"].get("sales_order", 0) > 0, "the two tries never raced for one order"
    for r in (first_try, retry):
        assert set(r.outcomes()) <= {"booked", "already_booked"}, f"{r.batch_id} labelled orders {dict(r.outcomes())}"
        assert "cancelled while being booked" not in r.log
    erp_ids = {o["orderCode"]: o["salesOrderId"] for o in state["sales_orders"]}
    for p in postings:
        order = ledger.get_order(p["orderCode"])
        assert (order["state"], order["erp_sales_order_id"], order["cancel_route"]) == (ORDER_BOOKED, erp_ids[p["orderCode"]], None)
    assert {(r["state"], r["outcome"]) for r in ledger.postings(CREATE)} == {(DONE, "booked")}
    assert not [r for r in ledger.postings() if r["state"] == CLAIMED or r["outcome"] == "reopened"]
