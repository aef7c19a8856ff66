"""make cluster: the flows on Airflow's CeleryExecutor with two workers on this machine, measured, with a worker killed.

1. Starts PostgreSQL, Redis, the sandboxes and Airflow (api-server with the inbox, scheduler, dag-processor,
   triggerer, ``--workers`` Celery workers) - ``omni_erp.cluster.stack.CeleryCluster``.
2. Throughput of F1 (orders booked per second of the push step) for 1 and 2 workers and 1, 2, 4 shards: for
   each, ``--orders`` new orders go through the inbox while F1 is paused, then one F1 run books them.
3. Kills one worker with SIGKILL while its shard is booking; the task is retried on the other worker.
4. The rest of the life cycle: e-invoices to Omni (F2), a few cancellations after invoicing (F3), shipments (F4).
5. Reconciles ledger, ERP and Omni one to one and exits 1 unless every order is booked once and every
   document uploaded once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

F1, F2, F3, F4 = "omni_order_posting", "erp_invoice_upload", "omni_order_cancellation", "omni_order_completion"


@dataclass
class Phase:
    """One measured F1 run."""

    workers: int
    shards: int
    orders: int
    booked: int
    push_s: float  # first shard start -> last shard end
    run_s: float  # run start -> run end (claim, map, report and task start-up included)
    state: str
    tries: dict[int, int] = field(default_factory=dict)  # shard -> try_number

    @property
    def rate(self) -> float:
        return self.booked / self.push_s if self.push_s > 0 else 0.0


class Driver:
    """Posts orders, runs the flows and reads the results on a started ``CeleryCluster``."""

    def __init__(self, cluster: Any, seed: int, max_in_flight: int = 8) -> None:
        from omni_erp.sandbox.pusher import PostingPusher

        self.cluster = cluster
        self.pusher = PostingPusher(cluster.inbox_url, _inbox_key(), backoff_s=0.2, seed=seed)
        self.seed = seed
        self.max_in_flight = max_in_flight
        self.next_message_id = 3_000_001
        self.creates: list[dict[str, Any]] = []
        self.pushed = 0

    def new_orders(self, count: int) -> list[dict[str, Any]]:
        from omni_erp.sandbox.pusher import generate_orders

        orders = generate_orders(count, seed=self.seed + len(self.creates), first_message_id=self.next_message_id,
                                 partially_cancelled_rate=0.1)
        # Order codes unique across phases (the generator numbers them from its seed).
        for n, order in enumerate(orders):
            code = f"FNC{len(self.creates) + n:09d}"
            order.update(orderCode=code, parentOrderCode=code)
            for i, item in enumerate(order["orderItems"], start=1):
                item["orderItemCode"] = f"{code}-{i}"
        self.next_message_id += count
        self.creates += orders
        return orders

    def push(self, postings: list[dict[str, Any]], what: str) -> None:
        started = time.monotonic()
        report = self.pusher.push(postings)
        self.pushed += report.sent
        if report.accepted != len(postings):
            raise SystemExit(f"cluster: the inbox refused {len(postings) - report.accepted} {what}: {report.rejected[:3]}")
        seconds = time.monotonic() - started
        print(f"[cluster] pushed {len(postings)} {what} through the inbox in the API server "
              f"({len(postings) / seconds:.0f}/s)", flush=True)

    def measure_f1(self, orders: int, workers: int, shards: int, *, kill_after: float | None = None) -> Phase:
        """Push ``orders`` new orders while F1 is paused, then run F1 once with ``shards`` and time it.

        With ``kill_after`` (a share of the orders), SIGKILL the worker running a shard once that share is booked.
        """
        c = self.cluster
        c.wait_until_idle(F1)
        c.set_paused(F1, True)
        batch = self.new_orders(orders)
        self.push(batch, "CREATE postings")
        before = len(c.erp_state()["sales_orders"])
        run_id = c.trigger(F1, {"limit": min(5000, orders), "shards": shards, "max_in_flight": self.max_in_flight})
        c.set_paused(F1, False)
        killed = None
        if kill_after is not None:
            killed = self._kill_mid_booking(run_id, before + int(orders * kill_after))
        run = c.wait_for_run(F1, run_id, timeout_s=1200)
        tis = c.task_instances(F1, run_id)
        shard_tis = [t for t in tis if t["task_id"] == "create_sales_orders"]
        starts = [t["start_date"] for t in shard_tis if t["start_date"]]
        ends = [t["end_date"] for t in shard_tis if t["end_date"]]
        push_s = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
        run_s = (run["end_date"] - run["start_date"]).total_seconds()
        booked = len(c.erp_state()["sales_orders"]) - before
        phase = Phase(workers, shards, orders, booked, push_s, run_s, run["state"],
                      {t["map_index"]: t["try_number"] for t in shard_tis})
        note = f"; worker {killed} killed mid-booking, shard tries {phase.tries}" if killed else ""
        print(f"[cluster] F1 {workers} worker(s), {shards} shard(s): {booked} of {orders} orders booked, push step "
              f"{push_s:.1f} s = {phase.rate:.1f} orders/s, run {run_s:.0f} s, {run['state']}{note}", flush=True)
        c.set_paused(F1, True)
        return phase

    def _kill_mid_booking(self, run_id: str, booked_target: int) -> int:
        """Wait until ``booked_target`` ERP orders exist while a shard runs, then SIGKILL the worker running one."""
        c = self.cluster
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if any(r["run_id"] == run_id and r["state"] in ("success", "failed") for r in c.stack.dag_runs(F1)):
                raise SystemExit("cluster: the run finished before a worker could be killed mid-booking; use more --orders")
            if len(c.erp_state()["sales_orders"]) >= booked_target:
                victim = c.worker_running(F1, run_id, "create_sales_orders")
                if victim is not None:
                    c.kill_worker(victim)
                    print(f"[cluster] SIGKILL worker {victim} (and its task processes) while it was booking", flush=True)
                    return victim
            time.sleep(0.2)
        raise SystemExit("cluster: no shard was booking within 10 minutes; nothing killed")

    def run_until_settled(self, dag_id: str, conf: dict[str, Any], done: Any, what: str, runs: int = 4) -> None:
        """Run ``dag_id`` until ``done()`` (or ``runs`` runs)."""
        for n in range(1, runs + 1):
            self.cluster.wait_until_idle(dag_id)
            started = time.monotonic()
            run = self.cluster.run_dag(dag_id, conf)
            print(f"[cluster] {dag_id} run {n}: {run['state']} in {time.monotonic() - started:.0f} s", flush=True)
            if done():
                return
        print(f"[cluster] WARNING: {what} not settled after {runs} runs", flush=True)


def _inbox_key() -> str:
    from omni_erp.cluster.stack import INBOX_KEY

    return INBOX_KEY


def life_cycle(driver: Driver) -> None:
    """F2 uploads the e-invoices, F3 cancels a few invoiced orders, F4 ships the rest."""
    from omni_erp import states as s
    from omni_erp.sandbox.lifecycle import cancel_posting, complete_posting

    c = driver.cluster
    for dag_id in (F2, F3, F4):
        c.set_paused(dag_id, False)
    ledger = c.ledger()
    time.sleep(2 * c.invoice_delay_s + 1)

    def invoices_settled() -> bool:
        erp = c.erp_state()
        uploaded = {d["doc_number"] for d in ledger.documents(s.DOC_INVOICE) if d["state"] == s.DOC_UPLOADED}
        return uploaded >= {i["invoiceNumber"] for i in erp["invoices"]} and not erp.get("pending_documents")

    driver.run_until_settled(F2, {"limit": 5000}, invoices_settled, "e-invoice upload")
    invoices = {i["orderCode"]: i for i in c.erp_state()["invoices"]}
    invoiced = [o for o in driver.creates if o["orderCode"] in invoices]
    cancelled = invoiced[:: max(1, len(invoiced) // 20)][:20]  # ~5%, at most 20: cancelled within 24 h of the IRN
    cancelled_codes = {o["orderCode"] for o in cancelled}
    message_ids = iter(range(8_000_001, 9_000_000))
    driver.push([cancel_posting(o, next(message_ids)) for o in cancelled], "CANCEL postings")
    driver.run_until_settled(F3, {"limit": 5000}, lambda: _settled(ledger, "OUTWARD_ORDER_CANCEL"),
                             "cancellations")
    shipping = [o for o in invoiced if o["orderCode"] not in cancelled_codes]
    completes = [complete_posting(o, next(message_ids), invoice_number=invoices[o["orderCode"]]["invoiceNumber"],
                                  irn=invoices[o["orderCode"]].get("irn")) for o in shipping]
    driver.push(completes, "COMPLETE postings")
    driver.run_until_settled(F4, {"limit": 5000}, lambda: _settled(ledger, "OUTWARD_ORDER_COMPLETE"),
                             "shipments")


def _settled(ledger: Any, event_type: str) -> bool:
    """No posting of ``event_type`` waits or is held by a run."""
    from omni_erp import states as s

    return not any(p["state"] in (s.PENDING, s.CLAIMED) for p in ledger.postings(event_type))


def reconcile(driver: Driver) -> dict[str, int]:
    """Ledger = ERP = Omni, one to one: the figures, and the count of every kind of mismatch (all must be 0)."""
    from omni_erp import states as s

    c = driver.cluster
    ledger = c.ledger()
    erp, omni = c.erp_state(), c.omni_state()
    bookable = {o["orderCode"] for o in driver.creates
                if any(i["orderedQuantity"] > i["cancelledQuantity"] for i in o["orderItems"])}
    erp_orders = Counter(o["orderCode"] for o in erp["sales_orders"])
    ledger_orders = {code: ledger.get_order(code) for code in bookable}
    invoices_ledger = {d["doc_number"]: d for d in ledger.documents(s.DOC_INVOICE)}
    omni_invoices = {d["body"]["invoiceNumber"] for d in omni["invoices"]}
    uploaded = {n for n, d in invoices_ledger.items() if d["state"] == s.DOC_UPLOADED}
    erp_invoices = {i["invoiceNumber"] for i in erp["invoices"]}
    postings = Counter(p["state"] for p in ledger.postings())
    figures = {
        "orders pushed (CREATE)": len(driver.creates),
        "bookable orders": len(bookable),
        "ERP sales orders": sum(erp_orders.values()),
        "ERP e-invoices": len(erp_invoices),
        "invoices uploaded to Omni": len(omni_invoices),
        "postings done / dead": postings[s.DONE] + postings[s.DEAD],
    }
    mismatches = {
        "bookable orders not booked": sum(1 for code in bookable if erp_orders[code] == 0),
        "orders booked twice in the ERP": sum(1 for n in erp_orders.values() if n > 1),
        "ERP orders the ledger does not hold": sum(
            1 for o in erp["sales_orders"]
            if (ledger_orders.get(o["orderCode"]) or {}).get("erp_sales_order_id") != o["salesOrderId"]),
        "e-invoices not exactly once in ledger, ERP and Omni": len(erp_invoices ^ omni_invoices) + len(omni_invoices ^ uploaded),
        "postings still pending or claimed": postings[s.PENDING] + postings[s.CLAIMED],
    }
    print("\n" + "=" * 78 + "\nReconciliation (ledger = ERP = Omni)\n" + "=" * 78)
    for label, value in {**figures, **mismatches}.items():
        print(f"  {label:<60} {value:>8}")
    print(f"  {'identical re-sends Omni answered as duplicates':<60} {sum(omni.get('duplicates', {}).values()):>8}")
    return mismatches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omni_erp.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=400, help="orders per measured F1 run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shards", default="1,2,4", help="shard counts to measure, comma-separated")
    parser.add_argument("--erp-latency-ms", type=int, default=100, help="the ERP sandbox's answer time")
    parser.add_argument("--erp-max-concurrency", type=int, default=6, help="calls the ERP serves at once (429 above)")
    parser.add_argument("--max-in-flight", type=int, default=2, help="F1's max_in_flight param")
    # Small on purpose: worker slots, shards and the ERP's cap each bind somewhere in the table.
    parser.add_argument("--worker-concurrency", type=int, default=2, help="task slots per Celery worker")
    parser.add_argument("--no-kill", action="store_true", help="skip killing a worker")
    parser.add_argument("--no-life-cycle", action="store_true", help="only F1 (no F2-F4)")
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--workdir", type=Path, default=Path("var/cluster"))
    args = parser.parse_args(argv)
    shard_counts = [int(n) for n in args.shards.split(",")]
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"

    from omni_erp.cluster.stack import CeleryCluster

    started = time.monotonic()
    phases: list[Phase] = []
    with CeleryCluster(args.workdir, workers=args.workers, worker_concurrency=args.worker_concurrency, seed=args.seed) as cluster:
        cluster.erp_config(latency_ms=args.erp_latency_ms, max_concurrency=args.erp_max_concurrency)
        for dag_id in (F1, F2, F3, F4):
            cluster.set_paused(dag_id, True)
        driver = Driver(cluster, args.seed, args.max_in_flight)
        worker_counts = [1, args.workers] if args.workers > 1 else [1]
        for workers in worker_counts:
            for n in range(2, args.workers + 1):
                cluster.consume(n, on=n <= workers)
            for shards in shard_counts:
                phases.append(driver.measure_f1(args.orders, workers, shards))
        if not args.no_kill and args.workers > 1:
            phases.append(driver.measure_f1(args.orders, args.workers, max(2, min(shard_counts[-1], args.workers)),
                                            kill_after=0.25))
        if not args.no_life_cycle:
            life_cycle(driver)
        mismatches = reconcile(driver)

    print("\nF1 throughput (orders booked per second of the push step; ERP "
          f"{args.erp_latency_ms} ms per call, at most {args.erp_max_concurrency} at once; max_in_flight "
          f"{args.max_in_flight} per task; {cluster.worker_concurrency} task slots per worker)")
    print(f"  {'workers':>7} {'shards':>6} {'orders':>6} {'push s':>7} {'orders/s':>9} {'run s':>6}  state")
    for p in phases:
        note = f"  (worker killed; shard tries {p.tries})" if max(p.tries.values(), default=1) > 1 else ""
        print(f"  {p.workers:>7} {p.shards:>6} {p.booked:>6} {p.push_s:>7.1f} {p.rate:>9.1f} {p.run_s:>6.0f}  {p.state}{note}")
    print(f"\nwall time {time.monotonic() - started:.0f} s; logs under {args.workdir}")
    bad = {k: v for k, v in mismatches.items() if v}
    if bad:
        print(f"FAILED: {bad}")
        return 1
    print("OK: every order booked once, every e-invoice uploaded once, ledger = ERP = Omni")
    return 0


if __name__ == "__main__":
    sys.exit(main())
