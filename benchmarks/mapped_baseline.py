"""The Airflow-naive baseline on a real executor: one mapped ``HttpOperator`` task per order (issue 8 item 4).

This is how that design runs for a user: a scheduler, a dag-processor and an api-server with ``LocalExecutor``
(Airflow's defaults: ``parallelism`` 32, ``max_active_tasks_per_dag`` 16) on a temporary ``AIRFLOW_HOME`` and a
throwaway PostgreSQL metadata DB (``omni_erp.devtools.airflow_stack.AirflowStack``, as benchmarks/latency.py
uses). Every mapped task instance is queued by the scheduler, started by the executor as its own process under
the task SDK supervisor, and reports its state through the execution API; it books one order in the ERP sandbox
(L = 50 ms, C = 16, 429 above that; retries on 429 are that design's own, ``retries=3``).

The run is triggered through the REST API and timed from the DAG run's ``start_date`` to its ``end_date`` in the
metadata DB; every order must then be a sales order in the sandbox. Beside the wall-clock figures (which move
with whatever else the machine runs), the CPU the Airflow processes spent during the run, per order: the
processes of each component's process group and the task processes they reaped.

    python -m benchmarks.mapped_baseline [--orders 200] [--sqlite]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ORDERS = 200
DAG_ID = "bench_mapped_http_operator"
CONN_ID = "erp_bench"
RUN_TIMEOUT_S = 600

MAPPED_DAG = """
# The naive design, for the benchmark only: one mapped HttpOperator task per order.
import json, os
import pendulum
from airflow.providers.http.operators.http import HttpOperator
from airflow.sdk import DAG

ORDERS = int(os.environ.get("BENCH_MAPPED_ORDERS", "1"))
TOKEN = os.environ.get("BENCH_ERP_TOKEN", "")
CALLS = [
    {
        "data": json.dumps({"orderCode": f"FM{i:010d}", "poNumber": "4042640641", "buyerCode": "AJIO-RRL",
                            "lines": [{"lineCode": f"FM{i:010d}-1", "sku": "460491724004", "quantity": 1,
                                       "unitPrice": "100.00"}],
                            "totalAmount": "100.00"}),
        "headers": {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json",
                    "Idempotency-Key": f"create:FM{i:010d}"},
    }
    for i in range(ORDERS)
]
with DAG("bench_mapped_http_operator", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False) as dag:
    HttpOperator.partial(
        task_id="create_sales_order", http_conn_id="erp_bench", endpoint="/api/v1/sales-orders", method="POST",
        retries=3, retry_delay=0,
    ).expand_kwargs(CALLS)
"""


def run(work: Path | None = None, *, orders: int = ORDERS, metadata: str = "postgres") -> dict[str, Any]:
    """Book ``orders`` orders with one mapped ``HttpOperator`` task each on a real scheduler + LocalExecutor.

    :param metadata: ``postgres`` (a throwaway cluster, what a deployment runs on) or ``sqlite``.
    :returns: orders/s, the run's seconds, seconds per task, CPU per order, task timings, ERP calls and 429s.
    :raises RuntimeError: when the run did not succeed or not every order was booked.
    """
    from benchmarks.flows import CAP, ERP_TOKEN, LATENCY_MS, Sandboxes, _calls
    from omni_erp.devtools.airflow_stack import AirflowStack

    work = Path(work or tempfile.mkdtemp(prefix="omni_erp_mapped_"))
    dags, plugins = work / "mapped-dags", work / "mapped-plugins"
    dags.mkdir(parents=True, exist_ok=True)
    plugins.mkdir(exist_ok=True)
    (dags / f"{DAG_ID}.py").write_text(MAPPED_DAG)
    saved_environ = dict(os.environ)  # Sandboxes sets connection variables in this process
    try:
        with ExitStack() as cleanup:
            boxes = cleanup.enter_context(Sandboxes(work))
            boxes.configure(boxes.erp_url, latency_ms=LATENCY_MS, max_concurrency=CAP)
            metadata_url = None
            if metadata == "postgres":
                from omni_erp.devtools.pg import PostgresCluster

                metadata_url = cleanup.enter_context(PostgresCluster()).url
            started = time.monotonic()
            stack = cleanup.enter_context(AirflowStack(
                work / "mapped-airflow", metadata_url=metadata_url, dags_folder=dags, plugins_folder=plugins,
                connections={CONN_ID: {"conn_type": "http", "host": boxes.erp_url}},
                env={"BENCH_MAPPED_ORDERS": str(orders), "BENCH_ERP_TOKEN": ERP_TOKEN},
                components=("scheduler", "dag-processor"),  # no deferrable task: no triggerer
                start_timeout_s=300,
            ))
            stack.wait_for_dags([DAG_ID], timeout_s=300)
            ready_s = time.monotonic() - started
            cpu_before = _group_cpu_s(stack)
            response = stack.api("POST", f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None})
            if not response.ok:
                raise RuntimeError(f"triggering {DAG_ID} answered {response.status_code}: {response.text[:500]}")
            run_id = response.json()["dag_run_id"]
            dag_run = stack.wait_for_run(DAG_ID, run_id, timeout_s=RUN_TIMEOUT_S)
            cpu_s = _group_cpu_s(stack) - cpu_before
            tasks = _task_timings(stack, run_id)
            calls, throttled = _calls(boxes.faults(boxes.erp_url), "POST /api/v1/sales-orders")
            booked = {o["orderCode"] for o in boxes.state(boxes.erp_url)["sales_orders"]}
    finally:
        os.environ.clear()
        os.environ.update(saved_environ)
    expected = {f"FM{i:010d}" for i in range(orders)}
    if dag_run["state"] != "success" or booked != expected:
        raise RuntimeError(
            f"mapped HttpOperator run ended {dag_run['state']} with {len(booked & expected)} of {orders} orders booked "
            f"(task states {tasks['states']}); logs in {work / 'mapped-airflow'}"
        )
    run_s = (_as_datetime(dag_run["end_date"]) - _as_datetime(dag_run["start_date"])).total_seconds()
    return {
        "orders": orders,
        "executor": "LocalExecutor",
        "metadata_db": metadata,
        "orders_per_s": round(orders / run_s, 2),
        "run_s": round(run_s, 1),
        "s_per_task": round(run_s / orders, 3),
        "queued_to_end_s": round((_as_datetime(dag_run["end_date"]) - _as_datetime(dag_run["queued_at"])).total_seconds(), 1),
        "airflow_cpu_s": round(cpu_s, 1),
        "airflow_cpu_ms_per_order": round(cpu_s * 1000 / orders),
        "task_queued_to_start_s_median": tasks["queued_to_start_s"],
        "task_run_s_median": tasks["run_s"],
        "task_tries": tasks["tries"],
        "erp_calls": calls,
        "erp_429": throttled,
        "stack_ready_s": round(ready_s, 1),
    }


def _task_timings(stack: Any, run_id: str) -> dict[str, Any]:
    """Median queued -> start and start -> end of the run's task instances, their tries and final states."""
    rows = stack.query(
        "SELECT state, try_number, queued_dttm, start_date, end_date FROM task_instance "
        "WHERE dag_id = :dag_id AND run_id = :run_id",
        {"dag_id": DAG_ID, "run_id": run_id}, all_columns=True,
    )
    waits = [(_as_datetime(r["start_date"]) - _as_datetime(r["queued_dttm"])).total_seconds()
             for r in rows if r["start_date"] and r["queued_dttm"]]
    works = [(_as_datetime(r["end_date"]) - _as_datetime(r["start_date"])).total_seconds()
             for r in rows if r["start_date"] and r["end_date"]]
    states: dict[str, int] = {}
    for row in rows:
        states[str(row["state"])] = states.get(str(row["state"]), 0) + 1
    return {
        "queued_to_start_s": round(statistics.median(waits), 2) if waits else None,
        "run_s": round(statistics.median(works), 2) if works else None,
        "tries": sum(r["try_number"] or 0 for r in rows),
        "states": states,
    }


def _group_cpu_s(stack: Any) -> float:
    """CPU seconds (user + system, with reaped children) of every live process in the stack's process groups.

    Each component runs in a process group of its own (its pid). The LocalExecutor's workers are in the
    scheduler's; a task process they supervise has a group of its own while it runs, and its CPU joins its
    supervisor's ``cutime``/``cstime`` once reaped - so take this after every task has ended.
    """
    groups = {running.process.pid for running in stack._running}
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[2]) in groups:  # pgrp
            total += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return total / tick


def _as_datetime(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mapped_baseline", description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=ORDERS)
    parser.add_argument("--sqlite", action="store_true", help="SQLite metadata DB instead of PostgreSQL")
    args = parser.parse_args(argv)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    print(json.dumps(run(orders=args.orders, metadata="sqlite" if args.sqlite else "postgres"), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
