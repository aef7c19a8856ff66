"""``python -m omni_erp.demo``: walk Ajio orders through every flow on real Airflow and reconcile.

Starts the ERP and Omni sandboxes and the standalone inbox as processes on 127.0.0.1, plays Omni
(CREATE, CANCEL, COMPLETE and return postings, with re-deliveries and invalid ones), runs the five
DAGs with ``dag.test()`` in the order the order life cycle needs - including a jump of the clock
past the 24-hour IRN window - and then re-runs all five to prove nothing is booked or uploaded twice.
Prints one reconciliation per flow and the invariants; exits 1 if any invariant fails. Everything it
writes lives under ``var/demo``; the processes it started are stopped.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from omni_erp.demo import plan as paths
from omni_erp.demo.stack import INBOX_KEY, TALLY_PDF_PATH, Stack
from omni_erp.demo.views import ERP_VIEWS

DAY_AND_AN_HOUR_S = 25 * 3600
UNBILLED_FOR_S = 3600  # ERPNext and Tally bill on their own: orders booked while this is the delay wait an hour


class Omni:
    """Plays Increff's scheduler against our inbox: every push is checked, re-deliveries included."""

    def __init__(self, inbox_url: str, seed: int) -> None:
        from omni_erp.sandbox.pusher import PostingPusher

        self.pusher = PostingPusher(inbox_url, INBOX_KEY, backoff_s=0.05, redeliver_rate=0.15, seed=seed)
        self.strict = PostingPusher(inbox_url, INBOX_KEY, backoff_s=0.05, max_attempts=2)
        self.sent = self.redelivered = 0
        self.rejected: list[tuple[str, int | None, str]] = []

    def push(self, postings: list[dict[str, Any]], what: str) -> None:
        report = self.pusher.push(postings)
        self.sent += report.sent
        self.redelivered += report.redelivered
        if report.rejected:
            raise SystemExit(f"demo: the inbox refused valid {what} postings: {report.rejected}")
        print(f"[omni] pushed {report.sent} {what} posting(s), {report.redelivered} re-delivered")

    def push_invalid(self, postings: list[dict[str, Any]]) -> None:
        report = self.strict.push(postings)
        self.rejected.extend(report.rejected)
        print(f"[omni] pushed {report.sent} invalid posting(s); the inbox rejected {len(report.rejected)}")


class Airflow:
    """Runs the DAGs from the dags folder with dag.test(), each run with a fresh logical date."""

    def __init__(self) -> None:
        from airflow.dag_processing.dagbag import DagBag
        from airflow.utils import db

        db.initdb()
        self.dagbag = DagBag(dag_folder=str(Path("dags").resolve()))
        if self.dagbag.import_errors:
            raise SystemExit(f"demo: DAG import errors: {self.dagbag.import_errors}")
        self.runs: list[tuple[str, str]] = []

    def run(self, dag_id: str, note: str = "", **conf: Any) -> Any:
        import pendulum

        dag = self.dagbag.dags[dag_id]
        dag.deadline = None  # apache/airflow#73428: dag.test() crashes at the end of a DAG with a deadline
        logical_date = pendulum.now("UTC").subtract(days=2).add(seconds=len(self.runs))
        started = time.monotonic()
        run = dag.test(logical_date=logical_date, run_conf=conf or None)
        summaries = []
        for ti in run.get_task_instances():
            value = ti.xcom_pull(task_ids=ti.task_id) if ti.state == "success" else None
            if isinstance(value, dict):
                counts = {k: v for k, v in value.items() if k not in ("batch_id", "by_outcome") and v}
                if counts and ti.task_id != "report_outcome":
                    summaries.append(f"{ti.task_id} {counts}")
            elif ti.state != "success":
                summaries.append(f"{ti.task_id} {ti.state}")
        self.runs.append((dag_id, str(run.state)))
        detail = "; ".join(summaries) or "nothing to do"
        print(f"[airflow] {dag_id:<24} {run.state:<8} {time.monotonic() - started:5.1f} s {note}\n          {detail}")
        return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omni_erp.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=40, help="Ajio orders to generate (40 or more)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=Path("var/demo"))
    parser.add_argument("--erp", choices=sorted(ERP_VIEWS), default="generic",
                        help="which ERP sandbox plays the seller's ERP (the erp_default connection type follows)")
    parser.add_argument("--credit-notes", choices=("erp", "rms"), default="erp",
                        help="who raises return credit notes: the ERP (uploaded to Omni) or Increff RMS (from our report)")
    args = parser.parse_args(argv)
    if args.credit_notes == "rms" and args.erp != "generic":
        raise SystemExit(f"demo: the {args.erp} adapter cannot book a return without an e-credit note; "
                         "CREDIT_NOTES=rms needs ERP=generic")

    started = time.monotonic()
    dags = Path("dags").resolve()
    if not (dags / "omni_order_posting.py").exists():
        raise SystemExit("demo: run from the repository root (dags/ not found)")
    work = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    plan = paths.build_plan(args.orders, args.seed)

    with Stack(work, dags, args.seed, erp=args.erp) as stack:
        print(f"[demo] sandboxes and inbox running on 127.0.0.1; logs and the ledger in {work}")
        print(f"[demo] ERP: {args.erp} (erp_default conn_type {stack.erp_connection()['conn_type']!r})")
        rms_dir = work / "rms_reports"
        if args.credit_notes == "rms":
            import os

            os.environ.update(OMNI_ERP_CREDIT_NOTE_PATH="rms", OMNI_ERP_RMS_REPORT_DIR=str(rms_dir))
            print(f"[demo] credit notes through Increff RMS: the ERP books returns without one; reports in {rms_dir}")
        if args.erp == "tally":
            print(f"[demo] note: TallyPrime serves no PDFs over XML; the connection's pdf_path ({TALLY_PDF_PATH}) "
                  "points at the sandbox's stand-in for PDFs the seller publishes, and Omni gets their URLs")
        view = ERP_VIEWS[args.erp]

        def erp_state() -> dict[str, Any]:
            return view(stack.erp_state())

        from omni_erp.demo.reconcile import reconcile

        omni = Omni(stack.inbox_url, args.seed)
        airflow = Airflow()
        # A realistic ERP: some 5xx and some answers that arrive after our 2 s timeout (work already done).
        stack.erp_config(error_rate=0.05, timeout_rate=0.03, timeout_s=3, seed=args.seed)
        # ...and an Omni that answers 503 and 500 to the first uploads (refused before storing anything).
        stack.omni_config(fail_next=[503, 500, 503])

        print("\n[demo] 1. orders arrive; two are cancelled before the ERP sees them")
        held = plan.orders(paths.CANCEL_BEFORE_INVOICING)
        if args.erp == "generic":
            omni.push(plan.creates, "OUTWARD_ORDER_CREATE")
        else:
            omni.push([c for c in plan.creates if c not in held], "OUTWARD_ORDER_CREATE")
        omni.push_invalid(paths.invalid_postings(plan.creates[0]))
        omni.push(plan.cancels(paths.CANCEL_BEFORE_BOOKING), "OUTWARD_ORDER_CANCEL")
        if args.erp == "generic":
            stack.erp_config(invoice_hold=[c["orderCode"] for c in held])
        airflow.run("omni_order_cancellation", "(nothing booked yet: nothing to call)")
        airflow.run("omni_order_posting")
        if args.erp != "generic":
            # ERPNext and Tally have no per-order invoice hold: these orders arrive while the ERP bills slowly.
            stack.erp_config(invoice_delay_s=UNBILLED_FOR_S)
            omni.push(held, "OUTWARD_ORDER_CREATE (the ERP will not bill them for an hour)")
            airflow.run("omni_order_posting", "(orders not billed before they are cancelled)")

        print("\n[demo] 2. two booked orders are cancelled before the ERP e-invoiced them")
        omni.push(plan.cancels(paths.CANCEL_BEFORE_INVOICING), "OUTWARD_ORDER_CANCEL")
        airflow.run("omni_order_cancellation", "(cancel the ERP sales orders)")
        if args.erp == "generic":
            stack.erp_config(invoice_hold=[])
        else:
            stack.erp_config(invoice_delay_s=stack.invoice_delay_s)

        print("\n[demo] 3. the ERP e-invoices; invoices go to Omni (partial invoices with their lines)")
        time.sleep(0.5)
        airflow.run("erp_invoice_upload")

        print("\n[demo] 4. two invoiced orders are cancelled within 24 h of the IRN")
        omni.push(plan.cancels(paths.CANCEL_WITHIN_24H), "OUTWARD_ORDER_CANCEL")
        airflow.run("omni_order_cancellation", "(cancel IRN and order)")

        print("\n[demo] 5. the warehouse ships; some orders lost a unit to a late customer cancellation")
        invoices = {i["orderCode"]: i for i in erp_state()["invoices"]}
        completes = plan.completes(invoices)
        omni.push(completes, "OUTWARD_ORDER_COMPLETE")
        omni.push([{**completes[0], "messageId": completes[0]["messageId"] + 10_000}], "re-sent COMPLETE")
        airflow.run("omni_order_completion")

        print("\n[demo] 6. customer returns and RTOs come back from the warehouse with QC results")
        return_postings = plan.returns()
        omni.push(return_postings, "RETURN_ORDER_COMPLETE")
        airflow.run("omni_return_credit_note")
        time.sleep(0.5)
        airflow.run("omni_return_credit_note", "(credit notes raised since the last run)")

        print("\n[demo] 7. a day later: two more cancellations, now past the 24 h IRN window")
        stack.shift_clock(DAY_AND_AN_HOUR_S)
        omni.push(plan.cancels(paths.CANCEL_AFTER_24H), "OUTWARD_ORDER_CANCEL")
        airflow.run("omni_order_cancellation", "(credit notes kept in the ERP)")
        time.sleep(0.5)
        airflow.run("omni_return_credit_note", "(credit notes of cancellations stay in the ERP)")

        print("\n[demo] 8. every DAG once more: nothing may be booked or uploaded twice")
        before = (erp_state(), stack.omni_state())
        for dag_id in ("omni_order_posting", "erp_invoice_upload", "omni_order_cancellation",
                       "omni_order_completion", "omni_return_credit_note"):
            airflow.run(dag_id)
        after = (erp_state(), stack.omni_state())
        rms = None
        if args.credit_notes == "rms":
            rms = (return_postings, rms_dir)
            print("\n[demo] 9. RMS raised the credit notes of the first report's returns: imported from RMS's CSV")
            first = sorted(rms_dir.glob("*.csv"))[0]
            from omni_erp.rules.rms import read_report

            codes = sorted({row["returnOrderId"] for row in read_report(first.read_bytes().decode("utf-8"))})
            settlement = work / "rms_credit_notes.csv"
            settlement.write_text("returnOrderId,creditNoteNumber\n" + "".join(
                f"{code},RMSCN/{n:05d}\n" for n, code in enumerate(codes[: len(codes) // 2 + 1], start=1)))
            airflow.run("omni_return_credit_note", "(RMS credit notes recorded)", rms_credit_notes=str(settlement))

        return reconcile(plan, omni, airflow.runs, before, after, time.monotonic() - started, rms=rms)


if __name__ == "__main__":
    sys.exit(main())
