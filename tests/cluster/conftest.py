"""The ``cluster`` marker: tests that start a real CeleryExecutor stack (minutes), run by ``pytest -m cluster``.

``make test`` skips them so the inner loop stays fast; ``.ci/run`` runs them as a second step.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cluster: starts PostgreSQL, Redis and Airflow with Celery workers (run with `pytest -m cluster`)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "cluster" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="a CeleryExecutor stack takes minutes: `pytest -m cluster tests/cluster` (.ci/run runs it)")
    for item in items:
        if item.get_closest_marker("cluster"):
            item.add_marker(skip)
