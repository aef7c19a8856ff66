"""``python -m omni_erp.chaos``: run the chaos scenario (issue 7) and print the reconciliation table.

Starts a throwaway PostgreSQL cluster for the ledger, the ERP and Omni sandboxes and the standalone
inbox on 127.0.0.1, and two Airflow task processes ("lanes") that run the five DAGs. While Omni
pushes at least 2,000 orders through every life-cycle path, the sandboxes fail (5xx, timeouts after
the work, resets, 429, hangs before and after storing), task processes are killed with SIGKILL, and
PostgreSQL is stopped and restarted. Then the faults stop and the DAGs run until nothing changes.
Exits 1 when any figure that must be zero is not (postings lost, duplicate ERP or Omni documents,
ledger / ERP / Omni not one to one) or a planned fault did not happen. Writes only under --workdir
(default var/chaos) and a temp directory for PostgreSQL; stops everything it started.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omni_erp.chaos.scenario import ChaosSettings, run_chaos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omni_erp.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=2000, help="Ajio orders to generate (at least 50)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--pg-outage-s", type=float, default=20.0, help="seconds PostgreSQL stays down (0: no outage)")
    parser.add_argument("--small", action="store_true", help="the make-test size: 80 orders, one SIGKILL, a 3 s outage")
    parser.add_argument("--workdir", type=Path, default=Path("var/chaos"))
    args = parser.parse_args(argv)

    dags = Path("dags").resolve()
    if not (dags / "omni_order_posting.py").exists():
        raise SystemExit("chaos: run from the repository root (dags/ not found)")
    if args.small:
        settings = ChaosSettings.small(args.workdir, seed=args.seed)
    else:
        settings = ChaosSettings(orders=args.orders, seed=args.seed, workdir=args.workdir, pg_outage_s=args.pg_outage_s)
    report = run_chaos(settings, dags)
    print(report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
