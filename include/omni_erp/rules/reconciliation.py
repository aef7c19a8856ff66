"""The daily reconciliation (issue 10 item 7): ledger vs ERP vs Omni, per flow, as tables a person can read.

``reconcile`` is a pure function of what the operator read (ledger rows, the ERP's document feeds, Omni's
acknowledgements recorded in the ledger and, where available, the Omni sandbox's state); ``csv_files`` and
``html_page`` render its result. Nothing here reads or writes anything.

What a reconciliation holds:

* ``figures`` - per flow, counts side by side (ledger | ERP | Omni) and ``MISMATCH`` where two sides that
  must agree do not;
* ``differences`` - every document behind a mismatch (in the ERP but not the ledger, marked uploaded without
  Omni's acknowledgement, ...);
* ``open_items`` - every order, posting, document and return order not in a terminal state, with its age and
  the reason it waits;
* ``manual_settlements``, ``dead_letters`` (unresolved) and ``duplicates`` (repeats recognised and not acted
  on twice: duplicate postings, ERP writes answered from their idempotency key, identical re-sends to Omni).
"""

from __future__ import annotations

import csv
import html
import io
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from omni_erp.states import (
    CANCEL_CREDIT_NOTE,
    CANCEL_IRN,
    CANCEL_NOT_BOOKED,
    CANCEL_SALES_ORDER,
    CLAIMED,
    DEAD,
    DOC_CREDIT_NOTE,
    DOC_INVOICE,
    DOC_KEPT_IN_ERP,
    DOC_UPLOADED,
    ORDER_BOOKED,
    ORDER_COMPLETED,
    ORDER_COMPLETED_WITH_RETURN,
    ORDER_INVOICED,
    ORDER_PARTIALLY_SHIPPED,
    ORDER_READY,
    ORDER_REJECTED,
    PENDING,
    RETURN_BOOKED,
    RETURN_MANUAL_ONLY,
    RETURN_READY,
)

MISMATCH = "MISMATCH"
EVENT_FLOWS = {
    "OUTWARD_ORDER_CREATE": "F1",
    "OUTWARD_ORDER_CANCEL": "F3",
    "OUTWARD_ORDER_COMPLETE": "F4",
    "RETURN_ORDER_COMPLETE": "F5",
}
DOC_FLOWS = {DOC_INVOICE: "F2", DOC_CREDIT_NOTE: "F6"}
# Idempotency-key action -> the flow that sends it (omni_erp.keys).
KEY_FLOWS = {
    "create": "F1", "cancel": "F3", "cancel-irn": "F3", "credit-note": "F3", "return": "F4/F5",
    "invoice": "F2", "credit_note": "F6",
}
DUPLICATE_POSTING_OUTCOMES = {
    "duplicate_order": "CREATE postings for an order already received (closed, not booked again)",
    "already_cancelled": "CANCEL postings for an order already cancelled",
    "already_completed": "COMPLETE postings for an order already completed",
}
# Which flow an open order waits on, by its state.
ORDER_FLOWS = {ORDER_READY: "F1", ORDER_REJECTED: "F1", ORDER_BOOKED: "F2", ORDER_INVOICED: "F2", ORDER_PARTIALLY_SHIPPED: "F4"}
ORDER_WAITS = {
    ORDER_READY: "mapped, waiting to be booked in the ERP (F1)",
    ORDER_BOOKED: "booked in the ERP, waiting for its e-invoice (the ERP registers it at the IRP; F2 reads it)",
    ORDER_PARTIALLY_SHIPPED: "some invoiced units not shipped yet: waiting for a later COMPLETE (F4)",
    ORDER_REJECTED: "the ERP refused the order: see the dead letter, fix and reprocess",
}

# rms_return.state -> why the return is open (issue 12).
RMS_WAITS = {
    "to_report": "booked in the ERP without a credit note; the next RMS report carries it",
    "reported_to_rms": "in an RMS report; waiting for its RMS credit note (record it with rms_credit_notes)",
    "not_reportable": "no line traceable to a forward invoice; settle offline with Ajio",
}

OPEN_ITEM_COLUMNS = ["flow", "kind", "key", "order_code", "state", "since", "age_hours", "reason"]
FIGURE_COLUMNS = ["flow", "measure", "ledger", "erp", "omni", "check"]
DIFFERENCE_COLUMNS = ["flow", "doc_type", "doc_number", "order_code", "difference"]
DUPLICATE_COLUMNS = ["flow", "what", "count", "extra_calls"]
SETTLEMENT_COLUMNS = ["return_order_code", "order_code", "item_code", "sku", "qc_status", "qc_reason", "reason", "created_at"]
DEAD_LETTER_COLUMNS = ["id", "stage", "business_key", "message_id", "created_at", "reason"]


@dataclass(frozen=True)
class ErpFeeds:
    """What the ERP's feeds listed: per document type, number -> (order code, status); read from ``from_seq``.

    :param documents: ``{"invoice": {number: {"order_code", "status", "seq"}}, "credit_note": {...}}``.
    :param from_seq: the feeds were read after this sequence number; ledger documents before it are not compared.
    :param unreadable: documents the feeds listed that break the contract (counted, not compared).
    :param truncated: the read stopped at its cap before the end of a feed (counts are then lower bounds).
    """

    documents: Mapping[str, Mapping[str, Mapping[str, Any]]]
    from_seq: int = 0
    unreadable: int = 0
    truncated: bool = False


@dataclass(frozen=True)
class OmniState:
    """What Omni holds, where a side channel shows it (the sandbox's ``/_sandbox/state``; Increff offers no query API).

    :param documents: ``{"invoice": {numbers}, "credit_note": {numbers}}``.
    :param duplicates: identical re-sends Omni counted, per document type.
    """

    documents: Mapping[str, set[str]]
    duplicates: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class LedgerSnapshot:
    """What the ledger holds, as ``omni_erp.ledger.queries`` and ``Ledger`` return it."""

    posting_counts: Mapping[tuple[str, str, str | None], int]
    order_counts: Mapping[tuple[str, str | None], int]  # (state, cancel_route) -> n
    return_counts: Mapping[tuple[str, str], int]  # (kind, state) -> n
    documents: list[Mapping[str, Any]]  # doc_type, doc_number, order_code, seq, state
    open_orders: list[Mapping[str, Any]]
    open_postings: list[Mapping[str, Any]]
    open_documents: list[Mapping[str, Any]]
    open_returns: list[Mapping[str, Any]]
    manual_settlements: list[Mapping[str, Any]]
    dead_letters: list[Mapping[str, Any]]
    omni_acknowledged: Mapping[str, int]  # idempotency key of an upload -> answered (200) calls
    erp_answered: Mapping[str, int]  # ERP idempotency key -> answered calls, only keys answered more than once
    orders_with_erp_order: int = 0  # orders carrying an ERP sales order id (booked at some point)
    # Returns on the RMS credit-note path not settled yet (issue 12): rms_return rows (ledger/rms.py).
    rms_open: list[Mapping[str, Any]] = field(default_factory=list)


@dataclass
class Reconciliation:
    """One reconciliation; ``key_figures`` is what goes to XCom."""

    generated_at: datetime
    figures: list[dict[str, Any]]
    differences: list[dict[str, Any]]
    open_items: list[dict[str, Any]]
    manual_settlements: list[dict[str, Any]]
    dead_letters: list[dict[str, Any]]
    duplicates: list[dict[str, Any]]
    notes: list[str]

    def key_figures(self) -> dict[str, Any]:
        """Small, JSON-safe: what a dashboard or the next task needs (no rows)."""
        return {
            "generated_at": self.generated_at.isoformat(),
            "mismatches": sum(1 for f in self.figures if f["check"] == MISMATCH),
            "differences": len(self.differences),
            "open_items": len(self.open_items),
            "open_by_flow": dict(sorted(Counter(i["flow"] for i in self.open_items).items())),
            "oldest_open_hours": max((i["age_hours"] for i in self.open_items), default=0),
            "manual_settlements": len(self.manual_settlements),
            "dead_letters": len(self.dead_letters),
            "duplicates_suppressed": sum(d["count"] for d in self.duplicates),
        }


def _hours(at: datetime, since: datetime | None) -> float:
    return round((at - since).total_seconds() / 3600, 1) if since else 0.0


def _figure(
    flow: str, measure: str, ledger: Any = None, erp: Any = None, omni: Any = None, *, must_agree: bool = False,
    differing: bool = False,
) -> dict[str, Any]:
    """One row of counts; ``MISMATCH`` when sides that must agree differ in count, or ``differing`` documents
    lie behind equal counts (one missing on each side)."""
    sides = [v for v in (ledger, erp, omni) if v is not None]
    check = MISMATCH if differing or (must_agree and len(set(sides)) > 1) else ""
    return {"flow": flow, "measure": measure, "ledger": ledger, "erp": erp, "omni": omni, "check": check}


def _posting_figures(counts: Mapping[tuple[str, str, str | None], int]) -> list[dict[str, Any]]:
    rows = []
    for event, flow in EVENT_FLOWS.items():
        of_event = {(state, outcome): n for (e, state, outcome), n in counts.items() if e == event}
        total = sum(of_event.values())
        waiting = sum(n for (state, _), n in of_event.items() if state in (PENDING, CLAIMED))
        dead = sum(n for (state, _), n in of_event.items() if state == DEAD)
        rows += [
            _figure(flow, f"{event} postings received", total),
            _figure(flow, f"{event} postings waiting for a run", waiting),
            _figure(flow, f"{event} postings dead-lettered", dead),
        ]
    return rows


def _document_figures(
    doc_type: str, ledger_docs: list[Mapping[str, Any]], feeds: ErpFeeds | None, snapshot: LedgerSnapshot,
    omni: OmniState | None, upload_key: str,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Figures and differences of one document type (F2 e-invoices, F6 credit notes)."""
    flow = DOC_FLOWS[doc_type]
    label = "e-invoices" if doc_type == DOC_INVOICE else "credit notes"
    in_ledger = {d["doc_number"]: d for d in ledger_docs}
    uploaded = {n for n, d in in_ledger.items() if d["state"] == DOC_UPLOADED}
    acknowledged = {n for n in in_ledger if snapshot.omni_acknowledged.get(f"{upload_key}:{n}", 0) > 0}
    differences: list[dict[str, Any]] = []

    def differ(number: str, order_code: Any, what: str) -> None:
        differences.append({"flow": flow, "doc_type": doc_type, "doc_number": number, "order_code": order_code, "difference": what})

    figures = []
    if feeds is not None:
        in_erp = feeds.documents.get(doc_type, {})
        comparable = {n: d for n, d in in_ledger.items() if d.get("seq") is None or d["seq"] > feeds.from_seq}
        for number in sorted(set(in_erp) - set(comparable)):
            differ(number, in_erp[number].get("order_code"), "in the ERP's feed, not in the ledger (the next feed read records it)")
        for number in sorted(set(comparable) - set(in_erp)):
            differ(number, comparable[number].get("order_code"), "in the ledger, no longer in the ERP's feed")
        for number in sorted(set(comparable) & set(in_erp)):
            if comparable[number].get("order_code") != in_erp[number].get("order_code"):
                differ(number, comparable[number].get("order_code"),
                       f"the ERP's feed names order {in_erp[number].get('order_code')!r}, the ledger {comparable[number].get('order_code')!r}")
        figures.append(_figure(flow, f"{label} (ledger: recorded; ERP: in its feed)", len(comparable), len(in_erp),
                               must_agree=True, differing=bool(differences)))
        cancelled = sum(1 for d in in_erp.values() if str(d.get("status") or "").upper() == "CANCELLED")
        if cancelled:
            figures.append(_figure(flow, f"{label} cancelled in the ERP (IRN cancelled)", None, cancelled))
    else:
        figures.append(_figure(flow, f"{label} recorded", len(in_ledger)))
    erp_differences = len(differences)
    for number in sorted(uploaded - acknowledged):
        differ(number, in_ledger[number].get("order_code"), "marked uploaded, but no 200 from Omni is recorded")
    for number in sorted(acknowledged - uploaded):
        differ(number, in_ledger[number].get("order_code"),
               f"Omni answered 200, but the ledger says {in_ledger[number]['state']}")
    if omni is not None:
        held = omni.documents.get(doc_type, set())
        for number in sorted(uploaded - held):
            differ(number, in_ledger[number].get("order_code"), "marked uploaded, but Omni does not hold it")
        for number in sorted(held - uploaded):
            differ(number, in_ledger.get(number, {}).get("order_code"), "Omni holds it, but the ledger has not marked it uploaded")
    omni_count = len(omni.documents.get(doc_type, set())) if omni is not None else len(acknowledged)
    figures.append(_figure(flow, f"{label} uploaded (ledger: marked uploaded; Omni: acknowledged / held)",
                           len(uploaded), None, omni_count, must_agree=True, differing=len(differences) > erp_differences))
    if doc_type == DOC_CREDIT_NOTE:
        figures.append(_figure(flow, "credit notes kept in the ERP (F3 after 24 h, F4 partial cancel)",
                               sum(1 for d in ledger_docs if d["state"] == DOC_KEPT_IN_ERP)))
    return figures, differences


def _open_items(snapshot: LedgerSnapshot, at: datetime) -> list[dict[str, Any]]:
    items = []
    for o in snapshot.open_orders:
        flow = ORDER_FLOWS.get(o["state"], "-")
        if o["state"] == ORDER_INVOICED:
            if o.get("invoice_state") == DOC_UPLOADED:
                flow, reason = "F4", "e-invoice at Omni; waiting for OUTWARD_ORDER_COMPLETE (F4) or a cancellation (F3)"
            else:
                reason = f"e-invoice {o.get('invoice_state') or 'not recorded'}: {o.get('invoice_reason') or 'waiting for upload (F2)'}"
        else:
            reason = ORDER_WAITS.get(o["state"], o["state"])
            if o.get("last_error") and o["state"] in (ORDER_READY, ORDER_REJECTED):
                reason = f"{reason}; last error: {o['last_error']}"
        items.append({"flow": flow, "kind": "order", "key": o["order_code"], "order_code": o["order_code"],
                      "state": o["state"], "since": o["created_at"], "age_hours": _hours(at, o["created_at"]), "reason": reason})
    for p in snapshot.open_postings:
        items.append({"flow": EVENT_FLOWS.get(p["event_type"], "-"), "kind": f"posting {p['event_type']}",
                      "key": p["message_id"], "order_code": p["order_code"], "state": p["state"], "since": p["received_at"],
                      "age_hours": _hours(at, p["received_at"]),
                      "reason": p.get("last_error") or ("held by a running batch" if p["state"] == CLAIMED else "waiting for the next run")})
    for d in snapshot.open_documents:
        items.append({"flow": DOC_FLOWS.get(d["doc_type"], "-"), "kind": d["doc_type"], "key": d["doc_number"],
                      "order_code": d.get("order_code"), "state": d["state"], "since": d["created_at"],
                      "age_hours": _hours(at, d["created_at"]), "reason": d.get("reason") or d["state"]})
    for r in snapshot.open_returns:
        items.append({"flow": "F4/F5", "kind": f"return order {r['kind']}", "key": r["return_order_code"],
                      "order_code": r["order_code"], "state": r["state"], "since": r["created_at"],
                      "age_hours": _hours(at, r["created_at"]),
                      "reason": "waiting to be booked in the ERP" if r["state"] == RETURN_READY else "the ERP refused it: see the dead letter"})
    for r in snapshot.rms_open:
        since = r.get("reported_at") or r["registered_at"]
        items.append({"flow": "F5 RMS", "kind": "return, credit note by Increff RMS", "key": r["return_order_code"],
                      "order_code": r["order_code"], "state": r["state"], "since": since, "age_hours": _hours(at, since),
                      "reason": RMS_WAITS.get(r["state"], r["state"]) + (f": {r['reason']}" if r.get("reason") else "")})
    return sorted(items, key=lambda i: -i["age_hours"])


def _duplicates(snapshot: LedgerSnapshot, omni: OmniState | None) -> list[dict[str, Any]]:
    rows = []
    by_outcome: Counter[tuple[str, str]] = Counter()
    for (event, _state, outcome), n in snapshot.posting_counts.items():
        if outcome in DUPLICATE_POSTING_OUTCOMES:
            by_outcome[(EVENT_FLOWS.get(event, "-"), outcome)] += n
    for (flow, outcome), n in sorted(by_outcome.items()):
        rows.append({"flow": flow, "what": DUPLICATE_POSTING_OUTCOMES[outcome], "count": n, "extra_calls": None})
    for key_map, system in ((snapshot.erp_answered, "ERP"), (snapshot.omni_acknowledged, "Omni")):
        per_action: dict[str, list[int]] = {}
        for key, answered in key_map.items():
            if answered > 1:
                per_action.setdefault(key.split(":", 1)[0], []).append(answered)
        for action, counts in sorted(per_action.items()):
            what = (f"ERP '{action}' writes answered again from their idempotency key (nothing created twice)" if system == "ERP"
                    else f"'{action}' uploads Omni answered 200 more than once (identical re-sends)")
            rows.append({"flow": KEY_FLOWS.get(action, "-"), "what": what, "count": len(counts), "extra_calls": sum(counts) - len(counts)})
    if omni is not None:
        for doc_type, n in sorted(omni.duplicates.items()):
            if n:
                rows.append({"flow": DOC_FLOWS.get(doc_type, "-"), "what": f"identical {doc_type} re-sends Omni counted", "count": n,
                             "extra_calls": None})
    return rows


def reconcile(
    snapshot: LedgerSnapshot, *, at: datetime, erp: ErpFeeds | None, omni: OmniState | None = None,
    erp_problem: str | None = None,
) -> Reconciliation:
    """Compare the ledger with the ERP (its document feeds) and Omni (acknowledgements; its state where available).

    :param erp: the feeds as read, or None when the ERP could not be read (``erp_problem`` says why).
    """
    orders: Counter[str] = Counter()
    routes: Counter[str] = Counter()
    for (state, route), n in snapshot.order_counts.items():
        orders[state] += n
        if route:
            routes[route] += n
    returns: Counter[tuple[str, str]] = Counter()
    for (kind, state), n in snapshot.return_counts.items():
        returns[(kind, state)] += n
    figures = _posting_figures(snapshot.posting_counts)
    figures += [
        _figure("F1", "orders registered", sum(orders.values())),
        _figure("F1", "orders with an ERP sales order", snapshot.orders_with_erp_order),
        _figure("F1", "orders waiting to be booked / refused by the ERP", orders[ORDER_READY] + orders[ORDER_REJECTED]),
    ]
    docs_by_type: dict[str, list[Mapping[str, Any]]] = {DOC_INVOICE: [], DOC_CREDIT_NOTE: []}
    for d in snapshot.documents:
        docs_by_type.setdefault(d["doc_type"], []).append(d)
    invoice_figures, invoice_differences = _document_figures(DOC_INVOICE, docs_by_type[DOC_INVOICE], erp, snapshot, omni, "invoice")
    note_figures, note_differences = _document_figures(
        DOC_CREDIT_NOTE, docs_by_type[DOC_CREDIT_NOTE], erp, snapshot, omni, "credit_note"
    )
    figures += invoice_figures
    figures += [
        _figure("F3", "cancelled before booking (nothing called)", routes[CANCEL_NOT_BOOKED]),
        _figure("F3", "cancelled: ERP sales order cancelled", routes[CANCEL_SALES_ORDER]),
        _figure("F3", "cancelled within 24 h: IRN and order cancelled", routes[CANCEL_IRN]),
        _figure("F3", "cancelled after 24 h: credit note kept in the ERP", routes[CANCEL_CREDIT_NOTE]),
        _figure("F4", "orders completed", orders[ORDER_COMPLETED]),
        _figure("F4", "orders completed with a return for cancelled units", orders[ORDER_COMPLETED_WITH_RETURN]),
        _figure("F4", "orders partially shipped (waiting for the rest)", orders[ORDER_PARTIALLY_SHIPPED]),
        _figure("F5", "return orders booked in the ERP", sum(n for (_k, s), n in returns.items() if s == RETURN_BOOKED)),
        _figure("F5", "returns with nothing to credit (manual settlement only)",
                sum(n for (_k, s), n in returns.items() if s == RETURN_MANUAL_ONLY)),
        _figure("F5", "returned units for manual settlement", len(snapshot.manual_settlements)),
        *note_figures,
    ]
    figures.sort(key=lambda f: f["flow"])  # stable: each flow's rows keep their order
    notes = []
    if erp is None:
        notes.append(f"The ERP's feeds could not be read ({erp_problem or 'unknown reason'}): the ERP column is empty.")
    else:
        if erp.from_seq:
            notes.append(f"The ERP's feeds were read after sequence number {erp.from_seq}; older documents are not compared.")
        if erp.unreadable:
            notes.append(f"{erp.unreadable} document(s) in the ERP's feeds break the contract (the feed readers dead-letter them).")
        if erp.truncated:
            notes.append("The ERP read stopped at its cap before the end of a feed: ERP counts are lower bounds.")
    if omni is None:
        notes.append("Omni column: uploads Omni answered 200, from the ledger's outbound_call rows (Increff offers no query API).")
    manual = [{k: m.get(k) for k in SETTLEMENT_COLUMNS} for m in snapshot.manual_settlements]
    dead = [{k: d.get(k) for k in DEAD_LETTER_COLUMNS} for d in snapshot.dead_letters]
    return Reconciliation(
        generated_at=at, figures=figures, differences=invoice_differences + note_differences, open_items=_open_items(snapshot, at),
        manual_settlements=manual, dead_letters=dead, duplicates=_duplicates(snapshot, omni), notes=notes,
    )


# --- rendering --------------------------------------------------------------------------------

TABLES = (
    ("figures", "Counts per flow: ledger | ERP | Omni", FIGURE_COLUMNS),
    ("differences", "Documents behind a mismatch", DIFFERENCE_COLUMNS),
    ("open_items", "Not in a terminal state (oldest first)", OPEN_ITEM_COLUMNS),
    ("manual_settlements", "Returned units for manual settlement with Ajio", SETTLEMENT_COLUMNS),
    ("dead_letters", "Dead letters not resolved", DEAD_LETTER_COLUMNS),
    ("duplicates", "Duplicates suppressed", DUPLICATE_COLUMNS),
)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> str:
    """A cell as text; text a spreadsheet would run as a formula (ERP and Omni messages are not ours) gets a
    leading ``'``, which spreadsheets show as text."""
    text = _text(value)
    if isinstance(value, str) and text.startswith(FORMULA_STARTS):
        return "'" + text
    return text


def csv_files(report: Reconciliation) -> dict[str, str]:
    """One CSV per table (``figures.csv``, ``open_items.csv``, ...): header row, then one row per item.

    Values are written whole (commas, quotes and line breaks quoted the CSV way); see ``_csv_cell`` for formulas.
    """
    files = {}
    for name, _title, columns in TABLES:
        buffer = io.StringIO()
        writer = csv.writer(buffer)  # RFC 4180 line ends: a value holding \r or \n is quoted
        writer.writerow(columns)
        writer.writerows([_csv_cell(row.get(c)) for c in columns] for row in getattr(report, name))
        files[f"{name}.csv"] = buffer.getvalue()
    return files


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5rem;color:#1f2328}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.85rem;margin-top:.5rem}
th,td{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right}tr.mismatch td{background:#ffebe9}
.summary{display:flex;gap:1rem;flex-wrap:wrap}.summary div{border:1px solid #d0d7de;padding:.5rem 1rem;border-radius:6px}
.summary b{display:block;font-size:1.3rem}.note{color:#57606a}
"""


_NUMERIC = ' class="num"'


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _rows_html(rows: Iterable[Mapping[str, Any]], columns: list[str]) -> str:
    out = ["<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"]
    for row in rows:
        css = ' class="mismatch"' if row.get("check") == MISMATCH else ""
        cells = "".join(f"<td{_NUMERIC if _is_number(row.get(c)) else ''}>{html.escape(_text(row.get(c)))}</td>" for c in columns)
        out.append(f"<tr{css}>{cells}</tr>")
    return "<table>" + "".join(out) + "</table>"


def html_page(report: Reconciliation, *, title: str = "omni-erp reconciliation") -> str:
    """The whole reconciliation as one self-contained HTML page (inline CSS, no scripts, every value escaped)."""
    figures = report.key_figures()
    summary = "".join(
        f"<div><b>{html.escape(str(figures[k]))}</b>{html.escape(label)}</div>"
        for k, label in (("mismatches", "mismatching counts"), ("differences", "documents differing"),
                         ("open_items", "open items"), ("oldest_open_hours", "hours, oldest open item"),
                         ("dead_letters", "dead letters"), ("manual_settlements", "manual settlements"),
                         ("duplicates_suppressed", "duplicates suppressed"))
    )
    sections = []
    for name, heading, columns in TABLES:
        rows = getattr(report, name)
        body = _rows_html(rows, columns) if rows else '<p class="note">None.</p>'
        sections.append(f'<h2 id="{name}">{html.escape(heading)} ({len(rows)})</h2>{body}')
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in report.notes)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f'<p class="note">Generated {html.escape(report.generated_at.isoformat(timespec="seconds"))}</p>'
        f'<div class="summary">{summary}</div>{notes}{"".join(sections)}</body></html>\n'
    )
