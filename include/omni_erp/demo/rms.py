"""``make demo CREDIT_NOTES=rms``: the RMS credit-note path's part of the reconciliation (issue 12).

The report files on disk are checked against the return postings Omni sent, computed here on their own:
one row per returned SKU with exactly the units that passed QC, no return in two files, the files the
ledger recorded, and no credit note of a return raised by the ERP or uploaded to Omni.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from omni_erp.rules.rms import read_report


def expected_units(return_postings: list[dict[str, Any]]) -> tuple[Counter[tuple[str, str]], Counter[str]]:
    """QC-pass units per (returnOrderCode, SKU) the report must carry, and the units it must leave out by reason."""
    passed: Counter[tuple[str, str]] = Counter()
    left_out: Counter[str] = Counter()
    for posting in return_postings:
        for item in posting["items"]:
            qc = (item.get("qcStatus") or "").upper()
            if qc == "PASS" and not item.get("isExcess"):
                passed[(posting["returnOrderCode"], item["channelSkuCode"])] += 1
            else:
                left_out["QC FAIL" if qc == "FAIL" else "no QC result (missing)" if not qc else f"QC {qc}"] += 1
    return passed, left_out


def reconcile_rms(
    return_postings: list[dict[str, Any]], ledger: Any, report_dir: Path, erp: dict[str, Any], omni: dict[str, Any]
) -> tuple[list[tuple[str, Any]], list[tuple[str, bool]]]:
    """The RMS section's rows and its invariants."""
    passed, left_out = expected_units(return_postings)
    texts = {p.name: p.read_bytes().decode("utf-8") for p in sorted(report_dir.glob("*.csv"))}  # CRLF kept
    files = {name: read_report(text) for name, text in texts.items()}
    reports = {r["file_name"]: r for r in ledger.rms_reports()}
    reported: Counter[tuple[str, str]] = Counter()
    files_of_return: dict[str, set[str]] = {}
    rows = 0
    for name, file_rows in files.items():
        for row in file_rows:
            rows += 1
            reported[(row["returnOrderId"], row["clientSku"])] += int(row["quantity"])
            files_of_return.setdefault(row["returnOrderId"], set()).add(name)
    rms_returns = ledger.rms_returns()
    states = Counter(r["state"] for r in rms_returns)
    return_codes = {p["returnOrderCode"] for p in return_postings}
    erp_notes_for_returns = [n for n in erp["credit_notes"] if n.get("returnOrderCode") in return_codes]
    omni_notes_for_returns = [d for d in omni["credit_notes"] if d["body"].get("returnOrderId") in return_codes]
    rows_per_sku = Counter((r["returnOrderId"], r["clientSku"]) for f in files.values() for r in f)

    section = [
        ("return postings (customer returns and RTOs)", len(return_postings)),
        ("returns booked in the ERP without an e-credit note", len(rms_returns)),
        ("report files written", len(files)),
        ("returns reported to RMS", len(files_of_return)),
        ("rows reported (one per returned SKU)", rows),
        ("units reported (QC PASS)", sum(reported.values())),
        *[(f"units left out: {reason}", n) for reason, n in sorted(left_out.items())],
        ("returns waiting for their RMS credit note", states["reported_to_rms"]),
        ("returns settled with an RMS credit note", states["settled"]),
    ]
    checks = [
        ("RMS report = QC-pass units per return and SKU", reported == passed),
        ("RMS report: one row per returned SKU", all(n == 1 for n in rows_per_sku.values())),
        ("RMS report: no return in two files", all(len(names) == 1 for names in files_of_return.values())),
        ("RMS report files = ledger reports (content byte for byte)",
         set(files) == set(reports)
         and all(texts[name] == reports[name]["content"] for name in files)),
        ("RMS path: no credit note of a return raised by the ERP or uploaded to Omni",
         not erp_notes_for_returns and not omni_notes_for_returns),
    ]
    return section, checks
