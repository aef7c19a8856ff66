"""The RMS credit-note path (issue 12): write the "B2B Returns Credit Note Generation for RMS" report of
the returns booked without an ERP credit note, regenerate a lost report, and record the credit notes RMS
raised."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from omni_erp import settings
from omni_erp.ledger.rms import RMS_REPORTED, ConcurrentReportError, iter_waiting
from omni_erp.operators.base import LedgerOperator, _error_text, not_about_the_item
from omni_erp.rules import rms as rules
from omni_erp.states import DOC_INVOICE, RETURN_BOOKED
from omni_erp.timeutil import IST, now

if TYPE_CHECKING:
    from airflow.sdk import Context


def report_folder() -> Any:
    """Where reports go: an ``ObjectStoragePath`` for a URL (``s3://``, ``gs://``, ``file://`` ...; connection
    from ``$OMNI_ERP_RMS_REPORT_CONN_ID``), a local ``Path`` otherwise (``settings.rms_report_dir``)."""
    return _storage_path(settings.rms_report_dir())


def _storage_path(location: str) -> Any:
    if "://" in location:
        from airflow.sdk import ObjectStoragePath

        return ObjectStoragePath(location, conn_id=settings.rms_report_conn_id())
    from pathlib import Path

    return Path(location)


def write_report(folder: Any, name: str, content: str) -> str:
    """Write one report file and return where it went. A local file is written beside and renamed into
    place, so RMS users never see half a file; object stores put whole objects anyway."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    data = content.encode("utf-8")
    if hasattr(target, "replace") and not hasattr(target, "fs"):  # a local pathlib.Path
        partial = folder / f".{name}.partial"
        partial.write_bytes(data)
        partial.replace(target)
    else:
        target.write_bytes(data)
    return str(target)


class RmsReturnReportOperator(LedgerOperator):
    """Report returns booked without an ERP credit note to Increff RMS, once each (issue 12).

    1. ``settle``: records the credit notes RMS raised - pairs ``RET-1=CN-1, RET-2=CN-2`` or the path / URL of
       a CSV with columns ``returnOrderId,creditNoteNumber``; those returns become ``settled``.
    2. ``regenerate``: writes a report again, byte for byte, from the ledger (a lost or deleted file).
    3. Writes one new report of every booked return not reported yet (any credit-note path setting: a return
       booked while the path was ``rms`` has no ERP credit note, whatever the setting is now): one row per
       returned SKU, QC-pass units only; lines without a traceable forward invoice are left out and listed. The
       file, named by IST date and sequence, is written inside the ledger transaction that records which
       returns it carries, so a re-run never reports a return twice and a failed write reports none.
    4. Logs the returns waiting for their RMS credit note, with their age.

    The task fails (after doing the rest) when a settlement names an unknown, unreported or differently
    settled return, when a report cannot be regenerated, or when some return could not be read.

    The run's scope (``run_scope``): ``order_codes`` (forward or return order codes) and a backfill ``window``
    (on when the return was registered for RMS) restrict which waiting returns the new report carries. A dry
    run computes the same report and logs its name and CSV rows, and what it would settle, regenerate or mark
    not reportable; it writes no file and records nothing (its XCom says ``"dry_run": true``).

    :param settle: RMS credit notes to record (templated; empty: none).
    :param regenerate: file name of a report to write again (templated; empty: none).
    """

    template_fields: tuple[str, ...] = (*LedgerOperator.template_fields, "settle", "regenerate")
    ui_color = "#fdf0e6"

    def __init__(self, *, settle: str | None = None, regenerate: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settle = settle
        self.regenerate = regenerate

    def execute(self, context: Context) -> dict[str, Any]:
        problems: list[str] = []
        summary: dict[str, Any] = {"batch_id": self.batch_id, **({"dry_run": True} if self.scope.dry_run else {})}
        summary["would_settle" if self.scope.dry_run else "settled"] = self._settle(_param(self.settle), problems)
        if regenerate := _param(self.regenerate):
            summary["regenerated"] = self._regenerate(regenerate, problems)
        summary.update(self._report(problems))
        summary.update(self._log_waiting())
        if problems:
            raise AirflowFailException("RMS report: " + "; ".join(problems))
        return summary

    # --- settlement -------------------------------------------------------------------------------

    def _settle(self, value: str | None, problems: list[str]) -> int:
        if not value:
            return 0
        try:
            text = value if "=" in value or "\n" in value else _storage_path(value).read_text(encoding="utf-8")
            pairs = rules.parse_settlements(text)
        except (OSError, ValueError) as exc:
            problems.append(f"settle: {_error_text(exc)}")
            return 0
        settled = 0
        for code, number in pairs:
            result = self._would_settle(code, number) if self.scope.dry_run else self.ledger.settle_rms_return(code, number)
            if result in ("settled", "already_settled"):
                settled += result == "settled"
                dry = "DRY RUN would record: " if self.scope.dry_run else ""
                self.log.info("%sRMS credit note %s recorded for return %s (%s)", dry, number, code, result)
                continue
            known = self.ledger.get_rms_return(code)
            detail = {
                "unknown": "no return on the RMS path has this code",
                "not_reported": f"it is {known['state'] if known else '?'}, not reported to RMS yet",
                "conflict": f"it is settled with credit note {known['rms_credit_note_number'] if known else '?'} already",
            }[result]
            problems.append(f"settle {code}={number}: {detail}")
        return settled

    def _would_settle(self, code: str, number: str) -> str:
        """What ``Ledger.settle_rms_return`` would answer now (read only, for a dry run)."""
        from omni_erp.ledger.rms import RMS_SETTLED

        known = self.ledger.get_rms_return(code)
        if known is None:
            return "unknown"
        if known["state"] == RMS_SETTLED:
            return "already_settled" if known["rms_credit_note_number"] == number else "conflict"
        return "settled" if known["state"] == RMS_REPORTED else "not_reported"

    # --- regeneration -----------------------------------------------------------------------------

    def _regenerate(self, name: str, problems: list[str]) -> str | None:
        stored = self.ledger.get_rms_report(name.strip())
        if stored is None:
            problems.append(f"regenerate: no report named {name!r} in the ledger")
            return None
        if self.scope.dry_run:
            where = str(report_folder() / stored["file_name"])
            self.log.info("DRY RUN would write RMS report %s again (%d rows, %d units) to %s", name, stored["row_count"],
                          stored["unit_count"], where)
            return where
        where = write_report(report_folder(), stored["file_name"], stored["content"])
        self.ledger.mark_rms_report_rewritten(stored["file_name"])
        self.log.info("Regenerated RMS report %s (%d rows, %d units) at %s", name, stored["row_count"], stored["unit_count"], where)
        return where

    # --- the new report ---------------------------------------------------------------------------

    def _report(self, problems: list[str]) -> dict[str, Any]:
        ledger = self.ledger
        rows: list[dict[str, str]] = []
        carried: list[str] = []
        excluded: list[rules.ExcludedLine] = []
        not_reportable = 0
        dry, scope = self.scope.dry_run, self.scope
        if scope.selective:
            waiting_returns = ledger.select_rms_returns_to_report(
                RETURN_BOOKED, order_codes=scope.order_codes, window=scope.window
            )
        else:
            waiting_returns = ledger.rms_returns_to_report(RETURN_BOOKED)
        for waiting in waiting_returns:
            code = waiting["return_order_code"]
            try:
                result = rules.return_rows(self._facts(code))
            except Exception as exc:
                if not_about_the_item(exc):
                    raise
                self.log.exception("Return %s could not be read for the RMS report; it waits for the next run", code)
                problems.append(f"return {code}: {_error_text(exc)}")
                continue
            excluded.extend(result.excluded)
            if result.rows:
                rows.extend(result.rows)
                carried.append(code)
            else:
                reasons = "; ".join(sorted({line.reason for line in result.excluded})) or "no unit to credit"
                if dry:
                    self.log.info("DRY RUN would mark return %s not reportable: %s", code, reasons)
                else:
                    ledger.mark_rms_not_reportable(code, reasons)
                not_reportable += 1
        self._log_excluded(excluded)
        out: dict[str, Any] = {
            "file": None, "returns": len(carried), "rows": len(rows), "units": sum(int(r["quantity"]) for r in rows),
            "excluded_lines": len(excluded), "excluded_units": sum(line.quantity for line in excluded),
            "not_reportable": not_reportable,
        }
        if not rows:
            self.log.info("RMS report: no new return to report")
            return out
        today = now().astimezone(IST).date()
        content = rules.render_csv(rows)
        folder = report_folder()
        if dry:
            name = rules.report_file_name(today, ledger.next_rms_sequence(today.isoformat()))
            self.log.info(
                "DRY RUN would write RMS report %s to %s: %d return(s) (%s), %d row(s), %d unit(s):\n%s",
                name, folder / name, len(carried), ", ".join(carried), len(rows), out["units"], content,
            )
            return {**out, "would_write": name}
        try:
            with ledger.transaction():
                sequence = ledger.next_rms_sequence(today.isoformat())
                name = rules.report_file_name(today, sequence)
                ledger.record_rms_report(
                    file_name=name, report_date=today.isoformat(), sequence=sequence, location=str(folder / name),
                    row_count=len(rows), unit_count=out["units"], content=content, return_order_codes=carried,
                    batch_id=self.batch_id,
                )
                # Written inside the transaction: if the write fails nothing is marked reported.
                where = write_report(folder, name, content)
        except ConcurrentReportError as exc:
            problems.append(str(exc))
            return out
        self.log.info(
            "RMS report %s: %d return(s), %d row(s), %d unit(s) -> %s. Upload it in RMS (Invoice Solutions -> Credit Note).",
            name, len(carried), len(rows), out["units"], where,
        )
        return {**out, "file": name, "location": where}

    def _facts(self, code: str) -> rules.ReturnFacts:
        ledger = self.ledger
        stored = ledger.get_return_order(code)
        assert stored is not None, f"rms_return {code} without return_order"
        order = ledger.get_order(stored["order_code"])
        invoice = None
        if order and order.get("erp_invoice_number"):
            document = ledger.get_document(DOC_INVOICE, order["erp_invoice_number"])
            invoice = document["payload"] if document else None
        return rules.ReturnFacts(
            return_order_code=code,
            order_code=stored["order_code"],
            credit_lines=stored["lines"],
            return_posting=ledger.posting_payload(stored["message_id"]) if stored["message_id"] else None,
            forward_order=order,
            create_posting=ledger.posting_payload(order["create_message_id"]) if order and order.get("create_message_id") else None,
            forward_invoice=invoice,
        )

    def _log_excluded(self, excluded: list[rules.ExcludedLine]) -> None:
        if not excluded:
            return
        lines = "\n".join(
            f"  {line.return_order_code:<24} {line.order_code:<20} {line.sku:<24} {line.quantity:>5}  {line.reason}"
            for line in excluded
        )
        self.log.warning(
            "RMS report: %d line(s) left out, no traceable forward invoice (settle them offline with Ajio):\n"
            "  %-24s %-20s %-24s %5s  reason\n%s", len(excluded), "returnOrderId", "forwardOrderCode", "sku", "units", lines,
        )

    def _log_waiting(self) -> dict[str, Any]:
        waiting = list(iter_waiting(self.ledger.rms_returns(state=RMS_REPORTED), now()))
        if not waiting:
            self.log.info("RMS: no return waits for its RMS credit note")
            return {"waiting": 0}
        report_names = {r["id"]: r["file_name"] for r in self.ledger.rms_reports()}
        lines = "\n".join(
            f"  {row['return_order_code']:<24} {row['order_code']:<20} {report_names.get(row['report_id'], '-'):<48} {age:>8.1f}"
            for row, age in sorted(waiting, key=lambda pair: -pair[1])
        )
        self.log.info(
            "RMS: %d return(s) wait for their RMS credit note (settle with the run param rms_credit_notes):\n"
            "  %-24s %-20s %-48s %8s\n%s", len(waiting), "returnOrderId", "forwardOrderCode", "report", "age (h)", lines,
        )
        return {"waiting": len(waiting), "oldest_waiting_h": round(max(age for _, age in waiting), 2)}


def rms_waiting_rows(ledger: Any) -> list[dict[str, Any]]:
    """Returns reported to RMS still waiting for their credit note, oldest first, for the outcome table."""
    names = {r["id"]: r["file_name"] for r in ledger.rms_reports()}
    rows = [
        {"return_order_code": row["return_order_code"], "order_code": row["order_code"], "state": row["state"],
         "reported_at": row["reported_at"], "age_hours": round(age, 1), "report": names.get(row["report_id"])}
        for row, age in iter_waiting(ledger.rms_returns(state=RMS_REPORTED), now())
    ]
    return sorted(rows, key=lambda r: -r["age_hours"])


def _param(value: Any) -> str | None:
    """A templated param: None, "", "None" (an unset param rendered) all mean nothing."""
    text = "" if value is None else str(value).strip()
    return None if text in ("", "None") else text
