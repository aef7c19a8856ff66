"""``python -m omni_erp.sandbox``: run the ERP and Omni sandboxes in one process until SIGTERM or SIGINT.

``--erp`` picks which ERP the ERP port plays: the generic REST contract, ERPNext or TallyPrime."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from fastapi import FastAPI

from omni_erp.sandbox.erp import create_erp_sandbox
from omni_erp.sandbox.erpnext import create_erpnext_sandbox
from omni_erp.sandbox.omni import create_omni_sandbox
from omni_erp.sandbox.serve import serve_in_thread
from omni_erp.sandbox.tally import create_tally_sandbox

log = logging.getLogger("omni_erp.sandbox")

ERP_KINDS = ("generic", "erpnext", "tally")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m omni_erp.sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 inside a container)")
    parser.add_argument("--erp-port", type=int, default=8081, help="ERP sandbox port (0 = any free port)")
    parser.add_argument("--omni-port", type=int, default=8082, help="Omni sandbox port (0 = any free port)")
    parser.add_argument("--erp", choices=ERP_KINDS, default="generic", help="which ERP the ERP sandbox plays")
    parser.add_argument("--erp-token", default="erp-sandbox-token",
                        help="bearer token (generic) or API secret (erpnext) the ERP sandbox expects; unused by tally")
    parser.add_argument("--erp-login", default=None,
                        help="API key (erpnext) or loaded company (tally); the sandbox's default when omitted")
    parser.add_argument("--omni-user", default="omni-sandbox-user", help="authUsername the Omni sandbox expects")
    parser.add_argument("--omni-password", default="omni-sandbox-pass", help="authPassword the Omni sandbox expects")
    parser.add_argument("--invoice-delay-s", type=float, default=0.2, help="seconds until an e-invoice appears")
    parser.add_argument("--seed", type=int, default=0, help="seed of the injected-fault random source")
    parser.add_argument("--ready-file", type=Path, help='written as {"erp_url", "omni_url"} once both listen')
    return parser


def _erp_app(args: argparse.Namespace) -> FastAPI:
    """The ERP sandbox app of the kind ``--erp`` asks for."""
    common = {"invoice_delay_s": args.invoice_delay_s, "seed": args.seed}
    login = {} if args.erp_login is None else {"api_key": args.erp_login}
    if args.erp == "erpnext":
        return create_erpnext_sandbox(api_secret=args.erp_token, **login, **common)
    if args.erp == "tally":
        return create_tally_sandbox(**({} if args.erp_login is None else {"company": args.erp_login}), **common)
    return create_erp_sandbox(token=args.erp_token, **common)


def main(argv: Sequence[str] | None = None) -> int:
    """Start both sandboxes, write the ready file, and block until a stop signal."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    erp_app = _erp_app(args)
    omni_app = create_omni_sandbox(username=args.omni_user, password=args.omni_password, seed=args.seed)
    with serve_in_thread(erp_app, args.host, args.erp_port) as erp, serve_in_thread(
        omni_app, args.host, args.omni_port
    ) as omni:
        log.info("ERP sandbox on %s, Omni sandbox on %s", erp.url, omni.url)
        try:
            if args.ready_file:
                tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
                tmp.write_text(json.dumps({"erp_url": erp.url, "omni_url": omni.url}))
                os.replace(tmp, args.ready_file)  # readers never see a half-written file
            while not stop.wait(0.2):
                if not (erp.thread.is_alive() and omni.thread.is_alive()):
                    log.error("a sandbox server stopped unexpectedly")
                    return 1
        finally:
            if args.ready_file:
                args.ready_file.unlink(missing_ok=True)
    return 0

if __name__ == "__main__":
    sys.exit(main())
