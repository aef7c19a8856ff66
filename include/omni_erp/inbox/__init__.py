"""The HTTP inbox that receives Omni's postings (served by the Airflow plugin or standalone)."""

from __future__ import annotations

from omni_erp.inbox.app import URL_PREFIX, InboxSettings, build_standalone_app, create_inbox_app

__all__ = ["URL_PREFIX", "InboxSettings", "build_standalone_app", "create_inbox_app"]
