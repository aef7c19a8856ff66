"""SlaAlertOperator without Airflow's runner: no alert channel (the log is the alert), clearing, and bad thresholds."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import update

from omni_erp.ledger import Ledger
from omni_erp.ledger import tables as t
from omni_erp.operators.reconciliation import SlaAlertOperator
from omni_erp.rules.sla import DEAD_LETTERED


def _check(**kwargs) -> dict:
    return SlaAlertOperator(task_id="check_sla", batch_id="sla/test", **kwargs).execute(context={})


def test_without_an_alert_channel_the_log_line_is_the_alert_and_a_resolved_dead_letter_clears(ledger_path, monkeypatch, caplog):
    monkeypatch.delenv("AIRFLOW_CONN_OMNI_ERP_ALERTS", raising=False)
    caplog.set_level(logging.ERROR, logger="omni_erp.operators.reconciliation")
    ledger = Ledger.sqlite(ledger_path)
    ledger.record_dead_letter(stage="inbox", reason="body is not JSON", message_id="77")

    first = _check()
    second = _check()

    assert first["alerted"] == {DEAD_LETTERED: 1} and second["alerted"] == {}  # logged once, not on every run
    assert second["still_open"] == {DEAD_LETTERED: 1}
    assert caplog.text.count("body is not JSON") == 1
    with ledger.engine.begin() as conn:  # a person marks it handled
        conn.execute(update(t.dead_letter).values(resolved_at=t.dead_letter.c.created_at))
    assert _check()["cleared"] == {DEAD_LETTERED: 1}


@pytest.mark.parametrize("bad", [{"einvoice_upload_minutes": "soon"}, {"irn_cancel_warning_hours": 30},
                                 {"irp_limit_warning_days": 0}])
def test_a_bad_threshold_is_a_clear_error_naming_it(ledger_path, bad):
    with pytest.raises(ValueError, match="must"):
        _check(**bad)
