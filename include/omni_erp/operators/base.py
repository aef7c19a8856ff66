"""What every omni_erp operator shares: the ledger, the batch id, and recording HTTP attempts."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from omni_erp import settings

if TYPE_CHECKING:
    from omni_erp.hooks.base import Attempt
    from omni_erp.ledger import Ledger

# One batch per DAG run: a retried task re-reads the same batch instead of claiming a new one.
DEFAULT_BATCH_ID = "{{ dag.dag_id }}/{{ run_id }}"


class LedgerOperator(BaseOperator):
    """Base for operators that work on one ledger batch.

    :param batch_id: ledger batch this run works on (templated); defaults to ``<dag_id>/<run_id>``.
    :param ledger_conn_id: connection of the ledger (sqlite or postgres); embedded SQLite when undefined.
    """

    template_fields: tuple[str, ...] = ("batch_id",)
    ui_color = "#e8f0fe"

    def __init__(self, *, batch_id: str = DEFAULT_BATCH_ID, ledger_conn_id: str = settings.LEDGER_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batch_id = batch_id
        self.ledger_conn_id = ledger_conn_id

    @cached_property
    def ledger(self) -> Ledger:
        # Imported here, not at module level: DAG files import operators at parse time.
        from omni_erp.ledger import Ledger

        return Ledger.from_conn_id(self.ledger_conn_id)

    def record_attempt(self, attempt: Attempt) -> None:
        """Observer handed to hooks: every HTTP attempt lands in ``outbound_call`` (no bodies, no secrets)."""
        self.ledger.record_call(
            system=attempt.system,
            operation=attempt.operation,
            endpoint=attempt.endpoint.split("?")[0],
            attempt=attempt.attempt,
            status_code=attempt.status_code,
            latency_ms=attempt.latency_ms,
            outcome=attempt.outcome,
            idempotency_key=attempt.idempotency_key,
            error=attempt.error,
            batch_id=self.batch_id,
        )
