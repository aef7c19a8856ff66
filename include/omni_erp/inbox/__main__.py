"""Serve the inbox without Airflow's API server: ``python -m omni_erp.inbox --port 8780``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from omni_erp import settings
from omni_erp.inbox.app import URL_PREFIX, InboxSettings, build_standalone_app

log = logging.getLogger("omni_erp.inbox")


def _api_key(env_var: str | None) -> str | None:
    if env_var:
        return os.environ.get(env_var) or None
    from omni_erp.connections import get_connection

    conn = get_connection(settings.INBOX_CONN_ID)
    return (conn.password or None) if conn is not None else None


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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api_key = _api_key(args.api_key_env)
    if not api_key:
        source = f"environment variable {args.api_key_env}" if args.api_key_env else (
            f"connection {settings.INBOX_CONN_ID!r} (password), e.g. AIRFLOW_CONN_OMNI_INBOX"
        )
        print(f"omni_erp.inbox: no API key configured; set {source}", file=sys.stderr)
        return 2
    app = build_standalone_app(InboxSettings(api_key=api_key, ledger_url=args.ledger_url))
    log.info("serving the Omni inbox on http://%s:%d%s/postings", args.host, args.port, URL_PREFIX)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
