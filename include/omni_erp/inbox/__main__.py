"""Serve the inbox without Airflow's API server: ``python -m omni_erp.inbox --port 8780``.

Credentials come from connection ``omni_inbox`` (password = static key; extras = Increff's dynamic
flow, see ``omni_erp.inbox.credentials``), re-read every minute; ``--api-key-env`` takes the static key
from an environment variable instead. The ledger is ``--ledger-url``, else connection
``omni_erp_ledger``, re-read every few seconds. It refuses to start when no credential is configured
or the ledger configuration is unusable.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from omni_erp import settings
from omni_erp.inbox.app import URL_PREFIX, InboxSettings, build_standalone_app
from omni_erp.inbox.auth import ConnectionAuthSource, InboxAuth

log = logging.getLogger("omni_erp.inbox")


def _api_key(env_var: str | None) -> str | None:
    """The static key: from ``env_var`` when given, else the ``omni_inbox`` connection's password."""
    if env_var:
        return os.environ.get(env_var) or None
    return ConnectionAuthSource(settings.INBOX_CONN_ID).api_key()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m omni_erp.inbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8780)
    parser.add_argument("--ledger-url", help=f"SQLAlchemy URL of the ledger (default: connection {settings.LEDGER_CONN_ID!r})")
    parser.add_argument(
        "--api-key-env",
        metavar="VAR",
        help=f"environment variable holding the API key (default: password of connection {settings.INBOX_CONN_ID!r})",
    )
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--workers", type=int, default=1, help="server processes (each with its own group-committing writer; default 1)"
    )
    return parser.parse_args(argv)


def _startup_problem(args: argparse.Namespace, credentials: ConnectionAuthSource) -> str | None:
    """Why the inbox must not start, or None; logs the embedded-ledger WARNING when that is what it will use."""
    from omni_erp.ledger.engine import LedgerConfigError, locate_ledger, warn_embedded

    try:
        from_connection = credentials.current()
    except ValueError as exc:
        return f"connection {settings.INBOX_CONN_ID!r}: {exc}"
    static_key = (os.environ.get(args.api_key_env) or None) if args.api_key_env else from_connection.api_key
    if not InboxAuth(api_key=static_key, dynamic=from_connection.dynamic).configured:
        source = f"environment variable {args.api_key_env}" if args.api_key_env else (
            f"connection {settings.INBOX_CONN_ID!r} (password), e.g. AIRFLOW_CONN_OMNI_INBOX"
        )
        return f"no API key configured; set {source}"
    if not args.ledger_url:
        try:
            location = locate_ledger(settings.LEDGER_CONN_ID)
        except LedgerConfigError as exc:
            return str(exc)
        if location.embedded:
            warn_embedded(location)
    return None


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _hold_log_level(args.log_level)
    credentials = ConnectionAuthSource(settings.INBOX_CONN_ID)
    problem = _startup_problem(args, credentials)
    if problem:
        print(f"omni_erp.inbox: {problem}", file=sys.stderr)
        return 2
    log.info("serving the Omni inbox on http://%s:%d%s/postings", args.host, args.port, URL_PREFIX)
    if args.workers > 1:
        # uvicorn starts each worker process from an import string; the worker rebuilds the settings from this.
        os.environ[_WORKER_ARGS_ENV] = json.dumps(
            {"ledger_url": args.ledger_url, "api_key_env": args.api_key_env, "log_level": args.log_level}
        )
        uvicorn.run(
            "omni_erp.inbox.__main__:worker_app",
            factory=True,
            workers=args.workers,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=False,  # the inbox logs each posting itself, with its outcome
        )
    else:
        uvicorn.run(
            build_standalone_app(_settings(args.ledger_url, args.api_key_env, credentials)),
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=False,
        )
    return 0


_WORKER_ARGS_ENV = "OMNI_ERP_INBOX_WORKER_ARGS"


def _hold_log_level(level: str) -> None:
    """Apply ``--log-level`` to the package's loggers, so it holds after Airflow configures logging.

    Importing Airflow (the connection lookups) replaces the root logger's configuration with its own
    (``[logging] logging_level``), which silently undid ``basicConfig``'s level; Airflow leaves the
    ``omni_erp`` logger's own level alone.
    """
    logging.getLogger("omni_erp").setLevel(level.upper())


def _settings(ledger_url: str | None, api_key_env: str | None, credentials: ConnectionAuthSource) -> InboxSettings:
    return InboxSettings(
        api_key=(lambda: os.environ.get(api_key_env) or None) if api_key_env else credentials.api_key,
        dynamic_credentials=credentials.dynamic_credentials,
        ledger_url=ledger_url,
    )


def worker_app() -> Any:
    """The app of one ``--workers`` process (uvicorn's factory), configured as the parent was."""
    worker_args = json.loads(os.environ[_WORKER_ARGS_ENV])
    _hold_log_level(worker_args.get("log_level", "info"))
    credentials = ConnectionAuthSource(settings.INBOX_CONN_ID)
    return build_standalone_app(_settings(worker_args["ledger_url"], worker_args["api_key_env"], credentials))


if __name__ == "__main__":
    sys.exit(main())
