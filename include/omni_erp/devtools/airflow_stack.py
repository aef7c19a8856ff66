"""A real Airflow deployment on one machine for tests and benchmarks: scheduler, triggerer, dag-processor and
api-server on a temporary ``AIRFLOW_HOME``, the way ``airflow standalone`` runs them but with everything chosen
by the caller.

    with AirflowStack(home, metadata_url=pg.url, connections={"erp_default": {...}}) as stack:
        stack.wait_for_dags(["omni_order_posting"])
        ... post orders, read stack.dag_runs("omni_order_posting") ...

What it sets and why:

- the metadata DB (``metadata_url``; SQLite in the home by default, or a throwaway PostgreSQL from
  ``omni_erp.devtools.pg.PostgresCluster``), migrated with ``airflow db migrate`` before anything starts;
- connections only as ``AIRFLOW_CONN_*`` variables, so nothing secret is written to the metadata DB;
- the API server on 127.0.0.1 and a free port, and ``[core] execution_api_server_url`` following it (with only the
  port moved every task fails at start, see airflow-3.3-notes.md), one JWT secret shared by every process;
- DAGs unpaused at creation (the flows must run without a click), no examples;
- the executor (``LocalExecutor`` by default) and any further processes as parameters, so a CeleryExecutor stack
  is ``AirflowStack(..., executor="CeleryExecutor", extra=[Component("celery-worker", ("celery", "worker"))],
  config={"celery": {"broker_url": ...}})``.

Tests talk to it as a user would: :meth:`api` (the REST API, with a JWT from ``/auth/token`` when users log in),
:meth:`airflow` (the CLI, e.g. ``backfill create``), :meth:`wait_for_runs` and :meth:`task_log` (what the UI's log
view shows, read from the log files).

Readiness is read from the metadata DB (a ``job`` row with a fresh heartbeat per scheduler, triggerer and
dag-processor) and from the API server's health answer. :meth:`stop` ends every process it started, and their
children (each runs in its own process group), and nothing else.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from omni_erp.sandbox.serve import free_port

REPO = Path(__file__).resolve().parents[3]

# Component name -> the job_type its heartbeat row carries in the metadata DB.
JOB_TYPES = {"scheduler": "SchedulerJob", "triggerer": "TriggererJob", "dag-processor": "DagProcessorJob"}


class StackError(RuntimeError):
    """A component did not start or died; the message names it and its log file."""


@dataclass(frozen=True)
class Component:
    """One long-running ``airflow <args>`` process of the stack.

    :param name: label for logs and errors (``scheduler``, ``celery-worker-1``, ...).
    :param args: the airflow CLI arguments, e.g. ``("celery", "worker", "--concurrency", "4")``.
    :param job_type: the metadata DB ``job.job_type`` whose heartbeat proves it is up (None: started is enough,
        or ``ready`` says).
    :param ready: optional extra readiness check, called until it returns True.
    """

    name: str
    args: tuple[str, ...]
    job_type: str | None = None
    ready: Callable[[], bool] | None = None


@dataclass
class _Running:
    component: Component
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes] = field(repr=False)


class AirflowStack:
    """Start the Airflow components on a private home; ``with`` starts and stops them.

    :param home: the AIRFLOW_HOME to use (created; logs and the SQLite metadata DB go there).
    :param metadata_url: SQLAlchemy URL of the metadata DB; default SQLite ``<home>/airflow.db``.
    :param dags_folder: the dags folder (this repository's ``dags/`` by default).
    :param plugins_folder: the plugins folder (this repository's ``plugins/`` by default).
    :param connections: connection id -> Airflow's JSON form of it, passed as ``AIRFLOW_CONN_<ID>``.
    :param env: further environment for every process (``OMNI_ERP_*`` settings, ...).
    :param config: ``{section: {key: value}}`` Airflow settings, passed as ``AIRFLOW__SECTION__KEY``.
    :param executor: ``[core] executor``.
    :param components: the core processes to run (any of scheduler, triggerer, dag-processor).
    :param api_server: run the API server (tasks need it: they talk to its execution API).
    :param extra: more processes (e.g. Celery workers), started after the core ones.
    :param start_timeout_s: how long each component may take to report ready.
    """

    def __init__(
        self,
        home: Path,
        *,
        metadata_url: str | None = None,
        dags_folder: Path | None = None,
        plugins_folder: Path | None = None,
        connections: Mapping[str, Mapping[str, Any]] | None = None,
        env: Mapping[str, str] | None = None,
        config: Mapping[str, Mapping[str, Any]] | None = None,
        executor: str = "LocalExecutor",
        components: Sequence[str] = ("scheduler", "triggerer", "dag-processor"),
        api_server: bool = True,
        extra: Sequence[Component] = (),
        start_timeout_s: float = 180,
    ) -> None:
        unknown = set(components) - set(JOB_TYPES)
        if unknown:
            raise ValueError(f"unknown components {sorted(unknown)}; choose from {sorted(JOB_TYPES)}")
        self.home = Path(home).resolve()
        self.metadata_url = metadata_url or f"sqlite:///{self.home / 'airflow.db'}"
        self.dags_folder = Path(dags_folder or REPO / "dags").resolve()
        self.plugins_folder = Path(plugins_folder or REPO / "plugins").resolve()
        self.executor = executor
        self.api_port = free_port() if api_server else None
        self.start_timeout_s = start_timeout_s
        self._components = [Component(name, (name,), JOB_TYPES[name]) for name in components]
        if api_server:
            self._components.append(
                Component("api-server", ("api-server", "--host", "127.0.0.1", "--port", str(self.api_port)),
                          ready=self._api_healthy)
            )
        self._components += list(extra)
        self._running: list[_Running] = []
        self._engine: Any = None
        self._token: str | None = None
        self.env = self._environment(connections or {}, env or {}, config or {})

    # --- life cycle -------------------------------------------------------------------------

    def __enter__(self) -> AirflowStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> AirflowStack:
        """Migrate the metadata DB, start every component and wait until each is ready (stops all on failure)."""
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            self.airflow("db", "migrate", timeout_s=300)
            # The API server first: a scheduler that starts tasks before the execution API answers sees them
            # fail at once ("Connection refused"). The triggerer and dag-processor need it not, so they start beside it.
            early = [c for c in self._components if c.name in ("api-server", "triggerer", "dag-processor")]
            for component in early:
                self._spawn(component)
            for running in list(self._running):
                self._wait_ready(running)
            for component in self._components:
                if component not in early:
                    self._spawn(component)
                    self._wait_ready(self._running[-1])
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM each started process group, SIGKILL what is still alive after ``timeout_s``; close logs."""
        for running in self._running:
            _signal_group(running.process, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for running in self._running:
            try:
                running.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # The group may outlive its leader (LocalExecutor workers, parsing processes): kill what is left.
            _signal_group(running.process, signal.SIGKILL)
            if running.process.poll() is None:
                running.process.wait(10)
            running.log_file.close()
        self._running.clear()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def airflow(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        """Run one ``airflow`` CLI command in the stack's environment; raises with its output when it fails."""
        result = subprocess.run(
            [sys.executable, "-m", "airflow", *args], env=self.env, capture_output=True, text=True, timeout=timeout_s
        )
        if result.returncode != 0:
            raise StackError(f"airflow {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-4000:]}")
        return result

    def check_alive(self) -> None:
        """Raise :class:`StackError` naming any component that has exited."""
        for running in self._running:
            code = running.process.poll()
            if code is not None:
                raise StackError(f"{running.component.name} exited with {code}; see {running.log_path}")

    # --- what the stack holds ---------------------------------------------------------------

    @property
    def api_url(self) -> str | None:
        return f"http://127.0.0.1:{self.api_port}" if self.api_port else None

    def wait_for_dags(self, dag_ids: Iterable[str], timeout_s: float = 180) -> None:
        """Wait until the dag-processor has serialized each DAG (then the scheduler can run it)."""
        wanted = set(dag_ids)
        self._wait(
            lambda: wanted <= set(self.query("SELECT dag_id FROM serialized_dag")),
            f"DAGs {sorted(wanted)} serialized",
            timeout_s,
        )

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        """Every run of ``dag_id``: run_id, run_type (scheduled, asset_triggered, manual, ...), state, times."""
        rows = self.query(
            "SELECT run_id, run_type, state, queued_at, start_date, end_date FROM dag_run WHERE dag_id = :dag_id "
            "ORDER BY id",
            {"dag_id": dag_id},
            all_columns=True,
        )
        return [dict(row) for row in rows]

    def wait_for_runs(
        self, dag_id: str, *, count: int, run_type: str | None = None, timeout_s: float = 300
    ) -> list[dict[str, Any]]:
        """Wait until ``dag_id`` has ``count`` finished runs (of ``run_type`` if given) and none of those still going.

        :returns: those runs (:meth:`dag_runs` rows), oldest first.
        :raises StackError: on timeout (with the runs' states) or when a component died.
        """
        def matching() -> list[dict[str, Any]]:
            return [r for r in self.dag_runs(dag_id) if run_type is None or r["run_type"] == run_type]

        def done() -> bool:
            runs = matching()
            return len(runs) >= count and all(r["state"] in ("success", "failed") for r in runs)

        try:
            self._wait(done, f"{count} finished {run_type or ''} runs of {dag_id}", timeout_s)
        except StackError as exc:
            raise StackError(f"{exc}; runs now: {[(r['run_id'], r['state']) for r in matching()]}") from None
        return matching()

    def wait_for_run(self, dag_id: str, run_id: str, *, timeout_s: float = 300) -> dict[str, Any]:
        """Wait until run ``run_id`` of ``dag_id`` has ended (success or failed); its :meth:`dag_runs` row."""
        def run() -> dict[str, Any] | None:
            return next((r for r in self.dag_runs(dag_id) if r["run_id"] == run_id), None)

        try:
            self._wait(lambda: (run() or {}).get("state") in ("success", "failed"), f"run {run_id} of {dag_id} to end", timeout_s)
        except StackError as exc:
            raise StackError(f"{exc}; tasks now: {self.task_states(dag_id, run_id)}") from None
        return run() or {}

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """``task_id`` (``task_id[i]`` for a mapped task's instance ``i``) -> state, for one run."""
        rows = self.query(
            "SELECT task_id, map_index, state FROM task_instance WHERE dag_id = :dag_id AND run_id = :run_id",
            {"dag_id": dag_id, "run_id": run_id}, all_columns=True,
        )
        return {(r["task_id"] if r["map_index"] < 0 else f"{r['task_id']}[{r['map_index']}]"): r["state"] for r in rows}

    def task_log(self, dag_id: str, run_id: str, task_id: str, *, map_index: int = -1, try_number: int | None = None) -> str:
        """The task's log as the UI shows it, one ``level event`` line per record (the latest try by default).

        Read from ``<home>/logs`` (Airflow's default ``log_filename_template``); the files hold one JSON
        record per line.
        """
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        if map_index >= 0:
            folder /= f"map_index={map_index}"
        tries = sorted(folder.glob("attempt=*.log"), key=lambda p: int(p.stem.split("=")[1]))
        if try_number is not None:
            tries = [p for p in tries if p.stem == f"attempt={try_number}"]
        if not tries:
            raise StackError(f"no log of {dag_id}/{run_id}/{task_id} (map index {map_index}, try {try_number}) in {folder}")
        lines = []
        for raw in tries[-1].read_text(errors="replace").splitlines():
            try:
                record = json.loads(raw)
            except ValueError:
                lines.append(raw)
                continue
            lines.append(f"{record.get('level', '')} {record.get('event', '')}".strip())
        return "\n".join(lines)

    def api(self, method: str, path: str, *, timeout_s: float = 60, **kwargs: Any) -> Any:
        """Call the REST API (``path`` under ``/api/v2``) as the ``admin`` user; returns the ``requests`` response.

        When users log in (``[core] simple_auth_manager_all_admins`` False) the call carries a JWT from
        ``POST /auth/token`` with the password the API server generated into the home; otherwise none is needed.
        """
        import requests

        headers = dict(kwargs.pop("headers", None) or {})
        password_file = self.home / "simple_auth_manager_passwords.json.generated"
        if password_file.exists():
            if self._token is None:
                password = json.loads(password_file.read_text())["admin"]
                response = requests.post(f"{self.api_url}/auth/token", json={"username": "admin", "password": password},
                                         timeout=timeout_s)
                if not response.ok:
                    raise StackError(f"POST /auth/token answered {response.status_code}: {response.text[:500]}")
                self._token = response.json()["access_token"]
            headers["Authorization"] = f"Bearer {self._token}"
        return requests.request(method, f"{self.api_url}/api/v2{path}", headers=headers, timeout=timeout_s, **kwargs)

    def query(self, sql: str, params: Mapping[str, Any] | None = None, *, all_columns: bool = False) -> list[Any]:
        """Read the metadata DB: the first column of each row, or each row as a mapping with ``all_columns``."""
        import sqlalchemy as sa

        if self._engine is None:
            self._engine = sa.create_engine(self.metadata_url, poolclass=sa.pool.NullPool)
        with self._engine.connect() as conn:
            result = conn.execute(sa.text(sql), dict(params or {}))
            return [row._mapping for row in result] if all_columns else list(result.scalars())

    # --- plumbing ---------------------------------------------------------------------------

    def _environment(
        self, connections: Mapping[str, Mapping[str, Any]], env: Mapping[str, str], config: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, str]:
        # Start from this process's environment minus any other Airflow configuration it carries.
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_"))}
        settings: dict[str, dict[str, Any]] = {
            "core": {
                "dags_folder": self.dags_folder,
                "plugins_folder": self.plugins_folder,
                "load_examples": "False",
                "dags_are_paused_at_creation": "False",
                "executor": self.executor,
                "simple_auth_manager_all_admins": "True",
            },
            "database": {"sql_alchemy_conn": self.metadata_url},
            "api_auth": {"jwt_secret": secrets.token_urlsafe(32)},
            # One API worker: four (the default) cost a minute of start-up and ~1 GB on a 2-core machine.
            "api": {"secret_key": secrets.token_urlsafe(32), "workers": "1"},
            # Free ports for the log servers of task workers and the triggerer: the defaults (8793, 8794) are
            # taken by any other Airflow on the machine, and a clash only shows as an error line in the log.
            "logging": {"logging_level": "WARNING", "worker_log_server_port": free_port(),
                        "trigger_log_server_port": free_port()},
            "scheduler": {"scheduler_health_check_server_port": free_port()},
        }
        if self.api_port:
            settings["api"].update(host="127.0.0.1", port=str(self.api_port))
            settings["core"]["execution_api_server_url"] = f"http://127.0.0.1:{self.api_port}/execution/"
        for section, values in config.items():
            settings.setdefault(section, {}).update(values)
        result = {**base, "AIRFLOW_HOME": str(self.home), "NO_PROXY": "127.0.0.1,localhost", **env}
        for section, values in settings.items():
            for key, value in values.items():
                result[f"AIRFLOW__{section.upper()}__{key.upper()}"] = str(value)
        for conn_id, conn in connections.items():
            result[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
        return result

    def _spawn(self, component: Component) -> None:
        log_path = self.home / f"{component.name}.log"
        log_file = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        process = subprocess.Popen(
            [sys.executable, "-m", "airflow", *component.args],
            env=self.env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._running.append(_Running(component, process, log_path, log_file))

    def _wait_ready(self, running: _Running) -> None:
        component = running.component

        def ready() -> bool:
            if running.process.poll() is not None:
                raise StackError(f"{component.name} exited with {running.process.returncode} at start; see {running.log_path}")
            if component.job_type and not self._job_alive(component.job_type):
                return False
            return component.ready() if component.ready else True

        self._wait(ready, f"{component.name} ready", self.start_timeout_s, log_path=running.log_path)

    def _job_alive(self, job_type: str) -> bool:
        try:
            return bool(self.query(
                "SELECT id FROM job WHERE job_type = :job_type AND state = 'running'", {"job_type": job_type}
            ))
        except Exception:  # noqa: BLE001 - the table is being written by the migration or the job: not yet
            return False

    def _api_healthy(self) -> bool:
        import requests

        try:
            return requests.get(f"{self.api_url}/api/v2/monitor/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def _wait(self, check: Callable[[], bool], what: str, timeout_s: float, *, log_path: Path | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if check():
                return
            self.check_alive()
            time.sleep(0.5)
        where = f"; see {log_path}" if log_path else f"; logs in {self.home}"
        raise StackError(f"timed out after {timeout_s:.0f} s waiting for {what}{where}")


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    """Signal the process group the stack created for ``process`` (its pid is the group id)."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass  # the whole group is gone already
