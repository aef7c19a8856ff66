"""Issue 10 item 9: the run's outcome table shows the whole error text and one blank for anything missing."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from omni_erp.ledger import Ledger
from omni_erp.operators.report import BLANK, LedgerBatchReportOperator, format_table
from omni_erp.states import DONE

LONG_ERROR = (
    "RemoteRejectedError: ERP refused the sales order: VALIDATION_ERROR: line 2 SKU 460491724011 is not in the item "
    "master of company 'Seller Retail Pvt Ltd'; create the item or fix the mapping, then re-trigger the run"
)


def _report_lines(capsys, ledger: Ledger, batch_id: str) -> list[str]:
    """The outcome table as the task log shows it: its title line, the header and one line per posting."""
    capsys.readouterr()
    LedgerBatchReportOperator(task_id="report", batch_id=batch_id, fail_on_unfinished=False).execute(context={})
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if f"Outcome of batch {batch_id}" in line)
    return lines[start : start + 3]


def _posting(ledger: Ledger, batch_id: str, message_id: str, order_code: str) -> None:
    payload = {"messageId": message_id, "orderCode": order_code}
    ledger.record_posting(
        message_id=message_id, event_type="OUTWARD_ORDER_CREATE", business_key=order_code, order_code=order_code,
        payload=payload,
    )
    ledger.claim_postings(event_types=["OUTWARD_ORDER_CREATE"], batch_id=batch_id)


def test_the_outcome_table_prints_the_full_error_and_the_same_blank_for_a_missing_id_in_every_run(capsys, ledger_path):
    ledger = Ledger.sqlite(ledger_path)
    # Run 1: one posting failed with a long error and has no ERP order; run 2: the same kind of posting alone.
    _posting(ledger, "b/1", "1", "FN0000000001")
    ledger.finish_posting("1", outcome="rejected_by_erp", error=LONG_ERROR, batch_id="b/1")
    _posting(ledger, "b/2", "2", "FN0000000002")
    ledger.finish_posting("2", outcome="cancelled_before_booking", batch_id="b/2")

    first = _report_lines(capsys, ledger, "b/1")
    second = _report_lines(capsys, ledger, "b/2")

    assert len(LONG_ERROR) > 80
    header = first[1].split()
    assert header[-1] == "last_error" and "erp_sales_order_id" in header
    assert "FN0000000001" in first[2] and LONG_ERROR in first[2]  # whole, not cut at 80 characters
    for lines in (first, second):
        cells = lines[2].split()
        # the missing ERP order id is the same mark in both runs; NaN and None never appear
        assert cells[header.index("erp_sales_order_id")] == BLANK
        assert "NaN" not in lines[2] and "None" not in lines[2]
    assert second[2].split()[len(header) - 1] == BLANK  # no error: the blank, not an empty cell
    assert ledger.postings()[1]["state"] == DONE


cell_text = st.one_of(st.none(), st.just(""), st.floats(allow_nan=True), st.integers(), st.text(max_size=120))


@settings(max_examples=150, deadline=None)
@example(rows=[{"id": None, "state": " ", "error": " "}])  # all-space values are blanks, not vanishing padding
@given(st.lists(st.fixed_dictionaries({"id": cell_text, "state": cell_text, "error": cell_text}), min_size=1, max_size=8))
def test_format_table_gives_one_line_per_row_and_the_last_column_whole(rows):
    table = format_table(rows, ["id", "state", "error"]).splitlines()

    assert len(table) == len(rows) + 1
    for row, line in zip(rows, table[1:], strict=True):
        assert line.endswith(_shown(row["error"]).rstrip())
    # the first column is padded to its widest value, so the next one starts at the same place on every line
    first_cells = ["id", *(_shown(row["id"]) for row in rows)]
    width = max(len(cell) for cell in first_cells)
    for cell, line in zip(first_cells, table, strict=True):
        assert line.startswith(cell.ljust(width) + "  ")


def _shown(value) -> str:
    if value is None or value != value:
        return BLANK
    text = "".join(c if c.isprintable() else " " for c in str(value))
    return text if text.strip() else BLANK
