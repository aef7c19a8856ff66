"""The chaos run's closing table: what was injected, what was done, and the figures that must be zero."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omni_erp import states as s
from omni_erp.demo.reconcile import path_results

if TYPE_CHECKING:
    from omni_erp.chaos.scenario import Chaos

WIDTH = 66


@dataclass(frozen=True)
class Figure:
    """One line of a section; ``must_be_zero`` lines decide the exit status."""

    label: str
    value: Any
    must_be_zero: bool = False
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.must_be_zero and self.value != 0


@dataclass
class ChaosReport:
    """The sections of the table, in print order."""

    sections: list[tuple[str, list[Figure]]]
    notes: list[str]

    @property
    def zero_checks(self) -> list[Figure]:
        return [f for _, figures in self.sections for f in figures if f.must_be_zero]

    @property
    def ok(self) -> bool:
        return not any(f.failed for f in self.zero_checks)

    def render(self) -> str:
        lines = ["", "=" * 92, "make chaos: reconciliation after the faults stopped", "=" * 92]
        for title, figures in self.sections:
            lines += ["", title, "-" * 92]
            for f in figures:
                mark = ("FAIL " if f.failed else "ok   ") if f.must_be_zero else "     "
                lines.append(f"{mark}{f.label:<{WIDTH}} {f.value!s:>14}")
                if f.detail:
                    lines.append(f"       {f.detail[:400]}")
        for note in self.notes:
            lines.append(f"note: {note}")
        lines.append("=" * 92)
        failed = [f.label for f in self.zero_checks if f.failed]
        lines.append("OK: every zero is zero." if not failed else f"FAILED: {'; '.join(failed)}")
        return "\n".join(lines)


def _extras(keys: list[Any]) -> int:
    """How many entries repeat a key already seen (0 when every key is unique)."""
    return sum(n - 1 for n in Counter(keys).values() if n > 1)


def _mismatch_figure(a: set[Any], b: set[Any]) -> tuple[int, bool, str]:
    """(size of the symmetric difference, must be zero, a few examples from each side)."""
    diff = a ^ b
    return len(diff), True, (f"only left: {sorted(map(str, a - b))[:5]} only right: {sorted(map(str, b - a))[:5]}" if diff else "")


def build_report(chaos: Chaos, wall_s: float) -> ChaosReport:
    """Read the ledger and both sandboxes once the DAGs settled, and lay out the table."""
    ledger, stack, omni, settings = chaos.ledger, chaos.stack, chaos.omni, chaos.settings
    erp = stack.erp_state()
    omni_state = stack.omni_state()
    postings = ledger.postings()
    orders = [o for o in (ledger.get_order(c["orderCode"]) for c in chaos.plan.creates) if o]
    invoices = ledger.documents(s.DOC_INVOICE)
    notes = ledger.documents(s.DOC_CREDIT_NOTE)
    returns = ledger.return_orders()
    calls = Counter((c["system"], c["outcome"]) for c in ledger.calls())

    # --- must be zero ---------------------------------------------------------------------------
    stored_ids = {str(p["message_id"]) for p in postings}
    unstored = sorted(omni.acked - stored_ids)
    stuck = [p for p in postings if p["state"] == s.CLAIMED or (p["state"] == s.PENDING and not p["last_error"])]
    waiting = [p for p in postings if p["state"] == s.PENDING and p["last_error"]]

    erp_duplicates = {
        "sales orders per order": _extras([o["orderCode"] for o in erp["sales_orders"]]),
        "return orders per return": _extras([r["returnOrderCode"] for r in erp["return_orders"]]),
        "credit note requests per invoice": _extras([r["invoiceNumber"] for r in erp["credit_note_requests"]]),
        "credit notes per return or request": _extras(
            [(n["orderCode"], n["returnOrderCode"] or n["invoiceNumber"]) for n in erp["credit_notes"]]
        ),
    }
    omni_conflicts = [r for r in omni_state["rejected"] if str(r.get("code", "")).startswith("DUPLICATE_")]

    routes: dict[str, set[str]] = {}
    for o in orders:
        routes.setdefault(o["cancel_route"] or "", set()).add(o["order_code"])
    by_code = {o["order_code"]: o for o in orders}
    omni_invoices = {d["body"]["invoiceNumber"]: d["body"] for d in omni_state["invoices"]}
    omni_notes = {d["body"]["creditNoteNumber"]: d["body"] for d in omni_state["credit_notes"]}
    erp_invoice_irn = {i["invoiceNumber"]: i["irn"] for i in erp["invoices"]}
    erp_note_irn = {n["creditNoteNumber"]: n["irn"] for n in erp["credit_notes"]}
    pairs = {
        "ERP sales orders = ledger ERP order ids": (
            {o["salesOrderId"] for o in erp["sales_orders"]}, {o["erp_sales_order_id"] for o in orders if o["erp_sales_order_id"]}),
        "ERP cancelled sales orders = ledger cancellations in the ERP": (
            {o["orderCode"] for o in erp["sales_orders"] if o["status"] == "CANCELLED"},
            routes.get(s.CANCEL_SALES_ORDER, set()) | routes.get(s.CANCEL_IRN, set())),
        "ERP e-invoices = ledger invoices": ({i["invoiceNumber"] for i in erp["invoices"]}, {d["doc_number"] for d in invoices}),
        "ERP cancelled IRNs = ledger IRN cancellations": (
            {i["orderCode"] for i in erp["invoices"] if i["status"] == "CANCELLED"}, routes.get(s.CANCEL_IRN, set())),
        "ERP credit-note requests = ledger credit-note cancellations": (
            {r["invoiceNumber"] for r in erp["credit_note_requests"]},
            {by_code[c]["erp_invoice_number"] for c in routes.get(s.CANCEL_CREDIT_NOTE, set())}),
        "ERP return orders = ledger return orders": (
            {r["returnOrderId"] for r in erp["return_orders"]}, {r["erp_return_order_id"] for r in returns if r["erp_return_order_id"]}),
        "ERP credit notes = ledger credit notes": ({n["creditNoteNumber"] for n in erp["credit_notes"]}, {d["doc_number"] for d in notes}),
        "Omni invoices = ledger invoices uploaded": (set(omni_invoices), {d["doc_number"] for d in invoices if d["state"] == s.DOC_UPLOADED}),
        "Omni credit notes = ledger credit notes uploaded": (
            set(omni_notes), {d["doc_number"] for d in notes if d["state"] == s.DOC_UPLOADED}),
        "Omni IRNs = ERP IRNs of the same documents": (
            {(n, b["irnNumber"]) for n, b in omni_invoices.items()} | {(n, b["irnNumber"]) for n, b in omni_notes.items()},
            {(n, erp_invoice_irn.get(n)) for n in omni_invoices} | {(n, erp_note_irn.get(n)) for n in omni_notes}),
    }
    per_path = path_results(chaos.plan, ledger, erp)
    off_path = {p: len(r) - sum(r) for p, r in per_path.items() if not all(r)}

    one_to_one = [Figure(f"  {label}", *_mismatch_figure(a, b)) for label, (a, b) in pairs.items()]
    zeros = [
        Figure("postings acknowledged (200) by the inbox but not stored", len(unstored), True, ", ".join(unstored[:10])),
        Figure("postings neither done/dead/ignored nor pending with a reason", len(stuck), True,
               ", ".join(f"{p['message_id']}:{p['state']}" for p in stuck[:10])),
        Figure("duplicate ERP documents", sum(erp_duplicates.values()), True,
               ", ".join(f"{k} {v}" for k, v in erp_duplicates.items() if v)),
        Figure("duplicate Omni documents (a second, different body for one number)", len(omni_conflicts), True,
               str(omni_conflicts[:3]) if omni_conflicts else ""),
        Figure("ledger / ERP / Omni one-to-one mismatches", sum(f.value for f in one_to_one), True),
        *one_to_one,
        Figure("orders that did not end where their life-cycle path leads", sum(off_path.values()), True,
               ", ".join(f"{p}: {n}" for p, n in off_path.items())),
    ]

    # --- the faults really happened -----------------------------------------------------------
    erp_injected = Counter(erp["injected"])
    omni_injected = Counter(omni_state["injected"])
    erp_5xx = sum(n for k, n in erp_injected.items() if k.isdigit() and int(k) >= 500)
    omni_5xx = sum(n for k, n in omni_injected.items() if k.isdigit() and int(k) >= 500)
    planned = set(settings.kills)
    confirmed = {k.kind for k in chaos.kills if k.confirmed}
    faults = [
        Figure("ERP: 5xx answers injected", f"{erp_5xx} ({', '.join(f'{k}: {n}' for k, n in sorted(erp_injected.items()) if k.isdigit())})"),
        Figure("ERP: answers after the client's timeout, work done", erp_injected["timeout"]),
        Figure("ERP: connections reset (of which after the work)", f"{erp_injected['reset']} ({erp_injected['reset_after_work']})"),
        Figure("ERP: 429 + Retry-After over the concurrency cap", erp_injected["429_busy"]),
        Figure("Omni: 5xx answers to uploads", omni_5xx),
        Figure("Omni: hangs before storing", omni_injected["hang"]),
        Figure("Omni: hangs after storing (answer after the client's timeout)", omni_injected["timeout"]),
        Figure("SIGKILLs of task processes (confirmed where they were meant to land)",
               f"{len(chaos.kills)} ({sum(1 for k in chaos.kills if k.confirmed)})"),
        *[Figure(f"  {k.kind}: lane {k.lane} {k.dag_id} at {k.at_s:.0f} s", "confirmed" if k.confirmed else "NOT confirmed",
                 detail=f"{k.detail}; {k.evidence}") for k in chaos.kills],
        Figure("PostgreSQL down (s)", " + ".join(f"{w:.1f}" for w in chaos.outage.windows) or "0"),
        Figure("inbox answers to Omni's pushes", ", ".join(f"{k}: {n}" for k, n in sorted(omni.statuses.items()))),
        Figure("planned faults that did not happen", _missing_faults(settings, erp_5xx, erp_injected, omni_5xx, omni_injected,
                                                                     planned - confirmed, chaos, omni.statuses), True,
               ", ".join(sorted(planned - confirmed))),
    ]

    # --- what was done --------------------------------------------------------------------------
    runs = Counter(r.state for r in chaos.runs)
    work = [
        Figure("orders generated / walking a special life-cycle path", f"{len(chaos.plan.creates)} / "
               f"{sum(1 for p in chaos.plan.path.values() if p != 'plain: invoiced, shipped in full')}"),
        Figure("postings pushed by Omni (re-deliveries / pushed again after a 5xx)",
               f"{omni.sent} ({omni.redelivered} / {omni.pushed_again})"),
        Figure("postings stored; still pending with a reason", f"{len(postings)}; {len(waiting)}"),
        Figure("ERP sales orders / e-invoices / return orders / credit notes",
               f"{len(erp['sales_orders'])} / {len(erp['invoices'])} / {len(erp['return_orders'])} / {len(erp['credit_notes'])}"),
        Figure("ERP writes answered from an idempotency key (replays)", sum(erp["duplicates"].values()),
               detail=", ".join(f"{k}: {n}" for k, n in sorted(erp["duplicates"].items()))),
        Figure("Omni invoices / credit notes stored", f"{len(omni_invoices)} / {len(omni_notes)}"),
        Figure("HTTP attempts retried (ERP / Omni)", f"{calls[('erp', 'retry')]} / {calls[('omni', 'retry')]}"),
        Figure("DAG runs: success / failed / killed / other",
               f"{runs['success']} / {runs['failed']} / {runs['killed']} / {sum(runs.values()) - runs['success'] - runs['failed'] - runs['killed']}"),
        Figure("task processes started (lanes)", sum(lane.starts for lane in chaos.lanes)),
        Figure("wall time (s)", f"{wall_s:.0f}"),
    ]
    resends = omni_state["duplicates"]
    resent = [
        Figure("identical re-sends Omni received for a document it had stored", sum(resends.values()),
               detail=(f"invoices {resends.get('invoice', 0)}, credit notes {resends.get('credit_note', 0)}; Increff offers no "
                       "way to ask whether it stored a document, so an upload whose answer was lost (a hang after storing, "
                       f"{omni_injected['timeout']} injected, or a process killed while waiting) is sent again, unchanged")),
    ]
    return ChaosReport(
        [
            (f"The faults ({settings.orders} orders, seed {settings.seed})", faults),
            ("What was done", work),
            ("Must be zero", zeros),
            ("Reported on their own (not errors)", resent),
        ],
        chaos.notes,
    )


def _missing_faults(
    settings: Any,
    erp_5xx: int,
    erp_injected: Counter[str],
    omni_5xx: int,
    omni_injected: Counter[str],
    unconfirmed_kills: set[str],
    chaos: Any,
    statuses: Counter[str],
) -> int:
    """How many planned kinds of fault never happened (a chaos run that injected nothing proves nothing)."""
    expected = [
        settings.erp_faults.get("error_rate") and not erp_5xx,
        settings.erp_faults.get("timeout_rate") and not erp_injected["timeout"],
        settings.erp_faults.get("reset_rate") and not erp_injected["reset"],
        settings.erp_faults.get("max_concurrency") and not erp_injected["429_busy"],
        settings.omni_faults.get("error_rate") and not omni_5xx,
        settings.omni_faults.get("hang_rate") and not omni_injected["hang"],
        settings.omni_faults.get("timeout_rate") and not omni_injected["timeout"],
        settings.pg_outage_s and not (chaos.outage.windows and statuses.get("503")),
    ]
    return sum(1 for missing in expected if missing) + len(unconfirmed_kills)


def dump_evidence(chaos: Chaos, folder: Path) -> None:
    """Write what the table was computed from (ledger rows without payloads, both sandboxes' state, the runs
    and kills) as JSON under ``folder``, so a failed check can be investigated after the cluster is gone."""
    from sqlalchemy import select

    from omni_erp.ledger import tables

    folder.mkdir(parents=True, exist_ok=True)
    heavy = {"payload", "erp_request", "lines"}
    with chaos.ledger.engine.connect() as conn:
        for table in (tables.inbox_message, tables.ajio_order, tables.erp_document, tables.return_order,
                      tables.dead_letter, tables.manual_settlement, tables.shipment):
            columns = [c for c in table.c if c.name not in heavy]
            rows = [dict(r._mapping) for r in conn.execute(select(*columns).order_by(*table.primary_key.columns))]
            (folder / f"ledger-{table.name}.json").write_text(json.dumps(rows, default=str, indent=1))
    (folder / "erp-state.json").write_text(json.dumps(chaos.stack.erp_state(), indent=1))
    (folder / "omni-state.json").write_text(json.dumps(chaos.stack.omni_state(), indent=1))
    (folder / "runs.json").write_text(json.dumps([asdict(r) for r in chaos.runs], default=str, indent=1))
    (folder / "kills.json").write_text(json.dumps([asdict(k) for k in chaos.kills], default=str, indent=1))
