"""A CeleryExecutor deployment on one machine: PostgreSQL, Redis, the sandboxes and Airflow with Celery workers.

    with CeleryCluster(work, workers=2) as cluster:
        cluster.push(postings)                         # through the inbox in the API server
        run = cluster.run_dag("omni_order_posting", {"limit": 500, "shards": 2})
        cluster.kill_worker(2)                         # SIGKILL a worker and its task processes

PostgreSQL is a throwaway cluster (``omni_erp.devtools.pg.PostgresCluster``) holding Airflow's metadata DB,
the Celery result backend and the ledger (its own database); Redis is the machine's ``redis-server`` on
127.0.0.1 and a free port, with a random password and no persistence. The Airflow processes are
``omni_erp.devtools.airflow_stack.AirflowStack`` with the CeleryExecutor and ``airflow celery worker``
processes as extra components, with the settings the compose file carries (``omni_erp.cluster.config``).
Everything listens on 127.0.0.1; everything started is stopped on exit, nothing else.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from omni_erp.cluster.config import CELERY_APP, LEDGER_DATABASE, SHARED_AIRFLOW_SETTINGS
from omni_erp.sandbox.serve import free_port

FLOWS = ("omni_order_posting", "erp_invoice_upload", "omni_order_cancellation", "omni_order_completion",
         "omni_return_credit_note")
ERP_TOKEN = secrets.token_urlsafe(16)
OMNI_USER, OMNI_PASSWORD = "cluster-omni-user", secrets.token_urlsafe(16)
INBOX_KEY = secrets.token_urlsafe(24)
# Production policy shape with short waits, so a run over a few thousand orders is not dominated by backoff.
HTTP_POLICY = {"OMNI_ERP_HTTP_BASE_DELAY_S": "0.2", "OMNI_ERP_HTTP_MAX_DELAY_S": "2", "OMNI_ERP_HTTP_READ_TIMEOUT_S": "5"}
# A task whose worker died is noticed after this many seconds without a heartbeat (Airflow's default is 300),
# then retried after the DAG's retry_delay; make cluster kills a worker and waits for exactly that.
HEARTBEAT_TIMEOUT_S = 20


def redis_server_binary() -> str:
    """``redis-server`` from the system packages; installed with apt-get when missing and we are root.

    :raises SystemExit: when it is missing and cannot be installed here.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("[cluster] redis-server missing: installing it from the system package manager", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=True, env=env, timeout=600,
                       stdout=subprocess.DEVNULL)
        found = shutil.which("redis-server")
        if found:
            return found
    raise SystemExit("cluster: redis-server not found; install the system package (apt-get install redis-server) or run .ci/run")


class RedisServer:
    """``redis-server`` on 127.0.0.1 and a free port, password-protected, nothing written to disk; the broker."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.password = secrets.token_urlsafe(24)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def __enter__(self) -> RedisServer:
        self.work.mkdir(parents=True, exist_ok=True)
        log = open(self.work / "redis.log", "wb")  # noqa: SIM115 - closed in __exit__
        self._log = log
        # The password goes in through stdin as a config file, so it never shows in the process list.
        self.process = subprocess.Popen(
            [redis_server_binary(), "-"], stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        config = (f"port {self.port}\nbind 127.0.0.1\nrequirepass {self.password}\nsave \"\"\nappendonly no\n"
                  f"dir {self.work}\nprotected-mode yes\n")
        assert self.process.stdin is not None
        self.process.stdin.write(config.encode())
        self.process.stdin.close()
        _wait_until(self._ping, "redis-server", 30, self.work / "redis.log")
        return self

    def _ping(self) -> bool:
        import redis

        if self.process is not None and self.process.poll() is not None:
            raise SystemExit(f"cluster: redis-server exited with {self.process.returncode}; see {self.work / 'redis.log'}")
        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()


class CeleryCluster:
    """Start the whole stack (``with``), give the driver its controls, stop everything on exit.

    :param work: directory for logs, the Airflow home and Redis (emptied first).
    :param workers: how many ``airflow celery worker`` processes.
    :param worker_concurrency: task slots per worker (default: the deployment's, ``SHARED_AIRFLOW_SETTINGS``).
    :param seed: seed of the sandboxes' fault draws.
    :param invoice_delay_s: seconds the ERP sandbox takes to e-invoice an order.
    """

    def __init__(
        self,
        work: Path,
        *,
        workers: int = 2,
        worker_concurrency: int | None = None,
        seed: int = 0,
        invoice_delay_s: float = 0.2,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.work = work.resolve()
        self.workers = workers
        self.worker_concurrency = worker_concurrency or int(SHARED_AIRFLOW_SETTINGS["AIRFLOW__CELERY__WORKER_CONCURRENCY"])
        self.seed = seed
        self.invoice_delay_s = invoice_delay_s
        self.erp_port, self.omni_port = free_port(), free_port()
        self.erp_url = f"http://127.0.0.1:{self.erp_port}"
        self.omni_url = f"http://127.0.0.1:{self.omni_port}"
        self._exit = ExitStack()
        self.stack: Any = None
        self.ledger_url = ""
        self.killed: set[str] = set()

    # --- life cycle -------------------------------------------------------------------------

    def __enter__(self) -> CeleryCluster:
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        try:
            self._start()
        except BaseException:
            self._exit.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit.close()

    def _start(self) -> None:
        from omni_erp.cluster.config import ensure_database
        from omni_erp.devtools.pg import PostgresCluster

        step = _Steps()
        pg = self._exit.enter_context(PostgresCluster())
        ensure_database(pg.url, LEDGER_DATABASE)
        step.done("PostgreSQL (metadata DB, result backend, ledger)")
        redis = self._exit.enter_context(RedisServer(self.work / "redis"))
        step.done(f"Redis on 127.0.0.1:{redis.port}")
        self._start_sandboxes()
        step.done("ERP and Omni sandboxes")

        self.stack = self.airflow_stack(pg.url, redis.url)
        self._exit.enter_context(self.stack)
        step.done(f"Airflow: api-server, scheduler, dag-processor, triggerer, {self.workers} Celery worker(s)")
        self.stack.wait_for_dags(FLOWS)
        step.done("DAGs parsed")

    def airflow_stack(self, metadata_url: str, broker_url: str) -> Any:
        """The Airflow processes (not started): the CeleryExecutor, the deployment's shared settings and connections
        (the ones docker-compose.yaml carries; tests/cluster/test_compose.py compares them), the Celery workers.

        :param metadata_url: SQLAlchemy URL of Airflow's metadata DB; the ledger is database ``omni_erp`` beside it.
        :param broker_url: the Redis broker.
        """
        from omni_erp.cluster.config import connection_env
        from omni_erp.devtools.airflow_stack import AirflowStack, Component

        self.ledger_url = metadata_url.rsplit("/", 1)[0] + f"/{LEDGER_DATABASE}"
        connections = {
            "omni_erp_ledger": _postgres_connection(self.ledger_url),
            "erp_default": {"conn_type": "http", "host": self.erp_url, "password": ERP_TOKEN},
            "omni_default": {"conn_type": "http", "host": self.omni_url, "login": OMNI_USER, "password": OMNI_PASSWORD},
            "omni_inbox": {"conn_type": "generic", "password": INBOX_KEY},
        }
        connection_env(connections)  # the ids and types the DAGs and the compose file use, or ValueError
        home = self.work / "airflow"
        workers = [
            Component(
                f"celery-worker-{n}",
                ("celery", "worker", "--celery-hostname", f"worker{n}@%h", "--concurrency", str(self.worker_concurrency),
                 "--pid", str(home / f"celery-worker-{n}.pid"), "--skip-serve-logs"),
                ready=_log_says(home / f"celery-worker-{n}.log", f"worker{n}@"),
            )
            for n in range(1, self.workers + 1)
        ]
        return AirflowStack(
            home,
            metadata_url=metadata_url,
            connections=connections,
            env={**SHARED_AIRFLOW_SETTINGS, **HTTP_POLICY, "OMNI_ERP_LOG_LEVEL": "WARNING"},
            executor="CeleryExecutor",
            config={
                "celery": {"broker_url": broker_url, "result_backend": "db+" + metadata_url},
                # Runs only when the driver triggers them: the flows' cron schedules would add runs at
                # random moments and blur the measurements.
                "scheduler": {"use_job_schedule": "False", "task_instance_heartbeat_timeout": str(HEARTBEAT_TIMEOUT_S)},
                # Many connections on one small server: keep each process's pool small.
                "database": {"sql_alchemy_pool_size": "2", "sql_alchemy_max_overflow": "8"},
            },
            extra=workers,
        )

    def _start_sandboxes(self) -> None:
        ready = self.work / "sandboxes.json"
        log = open(self.work / "sandboxes.log", "wb")  # noqa: SIM115 - closed by the exit stack
        self._exit.callback(log.close)
        process = subprocess.Popen(
            [sys.executable, "-m", "omni_erp.sandbox", "--erp-port", str(self.erp_port), "--omni-port", str(self.omni_port),
             "--erp-token", ERP_TOKEN, "--omni-user", OMNI_USER, "--omni-password", OMNI_PASSWORD,
             "--invoice-delay-s", str(self.invoice_delay_s), "--seed", str(self.seed), "--ready-file", str(ready)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._exit.callback(_stop, process)
        _wait_until(ready.exists, "the sandboxes", 60, self.work / "sandboxes.log")

    # --- controls ---------------------------------------------------------------------------

    @property
    def inbox_url(self) -> str:
        """The Omni inbox, served by the API server (``plugins/omni_inbox_plugin.py``)."""
        return f"{self.stack.api_url}/omni"

    def worker_process(self, n: int) -> subprocess.Popen[bytes]:
        """The process of Celery worker ``n`` (1-based)."""
        return _process(self.stack, f"celery-worker-{n}")

    def kill_worker(self, n: int) -> None:
        """SIGKILL worker ``n`` and its whole process group (its pool and the task processes it runs), as a host dying would."""
        process = self.worker_process(n)
        self.killed.add(f"celery-worker-{n}")
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)

    def consume(self, n: int, on: bool) -> None:
        """Make worker ``n`` take tasks from the default queue again (``on``) or stop taking new ones."""
        action = "add_consumer" if on else "cancel_consumer"
        result = subprocess.run(
            [sys.executable, "-m", "celery", "--app", CELERY_APP, "control", action, "default",
             "--destination", f"worker{n}@{os.uname().nodename}", "--timeout", "10"],
            env=self.stack.env, capture_output=True, text=True, timeout=120,
        )
        if result.returncode != 0 or "->" not in result.stdout:
            raise RuntimeError(f"celery control {action} for worker {n} failed: {result.stdout[-1000:]}{result.stderr[-2000:]}")

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """Trigger a run of ``dag_id`` with ``conf``; returns its run id."""
        run_id = f"cluster__{dag_id}__{time.time_ns()}"
        self.stack.airflow("dags", "trigger", dag_id, "--run-id", run_id, "--conf", json.dumps(conf or {}))
        return run_id

    def wait_for_run(self, dag_id: str, run_id: str, timeout_s: float = 900) -> dict[str, Any]:
        """Wait until the run has finished; returns its dag_run row (state, start_date, end_date, ...)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = [r for r in self.stack.dag_runs(dag_id) if r["run_id"] == run_id]
            if rows and rows[0]["state"] in ("success", "failed"):
                return rows[0]
            self._check_alive()
            time.sleep(1)
        raise TimeoutError(f"{dag_id} run {run_id} did not finish within {timeout_s:.0f} s; logs in {self.stack.home}")

    def run_dag(self, dag_id: str, conf: dict[str, Any] | None = None, timeout_s: float = 900) -> dict[str, Any]:
        """Trigger ``dag_id`` and wait for the run; returns its dag_run row."""
        return self.wait_for_run(dag_id, self.trigger(dag_id, conf), timeout_s)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        """Pause or unpause a DAG (one UPDATE of the metadata DB; the CLI would cost an interpreter start).

        The driver pauses F1 while it posts a phase's orders, so the asset watcher's run cannot start on
        half of them; its own triggered run then takes them all.
        """
        import sqlalchemy as sa

        engine = sa.create_engine(self.stack.metadata_url, poolclass=sa.pool.NullPool)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text("UPDATE dag SET is_paused = :paused WHERE dag_id = :dag_id"),
                             {"paused": paused, "dag_id": dag_id})
        finally:
            engine.dispose()

    def wait_until_idle(self, dag_id: str, timeout_s: float = 900) -> None:
        """Wait until no run of ``dag_id`` is queued or running."""
        deadline = time.monotonic() + timeout_s
        while any(r["state"] in ("queued", "running") for r in self.stack.dag_runs(dag_id)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{dag_id} still has active runs after {timeout_s:.0f} s")
            self._check_alive()
            time.sleep(1)

    def worker_running(self, dag_id: str, run_id: str, task_id: str) -> int | None:
        """The worker (1-based) whose process tree runs a running try of ``task_id`` in the run, if any."""
        pids = self.stack.query(
            "SELECT pid FROM task_instance WHERE dag_id = :d AND run_id = :r AND task_id = :t AND state = 'running' "
            "AND pid IS NOT NULL", {"d": dag_id, "r": run_id, "t": task_id},
        )
        workers = {self.worker_process(n).pid: n for n in range(1, self.workers + 1)
                   if f"celery-worker-{n}" not in self.killed}
        for pid in pids:
            for ancestor in _ancestors(int(pid)):
                if ancestor in workers:
                    return workers[ancestor]
        return None

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """The run's task instances: task_id, map_index, state, try_number, start and end."""
        return [dict(r) for r in self.stack.query(
            "SELECT task_id, map_index, state, try_number, start_date, end_date FROM task_instance "
            "WHERE dag_id = :dag_id AND run_id = :run_id ORDER BY task_id, map_index",
            {"dag_id": dag_id, "run_id": run_id}, all_columns=True,
        )]

    def _check_alive(self) -> None:
        """Raise naming any process of the stack that exited, but a worker this driver killed on purpose."""
        for running in self.stack._running:
            if running.component.name not in self.killed and running.process.poll() is not None:
                raise RuntimeError(f"{running.component.name} exited with {running.process.returncode}; see {running.log_path}")

    def erp_state(self) -> dict[str, Any]:
        return _get(f"{self.erp_url}/_sandbox/state")

    def omni_state(self) -> dict[str, Any]:
        return _get(f"{self.omni_url}/_sandbox/state")

    def erp_config(self, **knobs: Any) -> None:
        import requests

        requests.post(f"{self.erp_url}/_sandbox/config", json=knobs, timeout=10).raise_for_status()

    def ledger(self) -> Any:
        from omni_erp.ledger import Ledger

        return Ledger(self.ledger_url)


class _Steps:
    """Prints how long each start-up step took."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def done(self, what: str) -> None:
        now = time.monotonic()
        print(f"[cluster] {what} ({now - self.last:.0f} s)", flush=True)
        self.last = now


def _log_says(path: Path, text: str) -> Any:
    """Readiness of a Celery worker: its log shows the start-up banner with its name and its queues (the
    ``ready.`` line is logged at INFO, below the stack's WARNING level)."""

    def ready() -> bool:
        try:
            content = path.read_text(errors="replace")
        except FileNotFoundError:
            return False
        return text in content and "[queues]" in content

    return ready


def _postgres_connection(url: str) -> dict[str, Any]:
    """The ``omni_erp_ledger`` connection (Airflow's JSON form) for a PostgreSQL SQLAlchemy URL."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    fields = {"conn_type": "postgres", "host": parsed.host, "port": parsed.port, "login": parsed.username,
              "schema": parsed.database}
    if parsed.password:
        fields["password"] = parsed.password
    return fields


def _ancestors(pid: int) -> list[int]:
    """``pid`` and its parents up to init, read from /proc (empty when the process is gone)."""
    chain = []
    while pid > 1:
        chain.append(pid)
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            break
        pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
    return chain


def _process(stack: Any, name: str) -> subprocess.Popen[bytes]:
    """The process AirflowStack started for component ``name``."""
    for running in stack._running:
        if running.component.name == name:
            return running.process
    raise KeyError(f"no component {name!r} in the stack")


def _get(url: str) -> dict[str, Any]:
    import requests

    response = requests.get(url, timeout=30)
    response.raise_for_status()
    return response.json()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def _wait_until(check: Any, what: str, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise SystemExit(f"cluster: {what} did not start within {timeout_s:.0f} s (see {log})")
