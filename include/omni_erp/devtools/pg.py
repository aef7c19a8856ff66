"""A throwaway PostgreSQL cluster for tests, benchmarks and ``make chaos`` (the machine's initdb/pg_ctl).

PostgreSQL refuses to run as root, so when we are root the server runs as the ``postgres`` system
user (present wherever the Debian package is installed, which ``.ci/run`` ensures).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from omni_erp.sandbox.serve import free_port


def find_pg_bin() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl`` (``$PG_BIN`` first, then the usual places)."""
    candidates = []
    if os.environ.get("PG_BIN"):
        candidates.append(os.environ["PG_BIN"])
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    which = shutil.which("pg_ctl")
    if which:
        candidates.append(str(Path(which).resolve().parent))
    for candidate in candidates:
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl) not found; run .ci/run or install postgresql")


class PostgresCluster:
    """``with PostgresCluster() as pg: pg.url`` - initdb in a temp dir, start on a free loopback port, stop and delete.

    Between start and stop the server can be taken down and brought back on the same port with its data
    (:meth:`stop_server`, :meth:`start_server`), as an outage of the database would.
    """

    def __init__(self) -> None:
        self.bin = find_pg_bin()
        self.root = Path(tempfile.mkdtemp(prefix="omni_erp_pg_"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_user = "postgres" if os.geteuid() == 0 else None
        self.url = f"postgresql+psycopg://omni@127.0.0.1:{self.port}/omni"

    def _run(self, *args: str | Path) -> None:
        cmd = [str(a) for a in args]
        if self.as_user:
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def start(self) -> PostgresCluster:
        """Create the cluster and its ``omni`` database, and start the server."""
        if self.as_user:
            shutil.chown(self.root, user=self.as_user)
            os.chmod(self.root, 0o700)
        self._run(self.bin / "initdb", "-D", self.data, "-U", "omni", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.start_server()
        self._run(self.bin / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "omni", "omni")
        return self

    def start_server(self) -> None:
        """Start the server on the cluster's port and wait until it accepts connections."""
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off -c max_connections=50"
        self._run(self.bin / "pg_ctl", "-D", self.data, "-o", opts, "-l", self.root / "pg.log", "-w", "-t", "60", "start")

    def stop_server(self) -> None:
        """Stop the server at once, keeping the data (open connections are cut, as in a crash)."""
        self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        """Stop the server and delete the cluster."""
        try:
            self.stop_server()
        except subprocess.CalledProcessError:
            pass  # already stopped (an outage left it down); the data goes anyway
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
