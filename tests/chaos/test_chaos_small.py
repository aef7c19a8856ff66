"""``make chaos`` in small: 80 orders through all five flows while the ERP, Omni, the ledger and a task process fail.

The very scenario ``python -m omni_erp.chaos`` runs (real PostgreSQL, real sandboxes and inbox over HTTP, the
DAGs in a separate Airflow task process), at the size ``ChaosSettings.small`` gives: one SIGKILL - while the
ERP holds the answer to a booking it committed - and a 3 s PostgreSQL outage while Omni pushes and F1 books.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from omni_erp.chaos.scenario import KILL_AFTER_ERP_COMMIT, ChaosSettings, run_chaos

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


@pytest.fixture(scope="module")
def small_chaos(tmp_path_factory: pytest.TempPathFactory, airflow_db: None):
    """One small chaos run, shared by the tests below (it takes about a minute and a half)."""
    # The task processes start from a copy of the session's metadata DB instead of building their own.
    session_db = Path(os.environ["AIRFLOW_HOME"]) / "airflow.db"
    settings = ChaosSettings.small(tmp_path_factory.mktemp("chaos"))
    report = run_chaos(settings, REPO / "dags", airflow_db=session_db)
    print(report.render())
    return report


def _figures(report) -> dict[str, object]:
    return {figure.label.strip(): figure for _, figures in report.sections for figure in figures}


def test_nothing_is_lost_doubled_or_out_of_step(small_chaos) -> None:
    failed = [f"{f.label.strip()} = {f.value} ({f.detail})" for f in small_chaos.zero_checks if f.failed]

    assert failed == []
    assert {f.label.strip() for f in small_chaos.zero_checks} >= {
        "postings acknowledged (200) by the inbox but not stored",
        "postings neither done/dead/ignored nor pending with a reason",
        "duplicate ERP documents",
        "duplicate Omni documents (a second, different body for one number)",
        "ledger / ERP / Omni one-to-one mismatches",
        "planned faults that did not happen",  # every kind of fault was injected, the kill landed where meant
    }


def test_the_killed_booking_was_recovered_from_its_idempotency_key(small_chaos) -> None:
    figures = _figures(small_chaos)
    [kill] = [f for label, f in figures.items() if label.startswith(f"{KILL_AFTER_ERP_COMMIT}:")]

    assert kill.value == "confirmed"  # the ERP held the booking, the ledger had not recorded it
    # The retried run sent the same key; the ERP answered with the booking it had, and no second order exists.
    assert figures["ERP writes answered from an idempotency key (replays)"].value >= 1
    assert figures["duplicate ERP documents"].value == 0


def test_the_outage_reached_the_inbox_as_5xx_and_every_acknowledged_posting_was_stored(small_chaos) -> None:
    figures = _figures(small_chaos)
    answers = dict(part.split(": ") for part in figures["inbox answers to Omni's pushes"].value.split(", "))

    assert int(answers.get("503", 0)) > 0
    assert figures["postings acknowledged (200) by the inbox but not stored"].value == 0
