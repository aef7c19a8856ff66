"""What every omni_erp operator shares: the ledger, the batch id, and recording HTTP attempts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.sdk import BaseOperator

from omni_erp import settings
from omni_erp.exceptions import RemoteUnavailableError

if TYPE_CHECKING:
    from omni_erp.hooks.base import Attempt
    from omni_erp.hooks.erp import ErpAdapter
    from omni_erp.ledger import Ledger

Item = TypeVar("Item")

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

    def process_each(
        self,
        items: Iterable[Item],
        handle: Callable[[Item], str],
        *,
        defer: Callable[[Item, str], None],
        max_consecutive_unavailable: int = 3,
    ) -> dict[str, Any]:
        """Handle each item, count outcomes, and survive an outage without losing anything.

        ``handle`` returns the item's outcome. When it raises ``RemoteUnavailableError`` (the hook already
        retried), ``defer`` gives the item back for the next run; after ``max_consecutive_unavailable``
        such failures in a row the remaining items are deferred without calling the remote system again.
        Returns the XCom summary; raises ``AirflowFailException`` after the loop when anything was
        deferred by an outage, so the run shows red while nothing is lost. (``handle`` may also return
        "deferred" for business reasons, e.g. no e-invoice yet; the report task makes those visible.)
        """
        from airflow.sdk.exceptions import AirflowFailException

        outcomes: Counter[str] = Counter()
        unavailable_in_a_row = outages = 0
        last_outage = ""
        for item in items:
            if unavailable_in_a_row >= max_consecutive_unavailable:
                defer(item, f"not attempted, remote system unavailable: {last_outage}")
                outcomes["deferred"] += 1
                outages += 1
                continue
            try:
                outcome = handle(item)
            except RemoteUnavailableError as exc:
                unavailable_in_a_row += 1
                outages += 1
                last_outage = str(exc)
                defer(item, last_outage)
                self.log.warning("Deferred to the next run: %s", exc)
                outcome = "deferred"
            else:
                unavailable_in_a_row = 0
            outcomes[outcome] += 1
        summary = {"batch_id": self.batch_id, **{k: outcomes[k] for k in sorted(outcomes)}}
        self.log.info("%s: %s", self.task_id, summary)
        if outages:
            raise AirflowFailException(
                f"{outages} item(s) deferred because a remote system is unavailable ({last_outage}); "
                f"they wait for the next run. Summary: {summary}"
            )
        return summary


class ErpOperator(LedgerOperator):
    """Base for operators that call the seller's ERP through the ``ErpAdapter`` interface.

    :param erp_conn_id: connection of the ERP.
    :param max_consecutive_unavailable: stop calling an ERP that failed this many items in a row.
    """

    def __init__(
        self, *, erp_conn_id: str = settings.ERP_CONN_ID, max_consecutive_unavailable: int = 3, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.erp_conn_id = erp_conn_id
        self.max_consecutive_unavailable = max_consecutive_unavailable

    @cached_property
    def erp(self) -> ErpAdapter:
        from omni_erp.hooks.erp import ErpHook

        return ErpHook(self.erp_conn_id, on_attempt=self.record_attempt)
