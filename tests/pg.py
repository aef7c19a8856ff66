"""The throwaway PostgreSQL cluster of the tests and benchmarks; it lives in the package so ``make chaos`` uses it too."""

from __future__ import annotations

from omni_erp.devtools.pg import PostgresCluster, find_pg_bin

__all__ = ["PostgresCluster", "find_pg_bin"]
