"""Latency on a real scheduler: posting's 200 -> ERP sales order, and ERP e-invoice -> Omni's 200 (issue 8.4).

The whole deployment runs here: the sandboxes and the standalone inbox (``omni_erp.demo.stack.Stack``), and
Airflow's scheduler, triggerer, dag-processor and api-server (``omni_erp.devtools.airflow_stack``) with the
five flows, woken by their asset watchers (``omni_erp.assets``). Orders are posted to the inbox in bursts;
the latencies come from the systems' own clocks:

- **posting -> sales order**: the moment the inbox answered 200 (taken here) to the ERP sandbox's ``createdAt``
  of the sales order;
- **e-invoice -> Omni**: the ERP sandbox's ``invoiceDate`` (when the invoice was registered and appeared in the
  feed) to the Omni sandbox's ``receivedAt`` of the upload.

Both are wall-clock times of processes on this machine (millisecond precision). Targets: p95 < 15 s each.
The DAG runs of F1 and F2 are counted by how they started (asset-triggered, scheduled), which shows that a
burst starts one run, not one per posting.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TARGET_P95_S = 15.0
ORDERS = 200
BURSTS = 8
BURST_GAP_S = 30.0
INVOICE_DELAY_S = 1.0  # the ERP sandbox's e-invoicing time after a booking (an IRP answers in about a second)
WATCHERS = 6  # asset watchers the five flows declare (omni_erp.assets)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of ``values`` (``pct`` in 0-100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "count": len(values),
        "p50_s": round(statistics.median(values), 2),
        "p95_s": round(percentile(values, 95), 2),
        "max_s": round(max(values), 2),
    }


def _parse(ts: str) -> float:
    return datetime.fromisoformat(ts).astimezone(UTC).timestamp()


def run(
    work: Path | None = None,
    *,
    orders: int = ORDERS,
    bursts: int = BURSTS,
    burst_gap_s: float = BURST_GAP_S,
    invoice_delay_s: float = INVOICE_DELAY_S,
    drain_timeout_s: float = 300,
    metadata_url: str | None = None,
) -> dict[str, Any]:
    """Start the stack, post ``orders`` in ``bursts`` every ``burst_gap_s`` s, wait until every order reached Omni.

    :returns: ``{"posting_to_sales_order": {...}, "einvoice_to_omni": {...}, "dag_runs": {...}, ...}``.
    """
    import os

    saved_environ = dict(os.environ)  # the sandboxes' Stack sets AIRFLOW_HOME and connections in this process
    try:
        return _run(work, orders, bursts, burst_gap_s, invoice_delay_s, drain_timeout_s, metadata_url)
    finally:
        os.environ.clear()
        os.environ.update(saved_environ)


def _run(
    work: Path | None, orders: int, bursts: int, burst_gap_s: float, invoice_delay_s: float, drain_timeout_s: float,
    metadata_url: str | None,
) -> dict[str, Any]:
    from omni_erp.demo.stack import INBOX_KEY, OMNI_PASSWORD, OMNI_USER, Stack
    from omni_erp.devtools.airflow_stack import AirflowStack
    from omni_erp.sandbox.pusher import generate_orders

    work = Path(work or tempfile.mkdtemp(prefix="omni_erp_latency_"))
    dag_ids = ["omni_order_posting", "erp_invoice_upload", "omni_order_cancellation", "omni_order_completion",
               "omni_return_credit_note"]
    class PatientStack(Stack):
        """The demo's sandboxes and inbox, given longer to start: the Airflow processes load the machine too."""

        def _wait_until(self, check: Any, what: str, timeout_s: float = 30) -> None:
            try:
                super()._wait_until(check, what, timeout_s=max(timeout_s, 180))
            except SystemExit as exc:  # the demo exits; make bench reports a crashed benchmark and goes on
                raise RuntimeError(str(exc)) from None

    with ExitStack() as cleanup:
        sandboxes = PatientStack(work, REPO / "dags", seed=8, invoice_delay_s=invoice_delay_s)
        # Stopped even when its start fails half-way (the Stack's own ``with`` would leave the started ones running).
        cleanup.callback(sandboxes.__exit__, None, None, None)
        sandboxes.__enter__()
        ledger_file = work / "ledger.sqlite"
        connections = {
            "erp_default": sandboxes.erp_connection(),
            "omni_default": {"conn_type": "http", "host": sandboxes.omni_url, "login": OMNI_USER, "password": OMNI_PASSWORD},
            "omni_inbox": {"conn_type": "http", "password": INBOX_KEY},
            "omni_erp_ledger": {"conn_type": "sqlite", "host": str(ledger_file)},
        }
        env = dict(sandboxes.http_policy)
        started = time.monotonic()
        with AirflowStack(work / "airflow-stack", metadata_url=metadata_url, connections=connections, env=env) as stack:
            stack.wait_for_dags(dag_ids)
            _wait_for_watchers(stack)
            _wait_until_idle(stack, dag_ids)  # the cron run the scheduler starts at once must not be measured
            ready_s = time.monotonic() - started
            posted_at = _post_in_bursts(sandboxes.inbox_url, generate_orders(orders, seed=8), bursts, burst_gap_s)
            drained = _wait_until_uploaded(sandboxes, set(posted_at), drain_timeout_s, stack)
            runs = {dag_id: _count_runs(stack.dag_runs(dag_id)) for dag_id in ("omni_order_posting", "erp_invoice_upload")}
            hops = _task_hops(stack, ("omni_order_posting", "erp_invoice_upload"))
        erp, omni = sandboxes.erp_state(), sandboxes.omni_state()

    booked = {o["orderCode"]: _parse(o["createdAt"]) for o in erp["sales_orders"] if o["orderCode"] in posted_at}
    invoiced = {i["invoiceNumber"]: _parse(i["invoiceDate"]) for i in erp["invoices"] if i["orderCode"] in posted_at}
    received = {d["body"]["invoiceNumber"]: _parse(d["receivedAt"]) for d in omni["invoices"]}
    to_sales_order = [booked[code] - posted_at[code] for code in booked]
    to_omni = [received[number] - at for number, at in invoiced.items() if number in received]
    return {
        "orders": orders,
        "bursts": bursts,
        "burst_gap_s": burst_gap_s,
        "erp_invoice_delay_s": invoice_delay_s,
        "stack_ready_s": round(ready_s, 1),
        "all_uploaded": drained,
        "booked": len(booked),
        "uploaded": len(to_omni),
        "posting_to_sales_order": summary(to_sales_order) if to_sales_order else None,
        "einvoice_to_omni": summary(to_omni) if to_omni else None,
        "dag_runs": runs,
        "task_hops": hops,
        "work": str(work),
    }


def targets_from(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's two latency targets from ``run()``'s results (a missing measurement fails its target)."""
    rows = []
    for key, name in (("posting_to_sales_order", "latency: posting 200 -> ERP sales order, p95"),
                      ("einvoice_to_omni", "latency: ERP e-invoice -> Omni 200, p95")):
        measured = (results.get(key) or {}).get("p95_s")
        complete = results.get("all_uploaded", False)
        rows.append({"name": name, "measured": measured, "target": f"< {TARGET_P95_S:g}",
                     "pass": measured is not None and complete and measured < TARGET_P95_S, "unit": "s"})
    return rows


def targets(work: Path | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Run the benchmark and return its targets (``name``, ``measured``, ``target``, ``pass``, ``unit``)."""
    return targets_from(run(work, **kwargs))


# --- steps ---------------------------------------------------------------------------------


def _wait_for_watchers(stack: Any, timeout_s: float = 180) -> None:
    """Until the triggerer runs every asset watcher (a trigger row assigned to a triggerer)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stack.check_alive()
        running = stack.query("SELECT count(*) FROM trigger WHERE triggerer_id IS NOT NULL")[0]
        if running >= WATCHERS:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the triggerer did not start the {WATCHERS} asset watchers within {timeout_s:.0f} s")


def _wait_until_idle(stack: Any, dag_ids: list[str], timeout_s: float = 400) -> None:
    """Until the run of the latest cron tick that the scheduler starts for each flow has finished, and no run is
    queued or running (so the measurement starts on an idle deployment)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stack.check_alive()
        runs = {dag_id: stack.dag_runs(dag_id) for dag_id in dag_ids}
        started = all(any(r["run_type"] == "scheduled" for r in runs[dag_id]) for dag_id in dag_ids[:2])
        if started and not any(r["state"] in ("queued", "running") for rs in runs.values() for r in rs):
            return
        time.sleep(1)
    raise RuntimeError(f"runs of {dag_ids} still active after {timeout_s:.0f} s")


def _task_hops(stack: Any, dag_ids: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Per task, the median seconds from queued to started (scheduling and process start) and from started to
    ended (the work), over every try: where a run's time goes."""
    rows = stack.query(
        "SELECT dag_id, task_id, queued_dttm, start_date, end_date FROM task_instance WHERE end_date IS NOT NULL "
        "AND queued_dttm IS NOT NULL AND dag_id IN (" + ", ".join(f"'{d}'" for d in dag_ids) + ")",
        all_columns=True,
    )
    by_task: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        start, queued, end = (_as_datetime(row[k]) for k in ("start_date", "queued_dttm", "end_date"))
        waits, works = by_task.setdefault(f"{row['dag_id']}.{row['task_id']}", ([], []))
        waits.append((start - queued).total_seconds())
        works.append((end - start).total_seconds())
    return {
        task: {"queued_to_start_s": round(statistics.median(w), 1), "run_s": round(statistics.median(r), 1), "tries": len(w)}
        for task, (w, r) in sorted(by_task.items())
    }


def _as_datetime(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def _post_in_bursts(inbox_url: str, postings: list[dict], bursts: int, gap_s: float) -> dict[str, float]:
    """POST the postings in ``bursts`` groups, ``gap_s`` apart, 8 at a time; orderCode -> wall time of its 200."""
    import requests

    from omni_erp.demo.stack import INBOX_KEY

    posted_at: dict[str, float] = {}
    size = math.ceil(len(postings) / bursts)

    def post(posting: dict) -> None:
        with requests.Session() as session:
            response = session.post(f"{inbox_url}/postings", json=posting, headers={"X-Api-Key": INBOX_KEY}, timeout=30)
            response.raise_for_status()
            posted_at[posting["orderCode"]] = time.time()

    with ThreadPoolExecutor(8) as pool:
        for n in range(bursts):
            burst_started = time.monotonic()
            list(pool.map(post, postings[n * size:(n + 1) * size]))
            if n < bursts - 1:
                time.sleep(max(0.0, gap_s - (time.monotonic() - burst_started)))
    return posted_at


def _wait_until_uploaded(sandboxes: Any, order_codes: set[str], timeout_s: float, stack: Any) -> bool:
    """Until Omni holds an invoice for every order (True), or ``timeout_s`` passed (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stack.check_alive()
        uploaded = {d["body"]["invoiceNumber"] for d in sandboxes.omni_state()["invoices"]}
        erp = sandboxes.erp_state()
        invoices = {i["invoiceNumber"] for i in erp["invoices"] if i["orderCode"] in order_codes}
        if len(invoices) == len(order_codes) and invoices <= uploaded:
            return True
        time.sleep(1)
    return False


def _count_runs(runs: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for run_ in runs:
        counts[run_["run_type"]] = counts.get(run_["run_type"], 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=ORDERS)
    parser.add_argument("--bursts", type=int, default=BURSTS)
    parser.add_argument("--burst-gap-s", type=float, default=BURST_GAP_S)
    parser.add_argument("--invoice-delay-s", type=float, default=INVOICE_DELAY_S)
    args = parser.parse_args(argv)
    results = run(orders=args.orders, bursts=args.bursts, burst_gap_s=args.burst_gap_s, invoice_delay_s=args.invoice_delay_s)
    rows = targets_from(results)
    print(json.dumps({"latency": results, "targets": rows}, indent=2))
    return 0 if all(row["pass"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
