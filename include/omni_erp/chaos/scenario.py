"""The chaos scenario: the demo's order life cycle at scale, through all five DAGs, while everything fails.

Faults, all at once: the ERP sandbox answers 5xx, answers after the client's timeout (having done the
work), resets connections and answers 429 over its concurrency cap; the Omni sandbox answers 5xx and
hangs, before and after storing the document; task processes are killed with SIGKILL in the middle of
a batch - once while the ERP holds a committed booking the ledger has not recorded, once while Omni
holds an uploaded invoice the ledger has not marked; the ledger's PostgreSQL is stopped while Omni
pushes postings and the flows run. Then the faults stop, the DAGs run until nothing changes, and
:mod:`omni_erp.chaos.report` reconciles the ledger, the ERP and Omni.

Each life-cycle step is run until its DAG run succeeds ("settles"). A run that left postings claimed - it
was killed, or its last task could not give the batch back because the ledger was down - is retried as
the same run, the same ledger batch, as Airflow retries a task whose process died (otherwise those
postings would wait for their claim lease, 5 minutes after the last renewal); any other failed run is followed by a new run, as
the next scheduled one would.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from omni_erp.chaos.lanes import Lane, Lanes, RunResult
from omni_erp.demo import plan as paths
from omni_erp.demo.stack import INBOX_KEY, Stack

if TYPE_CHECKING:
    from omni_erp.chaos.report import ChaosReport

T = TypeVar("T")

F1, F2, F3, F4, F5 = (
    "omni_order_posting",
    "erp_invoice_upload",
    "omni_order_cancellation",
    "omni_order_completion",
    "omni_return_credit_note",
)
ALL_DAGS = (F1, F2, F3, F4, F5)
DAY_AND_AN_HOUR_S = 25 * 3600

KILL_MID_BATCH = "mid-batch"
KILL_AFTER_ERP_COMMIT = "after-erp-commit"
KILL_AFTER_OMNI_STORE = "after-omni-store"
ERP_BOOKING = "POST /api/v1/sales-orders"
OMNI_INVOICE = "POST /ajio-vms/b2bInvoice/posting"

# Issue 7: the ERP fails 20% of calls with a 5xx, times out on 5% (after doing the work), resets 2% of
# connections and answers 429 beyond two concurrent calls.
ERP_FAULTS: dict[str, Any] = {
    "error_rate": 0.20,
    "error_statuses": [500, 502, 503, 504],
    "timeout_rate": 0.05,
    "reset_rate": 0.02,
    "timeout_s": 1.2,  # the client gives up after 1 s (HTTP_POLICY) and retries work already done
    "max_concurrency": 2,
    "retry_after_s": 1,
}
# Omni answers 5xx to 10% of uploads and hangs on 3%: half before storing, half after (store, then hang).
OMNI_FAULTS: dict[str, Any] = {
    "error_rate": 0.10,
    "error_statuses": [500, 502, 503],
    "hang_rate": 0.015,
    "timeout_rate": 0.015,
    "timeout_s": 1.2,
}
NO_FAULTS: dict[str, Any] = {
    "error_rate": 0.0, "timeout_rate": 0.0, "hang_rate": 0.0, "reset_rate": 0.0, "max_concurrency": None, "stall_next": 0,
}
# The hooks' retry policy, tuned so a 20% failure rate is absorbed within a call (6 attempts) and the
# run stays short: backoff 0.05 s doubling, capped at 0.25 s (also caps Retry-After), 1 s read timeout.
HTTP_POLICY = {
    "OMNI_ERP_HTTP_MAX_ATTEMPTS": "6",
    "OMNI_ERP_HTTP_BASE_DELAY_S": "0.05",
    "OMNI_ERP_HTTP_MAX_DELAY_S": "0.25",
    "OMNI_ERP_HTTP_CONNECT_TIMEOUT_S": "1",
    "OMNI_ERP_HTTP_READ_TIMEOUT_S": "1",
}
# A run that is meant to be killed while a server holds its answer waits longer for it, so the kill
# (not the client's own timeout and retry) is what ends the wait.
PATIENT_CLIENT = {"OMNI_ERP_HTTP_READ_TIMEOUT_S": "15"}
STALL_S = 6.0


class ChaosError(RuntimeError):
    """The scenario itself could not go on (a valid posting refused, a process that would not start)."""


@dataclass
class ChaosSettings:
    """Size and faults of one chaos run; :meth:`small` is the version ``make test`` runs.

    :param orders: Ajio orders generated (every life-cycle path is walked many times).
    :param seed: seed of the orders, paths and injected faults.
    :param workdir: where logs, the Airflow homes and the lane DBs go (the PostgreSQL cluster is a temp dir).
    :param pg_outage_s: how long PostgreSQL stays down (0: no outage).
    :param kills: which SIGKILLs to deliver (``KILL_*``).
    :param batch_limit: postings one F1 run claims while the lanes run side by side.
    :param lanes: task processes running DAG runs side by side (F1 runs on all of them while orders arrive).
    :param retry_delay_s: Airflow task retry delay inside a run.
    :param run_timeout_s: a DAG run taking longer is treated as hung: its process is killed and replaced.
    """

    orders: int = 2000
    seed: int = 11
    workdir: Path = Path("var/chaos")
    pg_outage_s: float = 20.0
    kills: tuple[str, ...] = (KILL_MID_BATCH, KILL_AFTER_ERP_COMMIT, KILL_AFTER_OMNI_STORE)
    batch_limit: int | None = None
    lanes: int = 2
    retry_delay_s: float = 2.0
    run_timeout_s: float = 900.0
    erp_faults: dict[str, Any] = field(default_factory=lambda: dict(ERP_FAULTS))
    omni_faults: dict[str, Any] = field(default_factory=lambda: dict(OMNI_FAULTS))
    http_policy: dict[str, str] = field(default_factory=lambda: dict(HTTP_POLICY))
    max_runs_per_step: int = 8

    @classmethod
    def small(cls, workdir: Path, **overrides: Any) -> ChaosSettings:
        """The ``make test`` version: 80 orders, one SIGKILL (after the ERP committed), a 3 s outage."""
        values: dict[str, Any] = {
            "orders": 80, "workdir": workdir, "pg_outage_s": 3.0, "kills": (KILL_AFTER_ERP_COMMIT,), "batch_limit": 25,
            "lanes": 1,
            "run_timeout_s": 180.0,
            # One lane: a timed-out call the ERP still works on is enough to exceed a cap of one.
            "erp_faults": {**ERP_FAULTS, "max_concurrency": 1},
        }
        return cls(**{**values, **overrides})

    @property
    def scale(self) -> int:
        """How many times each special path's demo quota is walked."""
        return max(1, self.orders // 50)

    @property
    def f1_limit(self) -> int:
        return self.batch_limit or max(25, self.orders // 4)


@dataclass
class KillEvent:
    """One SIGKILL: what was killed, when, and whether it landed where it was meant to."""

    kind: str
    lane: str
    dag_id: str
    run_at: str
    at_s: float
    detail: str
    confirmed: bool | None = None
    evidence: str = ""


@dataclass
class KillPlan:
    """A SIGKILL waiting for its moment: ``arm`` sets the trap, ``fired`` (polled while the run is in flight)
    returns a description when the process must die now, ``confirm`` checks afterwards where it landed."""

    kind: str
    fired: Callable[[], str | None]
    arm: Callable[[], None] = lambda: None
    disarm: Callable[[], None] = lambda: None
    confirm: Callable[[KillEvent], None] = lambda event: None
    env: dict[str, str] = field(default_factory=dict)


class OmniPlayer:
    """Plays Increff's scheduler: pushes postings and keeps re-pushing those the inbox could not store (5xx,
    no answer) until it stores them, as Omni retries a failed push later. A 4xx for a valid posting stops the run."""

    def __init__(self, inbox_url: str, seed: int) -> None:
        from omni_erp.sandbox.pusher import PostingPusher

        self.pusher = PostingPusher(inbox_url, INBOX_KEY, backoff_s=0.05, max_attempts=4, timeout_s=10, redeliver_rate=0.1, seed=seed)
        self.strict = PostingPusher(inbox_url, INBOX_KEY, backoff_s=0.05, max_attempts=2)
        self.sent = self.redelivered = self.pushed_again = 0
        self.statuses: Counter[str] = Counter()
        self.acked: set[str] = set()
        self.invalid_refused = 0
        self._lock = threading.Lock()

    def push(self, postings: list[dict[str, Any]], what: str, *, give_up_after_s: float = 600) -> None:
        pending = list(postings)
        deadline = time.monotonic() + give_up_after_s
        while pending:
            report = self.pusher.push(pending)
            failed = {message_id: (status, text) for message_id, status, text in report.rejected}
            refused = [(m, s, t) for m, (s, t) in failed.items() if s is not None and 400 <= s < 500 and s != 429]
            with self._lock:
                self.statuses.update(report.statuses)
                self.redelivered += report.redelivered
                self.acked.update(str(p["messageId"]) for p in pending if str(p["messageId"]) not in failed)
            if refused:
                raise ChaosError(f"the inbox refused valid {what} postings: {refused[:3]}")
            pending = [p for p in pending if str(p["messageId"]) in failed]
            if pending:
                if time.monotonic() > deadline:
                    raise ChaosError(f"{len(pending)} {what} postings could not be delivered in {give_up_after_s:.0f} s")
                with self._lock:
                    self.pushed_again += len(pending)
                time.sleep(1.0)  # Omni's scheduler tries again later
        with self._lock:
            self.sent += len(postings)
        log(f"[omni] pushed {len(postings)} {what} posting(s)")

    def push_invalid(self, postings: list[dict[str, Any]]) -> None:
        report = self.strict.push(postings)
        with self._lock:
            self.statuses.update(report.statuses)
            self.invalid_refused += len(report.rejected)


class Outage:
    """Stops the ledger's PostgreSQL and starts it again; others wait on :meth:`wait_until_up` or ``down``."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.up = threading.Event()
        self.up.set()
        self.down = threading.Event()
        self.windows: list[float] = []

    def run(self, when: Callable[[], bool], down_s: float, *, latest_s: float = 120.0) -> None:
        """Stop PostgreSQL once ``when()`` holds (or after ``latest_s``), keep it down ``down_s``, start it again."""
        deadline = time.monotonic() + latest_s
        while time.monotonic() < deadline and not when():
            time.sleep(0.05)
        self.up.clear()
        started = time.monotonic()
        log(f"[pg] stopping PostgreSQL for {down_s:.0f} s")
        self.cluster.stop_server()
        self.down.set()
        try:
            time.sleep(down_s)
        finally:
            self.cluster.start_server()
            self.down.clear()
            self.windows.append(time.monotonic() - started)
            self.up.set()
            log(f"[pg] PostgreSQL is back after {self.windows[-1]:.1f} s")

    def wait_until_up(self) -> None:
        self.up.wait()


_started = time.monotonic()


def log(message: str) -> None:
    print(f"{time.monotonic() - _started:7.1f}s {message}", flush=True)


class Chaos:
    """One chaos run on a started :class:`Stack` and PostgreSQL cluster; :meth:`run` walks the scenario.

    :param settings: sizes and faults.
    :param stack: sandboxes and inbox (entered).
    :param cluster: the ledger's PostgreSQL cluster (started).
    :param lanes: the task processes (started).
    """

    def __init__(self, settings: ChaosSettings, stack: Stack, cluster: Any, lanes: Lanes) -> None:
        from omni_erp.ledger import Ledger

        self.settings = settings
        self.stack = stack
        self.ledger = Ledger(stack.ledger_url)
        self.outage = Outage(cluster)
        self.plan = paths.build_plan(settings.orders, settings.seed, scale=settings.scale)
        self.omni = OmniPlayer(stack.inbox_url, settings.seed)
        self.lanes = lanes.lanes
        self.runs: list[RunResult] = []
        self.kills: list[KillEvent] = []
        self.notes: list[str] = []
        self.env: dict[str, str] = {}
        self._clock = itertools.count()
        self._base = time.time() - 3 * 86400
        self._lock = threading.Lock()
        self.before_final: tuple[dict[str, Any], dict[str, Any]] | None = None

    # --- runs ----------------------------------------------------------------------------------

    def new_run_at(self) -> str:
        """A run time no other run of any lane has: the run id, hence the ledger batch, is unique."""
        from datetime import UTC, datetime

        with self._lock:
            n = next(self._clock)
        return datetime.fromtimestamp(self._base + n, UTC).isoformat()

    def settle(
        self, dag_id: str, lane: Lane, *, conf: dict[str, Any] | None = None, kill: KillPlan | None = None, note: str = ""
    ) -> bool:
        """Run ``dag_id`` on ``lane`` until a run succeeds; ``kill`` is armed on every run until it fires."""
        run_at = self.new_run_at()
        for _ in range(self.settings.max_runs_per_step):
            env = {**self.env}
            watcher = None
            if kill is not None:
                kill.arm()
                env.update(kill.env)
            lane.submit(dag_id, run_at, conf=conf, env=env)
            if kill is not None:
                watcher = _Watcher(self, lane, dag_id, kill)
                watcher.start()
            result = lane.wait(self.settings.run_timeout_s)
            if watcher is not None and kill is not None:
                watcher.stop()
                kill.disarm()
                if watcher.event is not None:
                    self.when_ledger_is_up(functools.partial(kill.confirm, watcher.event))
                    self.kills.append(watcher.event)
                    log(f"[kill] {watcher.event.kind}: {watcher.event.detail}; "
                        f"{'confirmed' if watcher.event.confirmed else 'NOT confirmed'} ({watcher.event.evidence})")
                    kill = None
                    if {k.kind for k in self.kills if k.confirmed} >= set(self.settings.kills):
                        lane.spare_wanted = False  # the last planned kill: no replacement needs to warm up
            self._record(result, note)
            if result.state == "success":
                return True
            self.outage.wait_until_up()
            time.sleep(0.5)
            if not self.holds_postings(dag_id, run_at):
                run_at = self.new_run_at()  # the next scheduled run
            # else: retried as the same run, the same batch - as Airflow retries the task; otherwise its
            # postings would wait for their claim lease (5 minutes after the last renewal) to expire
        self.notes.append(f"{dag_id} on lane {lane.name} did not settle in {self.settings.max_runs_per_step} runs ({note})")
        return False

    def when_ledger_is_up(self, read: Callable[[], T]) -> T:
        """``read()`` once PostgreSQL is up; retried while it is (again) unreachable - the outage may begin at any moment."""
        from sqlalchemy.exc import OperationalError

        deadline = time.monotonic() + 180
        while True:
            self.outage.wait_until_up()
            try:
                return read()
            except OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def holds_postings(self, dag_id: str, run_at: str) -> int:
        """Postings the run's batch still holds (claimed, unfinished): it died, or could not give them back."""
        from sqlalchemy import func, select

        from omni_erp.ledger import tables
        from omni_erp.states import CLAIMED

        m = tables.inbox_message
        batch = f"{dag_id}/{run_id_of(run_at)}"

        def count() -> int:
            with self.ledger.engine.connect() as conn:
                return int(conn.execute(select(func.count()).where(m.c.batch_id == batch, m.c.state == CLAIMED)).scalar() or 0)

        return self.when_ledger_is_up(count)

    def _record(self, result: RunResult, note: str) -> None:
        with self._lock:
            self.runs.append(result)
        counts = {}
        for task_id, task in result.tasks.items():
            xcom = task.get("xcom") or {}
            interesting = {k: v for k, v in xcom.items() if k not in ("batch_id", "cursor") and isinstance(v, int) and v}
            if interesting and task_id != "report_outcome":
                counts[task_id] = interesting
            if task.get("state") != "success":
                counts[task_id] = task.get("state")
        detail = "; ".join(f"{k} {v}" for k, v in counts.items()) or result.note or "nothing to do"
        log(f"[airflow/{result.lane}] {result.dag_id:<24} {result.state:<8} {result.seconds:6.1f} s {note}\n"
            f"{'':18}{detail[:300]}")

    # --- kills ---------------------------------------------------------------------------------

    def _bookings(self) -> int:
        """Booking calls the ERP has received so far (every attempt)."""
        return int(self.stack.erp_faults()["request_counts"].get(ERP_BOOKING, 0))

    def kill_mid_batch(self) -> KillPlan:
        """Kill an F1 run once a third of its batch has reached the ERP."""
        start: dict[str, int] = {}
        target = max(3, self.settings.f1_limit // 3)
        bookings = self._bookings

        def arm() -> None:
            start["n"] = bookings()

        def fired() -> str | None:
            done = bookings() - start["n"]
            return f"{done} booking calls reached the ERP during the run" if done >= target else None

        def confirm(event: KillEvent) -> None:
            held = self.holds_postings(F1, event.run_at)
            event.confirmed = bool(held)
            event.evidence = f"{held} posting(s) of its batch were still claimed, unfinished"

        return KillPlan(KILL_MID_BATCH, fired, arm=arm, confirm=confirm)

    def kill_after_erp_commit(self) -> KillPlan:
        """Hold the ERP's answer to one booking it has committed, and kill the F1 run while it waits."""

        def arm() -> None:
            self.stack.erp_config(stall_next=1, stall_endpoint=ERP_BOOKING, stall_s=STALL_S)

        def disarm() -> None:
            self.stack.erp_config(stall_next=0)
            self.stack.release_stalls()

        def fired() -> str | None:
            stalled = self.stack.erp_faults()["stalled"]
            return f"the ERP holds its answer to {stalled[0]['idempotency_key']}" if stalled else None

        def confirm(event: KillEvent) -> None:
            order_code = event.detail.rsplit("create:", 1)[-1]
            order = self.ledger.get_order(order_code) or {}
            in_erp = [o["salesOrderId"] for o in self.stack.erp_state()["sales_orders"] if o["orderCode"] == order_code]
            event.confirmed = bool(in_erp) and not order.get("erp_sales_order_id")
            event.evidence = (
                f"ERP sales order {in_erp[0] if in_erp else None}, ledger order {order_code} "
                f"state {order.get('state')} with ERP id {order.get('erp_sales_order_id')}"
            )

        return KillPlan(KILL_AFTER_ERP_COMMIT, fired, arm=arm, disarm=disarm, confirm=confirm, env=PATIENT_CLIENT)

    def kill_after_omni_store(self) -> KillPlan:
        """Hold Omni's answer to an invoice upload it has stored, and kill the F2 run while it waits."""
        from omni_erp.states import DOC_INVOICE, DOC_UPLOADED

        def arm() -> None:
            self.stack.omni_config(stall_next=1, stall_endpoint=OMNI_INVOICE, stall_s=STALL_S)

        def disarm() -> None:
            self.stack.omni_config(stall_next=0)
            self.stack.release_stalls()

        def fired() -> str | None:
            return "Omni holds its answer to an invoice upload it stored" if self.stack.omni_faults()["stalled"] else None

        def confirm(event: KillEvent) -> None:
            stored = {d["body"]["invoiceNumber"] for d in self.stack.omni_state()["invoices"]}
            uploaded = {d["doc_number"] for d in self.ledger.documents(DOC_INVOICE, states=[DOC_UPLOADED])}
            unmarked = sorted(stored - uploaded)
            event.confirmed = bool(unmarked)
            event.evidence = f"Omni stored {len(unmarked)} invoice(s) the ledger had not marked uploaded ({', '.join(unmarked[:3])})"

        return KillPlan(KILL_AFTER_OMNI_STORE, fired, arm=arm, disarm=disarm, confirm=confirm, env=PATIENT_CLIENT)

    # --- the scenario --------------------------------------------------------------------------

    def faults_on(self) -> None:
        self.stack.erp_config(**self.settings.erp_faults, seed=self.settings.seed)
        self.stack.omni_config(**self.settings.omni_faults, seed=self.settings.seed)

    def faults_off(self) -> None:
        self.stack.erp_config(**NO_FAULTS)
        self.stack.omni_config(**NO_FAULTS)

    def wait_for_erp_documents(self, timeout_s: float = 60) -> None:
        """Let the ERP finish e-invoicing (documents appear a moment after booking)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.stack.erp_state()
            if state["pending_documents"] == len(state["held_invoices"]):
                return
            time.sleep(0.3)
        self.notes.append("the ERP still had documents to publish after 60 s")

    def run(self) -> None:
        plan, omni, settings = self.plan, self.omni, self.settings
        lane_a = self.lanes[0]
        f1_conf = {"limit": settings.f1_limit}
        everything = {"limit": 5000}

        # Orders arrive. Those cancelled before booking come first (with their cancellations); the rest
        # arrive while F1 runs on two lanes, PostgreSQL goes down, and a lane is killed mid-batch.
        log(f"[chaos] {settings.orders} orders; paths: {dict(Counter(plan.path.values()))}")
        self.stack.erp_config(invoice_hold=[c["orderCode"] for c in plan.orders(paths.CANCEL_BEFORE_INVOICING)])
        self.faults_on()
        first = {c["orderCode"] for c in plan.orders(paths.CANCEL_BEFORE_BOOKING)}
        others = [c for c in plan.creates if c["orderCode"] not in first]
        reserve = max(3, len(others) // 10)  # pushed just before the kill after the ERP's commit
        early = plan.orders(paths.CANCEL_BEFORE_BOOKING) + others[: len(others) // 4]
        during, late = others[len(others) // 4 : -reserve], others[-reserve:]
        omni.push(early, "OUTWARD_ORDER_CREATE")
        omni.push_invalid(paths.invalid_postings(plan.creates[0]))
        omni.push(plan.cancels(paths.CANCEL_BEFORE_BOOKING), "OUTWARD_ORDER_CANCEL")
        self.settle(F3, lane_a, conf=everything, note="(cancelled before booking: nothing to call)")

        log(f"[chaos] 1. F1 on {len(self.lanes)} lane(s) while orders arrive"
            + (" and PostgreSQL goes down" if settings.pg_outage_s else ""))
        mid_batch = self.kill_mid_batch() if KILL_MID_BATCH in settings.kills else None
        bookings_before = self._bookings()
        half = len(during) // 2

        def arrivals() -> None:
            omni.push(during[:half], "OUTWARD_ORDER_CREATE (arriving during F1)")
            if settings.pg_outage_s:
                self.outage.down.wait(timeout=150)  # the rest arrive while the ledger is down: the inbox must say 5xx
            omni.push(during[half:], "OUTWARD_ORDER_CREATE (arriving during F1)")

        def f1_is_busy() -> bool:
            return self._bookings() - bookings_before >= max(2, settings.f1_limit // 3)

        workers = [
            threading.Thread(target=arrivals),
            threading.Thread(target=self.settle, args=(F1, lane_a), kwargs={"conf": f1_conf, "kill": mid_batch}),
            *[threading.Thread(target=self._second_lane, args=(lane, F1, f1_conf)) for lane in self.lanes[1:]],
        ]
        if settings.pg_outage_s:  # once F1 is a third into its batch, PostgreSQL goes down
            workers.append(threading.Thread(target=self.outage.run, args=(f1_is_busy, settings.pg_outage_s)))
        _run_all(workers)

        if KILL_AFTER_ERP_COMMIT in settings.kills:
            log("[chaos] 1b. a booking the ERP committed, whose answer never arrives: the F1 process is killed")
            chunks = [late[i::3] for i in range(3)]
            for n, chunk in enumerate(chunks):
                omni.push(chunk, "OUTWARD_ORDER_CREATE (late)")
                kill = self.kill_after_erp_commit()
                self.settle(F1, lane_a, conf=everything, kill=kill)
                if any(k.kind == KILL_AFTER_ERP_COMMIT and k.confirmed for k in self.kills):
                    omni.push([c for rest in chunks[n + 1 :] for c in rest], "OUTWARD_ORDER_CREATE (late)")
                    break
        else:
            omni.push(late, "OUTWARD_ORDER_CREATE (late)")
        self.settle(F1, lane_a, conf=everything, note="(the rest of the bookings)")

        log("[chaos] 2. booked orders cancelled before the ERP e-invoiced them")
        omni.push(plan.cancels(paths.CANCEL_BEFORE_INVOICING), "OUTWARD_ORDER_CANCEL")
        self.settle(F3, lane_a, conf=everything, note="(cancel the ERP sales orders)")
        self.stack.erp_config(invoice_hold=[])

        log("[chaos] 3. e-invoices go to Omni" + (" (an upload process is killed after Omni stored)" if KILL_AFTER_OMNI_STORE in settings.kills else ""))
        self.wait_for_erp_documents()
        kill = self.kill_after_omni_store() if KILL_AFTER_OMNI_STORE in settings.kills else None
        self.settle(F2, lane_a, kill=kill)
        if kill is not None and not any(k.kind == KILL_AFTER_OMNI_STORE for k in self.kills):
            self.notes.append("the kill after Omni stored an invoice never fired")

        log("[chaos] 4. invoiced orders cancelled within 24 h of the IRN")
        omni.push(plan.cancels(paths.CANCEL_WITHIN_24H), "OUTWARD_ORDER_CANCEL")
        self.settle(F3, lane_a, conf=everything, note="(cancel IRN and order)")

        log("[chaos] 5. the warehouse ships; some orders lost units to late cancellations")
        invoices = {i["orderCode"]: i for i in self.stack.erp_state()["invoices"]}
        completes = plan.completes(invoices)
        omni.push(completes, "OUTWARD_ORDER_COMPLETE")
        omni.push([{**completes[0], "messageId": completes[0]["messageId"] + 10_000}], "re-sent COMPLETE")
        self.settle(F4, lane_a, conf=everything)

        log("[chaos] 6. returns and RTOs come back with QC results")
        omni.push(plan.returns(), "RETURN_ORDER_COMPLETE")
        self.settle(F5, lane_a, conf=everything, note="(return orders)")
        self.wait_for_erp_documents()
        self.settle(F5, lane_a, conf=everything, note="(credit notes)")

        log("[chaos] 7. a day later: cancellations past the 24 h IRN window")
        self.env["OMNI_ERP_CLOCK_OFFSET_S"] = str(DAY_AND_AN_HOUR_S)
        self.stack.erp_config(clock_offset_s=DAY_AND_AN_HOUR_S)
        omni.push(plan.cancels(paths.CANCEL_AFTER_24H), "OUTWARD_ORDER_CANCEL")
        self.settle(F3, lane_a, conf=everything, note="(credit notes kept in the ERP)")
        self.wait_for_erp_documents()
        self.settle(F5, lane_a, conf=everything, note="(credit notes of cancellations stay in the ERP)")

        log("[chaos] 8. the faults stop; every DAG runs until nothing changes")
        self.faults_off()
        self.converge(lane_a)

    def _second_lane(self, lane: Lane, dag_id: str, conf: dict[str, Any]) -> None:
        time.sleep(1.0)  # the first lane starts first, so its kill lands in its own batch
        self.settle(dag_id, lane, conf=conf, note=f"(lane {lane.name})")

    def converge(self, lane: Lane, max_rounds: int = 6) -> None:
        """Run all five DAGs in rounds until a round succeeds everywhere and changes nothing."""
        before = self.fingerprint()
        for n in range(1, max_rounds + 1):
            self.wait_for_erp_documents()
            results = []
            for dag_id in ALL_DAGS:
                lane.submit(dag_id, self.new_run_at(), conf={"limit": 5000}, env=dict(self.env))
                result = lane.wait(self.settings.run_timeout_s)
                self._record(result, f"(final round {n})")
                results.append(result)
            after = self.fingerprint()
            if all(r.state == "success" for r in results) and after == before:
                log(f"[chaos] nothing changed in round {n}: settled")
                return
            before = after
        self.notes.append(f"the DAGs still changed something after {max_rounds} final rounds")

    def fingerprint(self) -> str:
        """Everything a DAG run could change: ERP and Omni writes, posting, order and document states."""
        from omni_erp.states import DOC_CREDIT_NOTE, DOC_INVOICE

        writes = [
            {k: v for k, v in faults["request_counts"].items() if k.startswith("POST")}
            for faults in (self.stack.erp_faults(), self.stack.omni_faults())
        ]
        ledger = {
            "postings": sorted((list(k), n) for k, n in self.ledger.posting_counts().items()),
            "orders": sorted(self.ledger.order_counts().items()),
            "documents": sorted(Counter(d["state"] for t in (DOC_INVOICE, DOC_CREDIT_NOTE) for d in self.ledger.documents(t)).items()),
            "returns": sorted(Counter(r["state"] for r in self.ledger.return_orders()).items()),
        }
        return json.dumps([writes, ledger], sort_keys=True, default=str)



class _Watcher(threading.Thread):
    """Polls a kill plan while a lane's run is in flight and kills the lane's process when it fires."""

    def __init__(self, chaos: Chaos, lane: Lane, dag_id: str, plan: KillPlan) -> None:
        super().__init__(daemon=True, name=f"kill-{plan.kind}")
        self.chaos, self.lane, self.dag_id, self.plan = chaos, lane, dag_id, plan
        self.event: KillEvent | None = None
        self.run_at = lane.current_run_at
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                detail = self.plan.fired()
            except Exception as exc:  # a sandbox poll failing under load is not a reason to stop watching
                detail = None
                log(f"[kill] poll failed: {type(exc).__name__}")
            if detail:
                self.lane.kill(f"{self.plan.kind}: {detail}")
                self.event = KillEvent(
                    self.plan.kind, self.lane.name, self.dag_id, self.run_at or "", round(time.monotonic() - _started, 1), detail
                )
                return
            self._stop_event.wait(0.02)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def run_id_of(run_at: str) -> str:
    """The run id ``dag.test()`` gives a run whose ``run_after`` is ``run_at``: ``manual__<run_after>``."""
    import pendulum

    return f"manual__{pendulum.parse(run_at).isoformat()}"


def _run_all(threads: list[threading.Thread]) -> None:
    """Start the threads, wait for all, and re-raise the first failure in the caller."""
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # re-raised below, in the scenario's own thread
                errors.append(exc)

        return run

    wrapped = [threading.Thread(target=guarded(t.run), name=t.name, daemon=True) for t in threads]
    for thread in wrapped:
        thread.start()
    for thread in wrapped:
        thread.join()
    if errors:
        raise errors[0]


def run_chaos(settings: ChaosSettings, dags: Path, *, airflow_db: Path | None = None) -> ChaosReport:
    """Run the scenario end to end and return its report; the caller's environment is left as it was.

    :param settings: sizes and faults.
    :param dags: the project's dags folder.
    :param airflow_db: an initialised Airflow metadata DB (SQLite) to copy for the task processes; None = create one.
    """
    from omni_erp.chaos.report import build_report, dump_evidence
    from omni_erp.devtools.pg import PostgresCluster

    global _started
    started = _started = time.monotonic()
    work = settings.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    saved_environment = dict(os.environ)
    cluster = PostgresCluster()
    stack = Stack(work, dags, settings.seed, ledger_url=cluster.url, http_policy=settings.http_policy)
    stack.prepare_environment()
    names = ["a", "b", "c", "d"][: settings.lanes]
    lanes = Lanes(
        work, dags, names, spares={"a"} if settings.kills else set(), retry_delay_s=settings.retry_delay_s, template=airflow_db
    )
    lanes.prepare()
    # The task processes start (and warm up) while PostgreSQL and the sandboxes start.
    starting = threading.Thread(target=_run_all, args=([threading.Thread(target=lanes.start)],), daemon=True)
    starting.start()
    try:
        with cluster, stack:
            starting.join()
            if not all(lane.worker is not None and lane.worker.ready for lane in lanes.lanes):
                raise ChaosError(f"the task processes did not start; see {work}/lane-*.log")
            log(f"[chaos] PostgreSQL ledger, sandboxes, inbox and {len(names)} task process(es) ready; logs in {work}")
            chaos = Chaos(settings, stack, cluster, lanes)
            try:
                chaos.run()
            finally:
                lanes.close()
            report = build_report(chaos, time.monotonic() - started)
            dump_evidence(chaos, work / "evidence")
            chaos.ledger.engine.dispose()
            return report
    finally:
        lanes.close()
        os.environ.clear()
        os.environ.update(saved_environment)
