"""Seller ERP <-> Increff Omni integration for Ajio B2B orders (Airflow 3.3 DAG package).

Importing this package must stay cheap: DAG files import it at parse time.
"""

from __future__ import annotations

__version__ = "0.1.0"
