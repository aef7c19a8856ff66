"""Flow throughput against sandboxes with a fixed service time and a concurrency cap (issue 8 item 4).

- **F1**: 20,000 postings claimed, mapped and booked against the ERP sandbox answering in L = 50 ms with at
  most C = 16 requests in flight (429 above that), ``max_in_flight`` 32: the booking task's orders/s as a
  share of C / L = 320 orders/s (target >= 85 %), the share of ERP calls answered 429 (< 1 %), and the
  whole flow's orders/s (claim and the ERP-free mapping included) reported beside them.
- **F2**: the e-invoices of those orders uploaded to the Omni sandbox under the same L and C.
- **Baselines**: the same booking as a plain loop of one blocking request per order (F1 >= 12x), and as
  one mapped ``HttpOperator`` task per order on a real scheduler + LocalExecutor (200 orders; F1 >= 100x;
  benchmarks/mapped_baseline.py).
- **Memory**: peak RSS of each F1 task process (claim, map, create, each in a subprocess as Airflow runs
  it) over 100,000 pending postings (< 300 MB).
- **CPU per booked order** (reported): the booking task's CPU against the ERP answering at once, by component
  (``--only cpu``); on one core it bounds the booking rate.

Everything runs on this machine in one go: the sandboxes in a subprocess, the ledger an SQLite file.
``targets()`` returns the figures in the shared results format (benchmarks/__main__.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CAP = 16  # C: requests the sandboxes serve at once (429 above)
LATENCY_MS = 50  # L: their fixed service time
CEILING = CAP / (LATENCY_MS / 1000)  # C / L = 320 orders/s
MAX_IN_FLIGHT = 32  # above C on purpose: the adaptive limiter must find C by itself
ERP_TOKEN = "bench-token"
OMNI_USER, OMNI_PASSWORD = "bench-user", "bench-pass"
EVENT_CREATE = "OUTWARD_ORDER_CREATE"


class Sandboxes:
    """``python -m omni_erp.sandbox`` in a subprocess (its own GIL, like a real remote system)."""

    def __init__(self, work: Path, *, invoice_delay_s: float = 3600) -> None:
        from omni_erp.sandbox.serve import free_port

        self.work = work
        self.erp_url = self.omni_url = ""
        ready = work / f"sandbox-{free_port()}.json"
        self._ready = ready
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "omni_erp.sandbox", "--erp-port", "0", "--omni-port", "0",
             "--erp-token", ERP_TOKEN, "--omni-user", OMNI_USER, "--omni-password", OMNI_PASSWORD,
             "--invoice-delay-s", str(invoice_delay_s), "--ready-file", str(ready)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def __enter__(self) -> Sandboxes:
        deadline = time.monotonic() + 60
        while not self._ready.exists():
            if time.monotonic() > deadline or self._proc.poll() is not None:
                self.__exit__()
                raise RuntimeError("the sandboxes did not start")
            time.sleep(0.05)
        urls = json.loads(self._ready.read_text())
        self.erp_url, self.omni_url = urls["erp_url"], urls["omni_url"]
        os.environ["AIRFLOW_CONN_ERP_DEFAULT"] = json.dumps({"conn_type": "http", "host": self.erp_url, "password": ERP_TOKEN})
        os.environ["AIRFLOW_CONN_OMNI_DEFAULT"] = json.dumps(
            {"conn_type": "http", "host": self.omni_url, "login": OMNI_USER, "password": OMNI_PASSWORD}
        )
        return self

    def __exit__(self, *_: Any) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)

    def configure(self, url: str, **knobs: Any) -> None:
        import requests

        requests.post(f"{url}/_sandbox/config", json=knobs, timeout=10).raise_for_status()

    def faults(self, url: str) -> dict[str, Any]:
        import requests

        return requests.get(f"{url}/_sandbox/faults", timeout=30).json()

    def state(self, url: str) -> dict[str, Any]:
        import requests

        return requests.get(f"{url}/_sandbox/state", timeout=120).json()


def _calls(faults: dict[str, Any], endpoint: str) -> tuple[int, int]:
    """(calls of ``endpoint``, calls answered 429 because of the cap) from ``/_sandbox/faults``."""
    return faults["request_counts"].get(endpoint, 0), faults["injected"].get("429_busy", 0)


def seed_postings(ledger: Any, count: int, *, seed: int = 2, chunk: int = 2000) -> None:
    """Store ``count`` CREATE postings as the inbox would (record_posting), ``chunk`` per transaction."""
    from omni_erp.sandbox.pusher import generate_orders

    first = 900001
    while count > 0:
        n = min(chunk, count)
        postings = generate_orders(n, seed=seed + first, first_message_id=first, partially_cancelled_rate=0.2)
        for posting in postings:  # order codes must be unique across chunks
            posting["orderCode"] = f"FB{int(posting['messageId']):010d}"
        with ledger.transaction():
            for posting in postings:
                ledger.record_posting(
                    message_id=str(posting["messageId"]), event_type=posting["eventType"],
                    business_key=posting["orderCode"], order_code=posting["orderCode"], payload=posting,
                )
        first += n
        count -= n


def environment(work: Path) -> None:
    """Airflow's and the package's settings for in-process operator runs (unless the caller set them)."""
    defaults = {
        "AIRFLOW_HOME": str(work / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    for name, value in defaults.items():
        os.environ.setdefault(name, value)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def _ledger(path: Path) -> Any:
    from omni_erp.ledger import Ledger

    os.environ["OMNI_ERP_LEDGER_PATH"] = str(path)
    return Ledger.from_conn_id()


def run_f1_tasks(batch_id: str, *, limit: int, max_in_flight: int) -> dict[str, float]:
    """claim -> map -> create of one batch in this process; seconds per task and the create summary."""
    from omni_erp.operators.inbox import OmniInboxClaimOperator
    from omni_erp.operators.order_posting import ErpSalesOrderCreateOperator, ErpSalesOrderMapOperator

    started = time.perf_counter()
    OmniInboxClaimOperator(task_id="claim", event_types=[EVENT_CREATE], limit=limit, batch_id=batch_id).execute({})
    claimed = time.perf_counter()
    ErpSalesOrderMapOperator(task_id="map", batch_id=batch_id).execute({})
    mapped, cpu = time.perf_counter(), time.process_time()
    summary = ErpSalesOrderCreateOperator(task_id="create", batch_id=batch_id, max_in_flight=max_in_flight).execute({})
    done, cpu = time.perf_counter(), time.process_time() - cpu
    return {
        "claim_s": claimed - started, "map_s": mapped - claimed, "create_s": done - mapped, "total_s": done - started,
        "booked": summary.get("booked", 0), "create_cpu_s": cpu,
    }


def bench_f1(work: Path, orders: int, *, max_in_flight: int = MAX_IN_FLIGHT) -> dict[str, Any]:
    """F1 over ``orders`` postings against the capped ERP; leaves the sandboxes e-invoicing for bench_f2."""
    with Sandboxes(work, invoice_delay_s=0) as boxes:
        # The sandbox e-invoices each order at once; hold that until F1 is done, so F1 is measured alone.
        boxes.configure(boxes.erp_url, latency_ms=LATENCY_MS, max_concurrency=CAP)
        ledger = _ledger(work / "f1.sqlite")
        seed_postings(ledger, orders)
        timings = run_f1_tasks("bench/f1", limit=orders, max_in_flight=max_in_flight)
        calls, throttled = _calls(boxes.faults(boxes.erp_url), "POST /api/v1/sales-orders")
        booked_in_erp = len(boxes.state(boxes.erp_url)["sales_orders"])
        f2 = bench_f2(boxes, ledger, orders, max_in_flight=max_in_flight)
    assert timings["booked"] == booked_in_erp == orders, (timings, booked_in_erp)
    booking = orders / timings["create_s"]
    return {
        "orders": orders,
        "max_in_flight": max_in_flight,
        "orders_per_s": round(orders / timings["total_s"], 1),
        "booking_orders_per_s": round(booking, 1),
        "share_of_c_over_l": round(booking / CEILING, 3),
        "erp_calls": calls,
        "erp_429": throttled,
        "share_429": round(throttled / calls, 4) if calls else 0.0,
        "booking_cpu_ms_per_order": round(timings["create_cpu_s"] * 1000 / orders, 3),
        **{k: round(v, 2) for k, v in timings.items() if k.endswith("_s")},
        "f2": f2,
    }


def bench_booking_cpu(work: Path, orders: int, *, max_in_flight: int = CAP) -> dict[str, Any]:
    """Client CPU per booked order, by component: the booking task against the ERP sandbox answering at once
    (0 ms, no cap), so the task's CPU is all that limits it. At the target rate (85 % of C / L = 272 orders/s)
    one core gives the task at most 3.7 ms per order, and the ERP sandbox needs the other core.

    The task's process CPU time (``time.process_time``) over the whole booking, and the CPU of the threads
    (``time.thread_time``) inside: the ERP call (request, response, retry policy, limiter, attempt record),
    the ledger read of the order, and the booking transaction (compare-and-set of the order, posting closed,
    commit). "other" is the rest: the operator's own work, the pool, reading the batch, thread switches.
    """
    import threading
    from collections import Counter
    from contextlib import contextmanager

    from omni_erp.hooks.base import RetryingJsonHook
    from omni_erp.ledger.repo import Ledger

    spent: Counter[str] = Counter()
    lock = threading.Lock()

    def timed(label: str, function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                with lock:
                    spent[label] += time.thread_time() - started
        return wrapper

    def timed_transaction(transaction: Any) -> Any:
        @contextmanager
        def wrapper(self: Any) -> Any:
            outermost = getattr(self._local, "conn", None) is None
            started = time.thread_time()
            try:
                with transaction(self) as ledger:
                    yield ledger
            finally:
                if outermost:
                    with lock:
                        spent["ledger: booking transaction"] += time.thread_time() - started
        return wrapper

    originals = {(RetryingJsonHook, "call"): RetryingJsonHook.call, (Ledger, "get_order"): Ledger.get_order,
                 (Ledger, "transaction"): Ledger.transaction}
    with Sandboxes(work) as boxes:
        boxes.configure(boxes.erp_url, latency_ms=0, max_concurrency=None)
        ledger = _ledger(work / "cpu.sqlite")
        seed_postings(ledger, orders, seed=11)
        from omni_erp.operators.inbox import OmniInboxClaimOperator
        from omni_erp.operators.order_posting import ErpSalesOrderCreateOperator, ErpSalesOrderMapOperator

        OmniInboxClaimOperator(task_id="claim", event_types=[EVENT_CREATE], limit=orders, batch_id="bench/cpu").execute({})
        ErpSalesOrderMapOperator(task_id="map", batch_id="bench/cpu").execute({})
        task = ErpSalesOrderCreateOperator(task_id="create", batch_id="bench/cpu", max_in_flight=max_in_flight)
        task.ledger, task.erp  # noqa: B018 - connect and configure before measuring
        RetryingJsonHook.call = timed("ERP call", RetryingJsonHook.call)
        Ledger.get_order = timed("ledger: read the order", Ledger.get_order)
        Ledger.transaction = timed_transaction(Ledger.transaction)
        try:
            cpu, main = time.process_time(), time.thread_time()
            summary = task.execute({})
            cpu, main = time.process_time() - cpu, time.thread_time() - main
        finally:
            for (owner, name), original in originals.items():
                setattr(owner, name, original)
    assert summary.get("booked") == orders, summary
    if max_in_flight <= 1:  # no pool: the items were handled in the main thread
        main -= sum(spent.values())
    per_order = {label: round(seconds * 1000 / orders, 3) for label, seconds in spent.items()}
    per_order["main thread (reads the batch, feeds the pool)"] = round(main * 1000 / orders, 3)
    total = round(cpu * 1000 / orders, 3)
    per_order["other"] = round(total - sum(per_order.values()), 3)
    return {"orders": orders, "max_in_flight": max_in_flight, "cpu_ms_per_order": total, "by_component_ms": per_order}


def bench_f2(boxes: Sandboxes, ledger: Any, orders: int, *, max_in_flight: int) -> dict[str, Any]:
    """Read the booked orders' e-invoices into the ledger, then time their upload to the capped Omni."""
    from omni_erp.operators.invoice_upload import ErpEInvoiceFetchOperator, OmniInvoiceUploadOperator
    from omni_erp.states import DOC_INVOICE, DOC_READY

    boxes.configure(boxes.erp_url, latency_ms=0, max_concurrency=None)
    deadline = time.monotonic() + 120
    while len(ledger.documents(DOC_INVOICE, states=[DOC_READY])) < orders and time.monotonic() < deadline:
        ErpEInvoiceFetchOperator(task_id="fetch", batch_id="bench/f2").execute({})
    ready = len(ledger.documents(DOC_INVOICE, states=[DOC_READY]))
    boxes.configure(boxes.omni_url, latency_ms=LATENCY_MS, max_concurrency=CAP)
    started, cpu = time.perf_counter(), time.process_time()
    summary = OmniInvoiceUploadOperator(task_id="upload", batch_id="bench/f2", max_in_flight=max_in_flight).execute({})
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    calls, throttled = _calls(boxes.faults(boxes.omni_url), "POST /ajio-vms/b2bInvoice/posting")
    uploaded = summary.get("uploaded", 0)
    assert uploaded == ready, (summary, ready)
    rate = uploaded / elapsed
    return {
        "invoices": uploaded,
        "uploads_per_s": round(rate, 1),
        "share_of_c_over_l": round(rate / CEILING, 3),
        "omni_calls": calls,
        "omni_429": throttled,
        "share_429": round(throttled / calls, 4) if calls else 0.0,
        "upload_s": round(elapsed, 2),
        "upload_cpu_ms_per_upload": round(cpu * 1000 / uploaded, 3) if uploaded else 0.0,
    }


def bench_plain_loop(work: Path, orders: int) -> dict[str, Any]:
    """The naive client: one blocking request per order, one after the other, same ERP (L and C)."""
    import requests

    from omni_erp.models.erp import DocumentLine, SalesOrderRequest

    with Sandboxes(work) as boxes:
        boxes.configure(boxes.erp_url, latency_ms=LATENCY_MS, max_concurrency=CAP)
        started = time.perf_counter()
        for i in range(orders):
            code = f"FP{i:010d}"
            body = SalesOrderRequest(
                orderCode=code, poNumber="4042640641", buyerCode="AJIO-RRL",
                lines=[DocumentLine(lineCode=f"{code}-1", sku="460491724004", quantity=1, unitPrice="100.00")],
                totalAmount="100.00",
            ).to_json_dict()
            response = requests.post(
                f"{boxes.erp_url}/api/v1/sales-orders", json=body, timeout=30,
                headers={"Authorization": f"Bearer {ERP_TOKEN}", "Idempotency-Key": f"create:{code}"},
            )
            response.raise_for_status()
        elapsed = time.perf_counter() - started
    return {"orders": orders, "orders_per_s": round(orders / elapsed, 2)}


def bench_mapped_http_operator(work: Path, orders: int) -> dict[str, Any]:
    """The Airflow-naive design as a user runs it: one mapped ``HttpOperator`` task per order, each task instance
    queued by a scheduler and run as its own process by LocalExecutor, timed from the DAG run's start to its end
    (benchmarks/mapped_baseline.py; the same ERP sandbox, L and C)."""
    from benchmarks.mapped_baseline import run

    return run(work / "mapped", orders=orders)


def bench_memory(work: Path, postings: int, *, max_in_flight: int = MAX_IN_FLIGHT) -> dict[str, Any]:
    """Peak RSS of each F1 task process over ``postings`` pending postings (each task a subprocess, as in Airflow)."""
    with Sandboxes(work) as boxes:
        ledger = _ledger(work / "memory.sqlite")
        seed_postings(ledger, postings, seed=7)
        peaks: dict[str, float] = {}
        started = time.perf_counter()
        for task in ("claim", "map", "create"):
            out = work / f"memory-{task}.json"
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.flows", "--task", task, "--batch", "bench/memory",
                 "--limit", str(postings), "--max-in-flight", str(max_in_flight), "--out", str(out)],
                cwd=REPO, env=dict(os.environ), check=False,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"F1 task {task} failed with exit code {proc.returncode}")
            # The child's own high-water mark. Not wait4's ru_maxrss: Linux carries the parent's peak RSS into
            # a child's ru_maxrss when it execs (the mm it leaves is the parent's, after vfork), so every task
            # read as this process's peak (313.7 MB), whatever it used itself.
            peaks[task] = json.loads(out.read_text())["peak_rss_mb"]
        elapsed = time.perf_counter() - started
        booked = len(boxes.state(boxes.erp_url)["sales_orders"])
    assert booked == postings, (booked, postings)
    return {"postings": postings, "peak_rss_mb": {k: round(v, 1) for k, v in peaks.items()}, "wall_s": round(elapsed, 1)}


def _run_task(task: str, batch_id: str, limit: int, max_in_flight: int, out: Path | None = None) -> None:
    """Child process of ``bench_memory``: one F1 task, as a worker would run it; its peak RSS (VmHWM) to ``out``."""
    from omni_erp.operators.inbox import OmniInboxClaimOperator
    from omni_erp.operators.order_posting import ErpSalesOrderCreateOperator, ErpSalesOrderMapOperator

    if task == "claim":
        OmniInboxClaimOperator(task_id="claim", event_types=[EVENT_CREATE], limit=limit, batch_id=batch_id).execute({})
    elif task == "map":
        ErpSalesOrderMapOperator(task_id="map", batch_id=batch_id).execute({})
    else:
        ErpSalesOrderCreateOperator(task_id="create", batch_id=batch_id, max_in_flight=max_in_flight).execute({})
    if out is not None:
        status = Path("/proc/self/status").read_text()
        peak_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
        out.write_text(json.dumps({"peak_rss_mb": round(peak_kib / 1024, 1)}))


# --- the shared results format ---------------------------------------------------------------------


def targets(
    work: Path | None = None,
    *,
    orders: int = 20_000,
    baseline_orders: int = 300,
    mapped_orders: int = 200,
    memory_postings: int = 100_000,
    cpu_orders: int = 3000,
) -> list[dict[str, Any]]:
    """Run every flow benchmark and return ``{"name", "measured", "target", "pass", "unit"}`` per target."""
    work = work or Path(tempfile.mkdtemp(prefix="omni_erp_flows_"))
    environment(work)
    f1 = bench_f1(work, orders)
    f2 = f1["f2"]
    plain = bench_plain_loop(work, baseline_orders)
    mapped = bench_mapped_http_operator(work, mapped_orders)
    memory = bench_memory(work, memory_postings)
    cpu = bench_booking_cpu(work, cpu_orders)
    peak = max(memory["peak_rss_mb"].values())
    booking = f1["booking_orders_per_s"]
    results = [
        # The ERP-bound step is measured against C/L; the whole flow (claim and the ERP-free mapping too) is
        # reported beside it, so the cost of mapping stays visible.
        _target(f"F1 booking orders/s as a share of C/L ({orders:,} orders, C={CAP}, L={LATENCY_MS} ms)",
                f1["share_of_c_over_l"], ">= 0.85", f1["share_of_c_over_l"] >= 0.85, "share of 320/s",
                detail=f"{booking} orders/s booked, max_in_flight {f1['max_in_flight']}, "
                       f"{f1['booking_cpu_ms_per_order']} ms of CPU per order"),
        _target("F1 end to end (claim + map + book) orders/s", f1["orders_per_s"], "report", True, "orders/s",
                detail=f"claim {f1['claim_s']} s, map {f1['map_s']} s, book {f1['create_s']} s"),
        _target("F1 ERP calls answered 429", f1["share_429"], "< 0.01", f1["share_429"] < 0.01, "share of calls",
                detail=f"{f1['erp_429']} of {f1['erp_calls']}"),
        _target(f"F2 uploads/s as a share of C/L ({f2['invoices']:,} invoices)", f2["share_of_c_over_l"], ">= 0.85",
                f2["share_of_c_over_l"] >= 0.85, "share of 320/s", detail=f"{f2['uploads_per_s']} uploads/s"),
        _target("F2 Omni calls answered 429", f2["share_429"], "< 0.01", f2["share_429"] < 0.01, "share of calls",
                detail=f"{f2['omni_429']} of {f2['omni_calls']}"),
        _target("F1 booking vs a plain loop of blocking requests", round(booking / plain["orders_per_s"], 1), ">= 12",
                booking / plain["orders_per_s"] >= 12, "x", detail=f"loop {plain['orders_per_s']} orders/s"),
        _target(f"F1 booking vs one mapped HttpOperator task per order ({mapped_orders} orders, "
                "scheduler + LocalExecutor)",
                round(booking / mapped["orders_per_s"], 1), ">= 100", booking / mapped["orders_per_s"] >= 100, "x",
                detail=f"mapped {mapped['orders_per_s']} orders/s ({mapped['run_s']} s run, {mapped['s_per_task']} s "
                       f"per task); CPU per order: Airflow {mapped['airflow_cpu_ms_per_order']} ms, "
                       f"F1 booking {f1['booking_cpu_ms_per_order']} ms"),
        _target(f"F1 peak RSS per task process ({memory_postings:,} pending postings)", round(peak, 1), "< 300",
                peak < 300, "MB", detail=", ".join(f"{k} {v} MB" for k, v in memory["peak_rss_mb"].items())),
        # What bounds the booking rate on one core: at 272 orders/s (85 % of C/L) the task has 3.7 ms per order.
        _target(f"F1 booking client CPU per order (ERP at 0 ms, {cpu['max_in_flight']} threads, {cpu_orders:,} orders)",
                cpu["cpu_ms_per_order"], "report", True, "ms",
                detail=", ".join(f"{k} {v}" for k, v in cpu["by_component_ms"].items())),
    ]
    (work / "flows.json").write_text(
        json.dumps({"f1": f1, "plain": plain, "mapped": mapped, "memory": memory, "cpu": cpu}, indent=2)
    )
    return results


def _target(name: str, measured: float, target: str, passed: bool, unit: str, *, detail: str = "") -> dict[str, Any]:
    return {"name": name, "measured": measured, "target": target, "pass": bool(passed), "unit": unit, "detail": detail}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flows", description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--memory-postings", type=int, default=100_000)
    parser.add_argument(
        "--only", choices=["f1", "plain", "mapped", "memory", "cpu"], help="run one part and print its figures"
    )
    parser.add_argument("--max-in-flight", type=int, default=MAX_IN_FLIGHT)
    parser.add_argument("--task", choices=["claim", "map", "create"], help=argparse.SUPPRESS)
    parser.add_argument("--batch", help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: still stop the sandboxes (with-blocks)
    work = Path(tempfile.mkdtemp(prefix="omni_erp_flows_"))
    environment(work)
    if args.task:
        _run_task(args.task, args.batch, args.limit, args.max_in_flight, args.out)
        return 0
    if args.only == "f1":
        print(json.dumps(bench_f1(work, args.orders, max_in_flight=args.max_in_flight), indent=2))
    elif args.only == "plain":
        print(json.dumps(bench_plain_loop(work, 300), indent=2))
    elif args.only == "mapped":
        print(json.dumps(bench_mapped_http_operator(work, args.orders if args.orders != 20_000 else 200), indent=2))
    elif args.only == "cpu":
        orders = args.orders if args.orders != 20_000 else 3000
        print(json.dumps(bench_booking_cpu(work, orders, max_in_flight=min(args.max_in_flight, CAP)), indent=2))
    elif args.only == "memory":
        print(json.dumps(bench_memory(work, args.memory_postings, max_in_flight=args.max_in_flight), indent=2))
    else:
        results = targets(work, orders=args.orders, memory_postings=args.memory_postings)
        print(json.dumps(results, indent=2))
        return 0 if all(r["pass"] for r in results) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
