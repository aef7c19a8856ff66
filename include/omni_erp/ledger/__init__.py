"""The durable integration ledger: what happened to every posting, order, call and dead letter."""

from __future__ import annotations

from omni_erp.ledger.repo import ClaimedPosting, Ledger

__all__ = ["ClaimedPosting", "Ledger"]
