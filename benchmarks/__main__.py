"""``make bench``: every benchmark's targets in one table and in ``bench/results.json``; exit 1 if one fails.

Each benchmark module has ``targets() -> list[dict]`` returning ``{"name", "measured", "target", "pass",
"unit"}`` rows, measured on this machine in this run against real servers on 127.0.0.1 (compare the
figures with each other - ratios - not with another machine's):

- ``parse``: DAG parse time per file (here);
- ``flows``: F1/F2 throughput against capped sandboxes, the naive baselines, F1's peak memory (flows.py);
- ``inbox``: the inbox under ``wrk`` against a bare endpoint, SQLite and PostgreSQL (inbox.py);
- ``latency``: posting -> ERP and e-invoice -> Omni with a real scheduler (latency.py).

``--only flows,inbox`` runs some of them; ``bench/results.json`` keeps the rows of the modules that did
not run, so the file always holds the latest figure of every target.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results.json"
WORK = Path(tempfile.mkdtemp(prefix="omni_erp_bench_"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(WORK / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
        "NO_PROXY": "127.0.0.1,localhost",
    }
)
MODULES = ("parse", "flows", "inbox", "latency")
PARSE_TARGET_MS = 100


def parse_targets(rounds: int = 5) -> list[dict[str, Any]]:
    """Median DagBag parse time per DAG file (what the dag-processor pays every cycle), < 100 ms each."""
    from airflow.dag_processing.dagbag import DagBag

    per_file: dict[str, list[float]] = {}
    folder: list[float] = []
    for _ in range(rounds):
        stats = DagBag(dag_folder=str(REPO / "dags")).dagbag_stats
        folder.append(sum(stat.duration.total_seconds() * 1000 for stat in stats))
        for stat in stats:
            per_file.setdefault(Path(stat.file).name, []).append(stat.duration.total_seconds() * 1000)
    rows = [
        {"name": f"parse {name}", "measured": round(statistics.median(ms), 1), "target": f"< {PARSE_TARGET_MS}",
         "pass": statistics.median(ms) < PARSE_TARGET_MS, "unit": "ms"}
        for name, ms in sorted(per_file.items())
    ]
    rows.append({"name": "parse: whole dags folder", "measured": round(statistics.median(folder), 1),
                 "target": "report", "pass": True, "unit": "ms"})
    return rows


def run_module(name: str) -> list[dict[str, Any]]:
    """The targets of one benchmark module; a module that crashes fails one target saying why."""
    started = time.monotonic()
    try:
        if name == "parse":
            rows = parse_targets()
        else:
            rows = importlib.import_module(f"benchmarks.{name}").targets()
    except Exception as exc:  # a broken benchmark is a failed target, not a missing one
        rows = [{"name": f"{name}: benchmark crashed", "measured": None, "target": "runs", "pass": False, "unit": "",
                 "detail": f"{type(exc).__name__}: {exc}"[:500]}]
    took = round(time.monotonic() - started, 1)
    return [{**row, "module": name, "bench_s": took} for row in rows]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory_kb = 0
    try:
        memory_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                             if line.startswith("MemTotal")))
    except (OSError, StopIteration, ValueError):
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gb": round(memory_kb / 1024 / 1024, 1),
            "python": platform.python_version(), "platform": platform.platform()}


def write_results(rows: list[dict[str, Any]], ran: list[str], path: Path = RESULTS) -> dict[str, Any]:
    """``bench/results.json``: this run's rows, plus the earlier rows of modules that did not run now."""
    kept: list[dict[str, Any]] = []
    if path.exists():
        try:
            kept = [r for r in json.loads(path.read_text()).get("targets", []) if r.get("module") not in ran]
        except (ValueError, AttributeError):
            kept = []
    document = {"machine": machine(), "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "modules_run": ran, "targets": kept + rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    return document


def table(rows: list[dict[str, Any]]) -> str:
    """The targets as a fixed-width table."""
    header = ("target", "measured", "unit", "goal", "")
    lines = [
        (r["name"], "-" if r["measured"] is None else f"{r['measured']:g}" if isinstance(r["measured"], float) else str(r["measured"]),
         r.get("unit", ""), r["target"], "PASS" if r["pass"] else "FAIL")
        for r in rows
    ]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines, strict=True)]
    out = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(MODULES),
                        help=f"comma-separated benchmarks to run (default all: {','.join(MODULES)})")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(MODULES))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    sys.path.insert(0, str(REPO))
    rows: list[dict[str, Any]] = []
    for name in chosen:
        print(f"== {name} ...", flush=True)
        rows += run_module(name)
    document = write_results(rows, chosen)
    print(table(document["targets"]))
    print(f"\n{RESULTS.relative_to(REPO)} written ({', '.join(chosen)} run now)")
    failed = [r["name"] for r in rows if not r["pass"]]
    if failed:
        print(f"{len(failed)} target(s) failed: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
