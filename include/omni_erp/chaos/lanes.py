"""Airflow task processes the chaos run can kill: each lane is one worker process running DAG runs on command."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

READY_TIMEOUT_S = 300.0
RUN_TIMEOUT_S = 900.0

# A lane's private dags folder holds links to the project's DAG files and this one: a run of it at
# start-up pays the first-run costs of a fresh process (the in-process execution API, imports) before
# the process is needed, so a replacement for a killed process is ready at once.
WARMUP_DAG_ID = "chaos_warmup"
WARMUP_DAG = '''"""Warms a chaos lane's task process up (written by make chaos; not a flow)."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task

with DAG(dag_id="chaos_warmup", schedule=None, start_date=pendulum.datetime(2026, 11, 1, tz="UTC"), catchup=False):

    @task
    def warm() -> None:
        """Import what the flows' tasks import, once per process."""
        import pandas  # noqa: F401
        import requests  # noqa: F401

        import omni_erp.hooks.erp  # noqa: F401
        import omni_erp.hooks.omni  # noqa: F401
        import omni_erp.ledger  # noqa: F401

    warm()
'''


@dataclass
class RunResult:
    """How one DAG run ended in a lane: ``success``, ``failed``, ``killed`` (SIGKILL) or ``error``."""

    lane: str
    dag_id: str
    run_at: str
    state: str
    seconds: float
    run_id: str | None = None
    tasks: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def _copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite DB another process may have open (its WAL included)."""
    import sqlite3

    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    src.close()
    dst.close()


class _Worker:
    """One ``python -m omni_erp.chaos.worker`` process, its result channel and its own metadata DB."""

    def __init__(self, lanes: Lanes, name: str) -> None:
        read_fd, write_fd = os.pipe()
        self.db = lanes.work / f"airflow-{name}.db"
        shutil.copyfile(lanes.template, self.db)  # every process its own copy: no SQLite lock contention
        env = {
            **os.environ,
            "AIRFLOW__CORE__DAGS_FOLDER": str(lanes.folder),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.db}",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        }
        with open(lanes.work / f"lane-{name.split('-')[0]}.log", "a") as log:
            log.write(f"\n===== worker {name} started at {time.strftime('%H:%M:%S')} =====\n")
            log.flush()
            try:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "omni_erp.chaos.worker", "--dags", str(lanes.folder), "--result-fd", str(write_fd),
                     "--retry-delay-s", str(lanes.retry_delay_s), "--warmup", WARMUP_DAG_ID],
                    stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env, pass_fds=(write_fd,),
                    text=True, start_new_session=True,  # its own process group: a kill reaches nothing else
                )
            finally:
                os.close(write_fd)
        self.results: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.ready = False
        threading.Thread(target=self._read, args=(read_fd,), daemon=True, name=f"worker-{name}").start()

    def _read(self, fd: int) -> None:
        with os.fdopen(fd) as lines:
            for line in lines:
                self.results.put(json.loads(line))
        self.results.put(None)  # the worker exited (or was killed)

    def next(self, timeout_s: float) -> dict[str, Any] | None:
        try:
            return self.results.get(timeout=timeout_s)
        except queue.Empty:
            return {"state": "error", "error": f"no answer within {timeout_s:.0f} s"}

    def wait_ready(self) -> None:
        if self.ready:
            return
        answer = self.next(READY_TIMEOUT_S)
        if answer is None or "ready" not in answer:
            self.kill()
            raise RuntimeError(f"a chaos worker did not start ({answer}); see the lane logs")
        self.ready = True

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.db.unlink(missing_ok=True)

    def close(self) -> None:
        if self.alive:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


class Lane:
    """A task process (worker) that runs DAG runs on command; every task of a run executes inside it.

    :meth:`kill` is a SIGKILL of that process in the middle of whatever it is doing. With ``spare``, a
    second, warmed-up process waits beside it and takes over at once (Airflow would start the retry on
    any free worker slot); otherwise the next :meth:`submit` starts a new process.

    :param lanes: the pool (dags folder, metadata DB template, settings).
    :param name: lane name (``a``, ``b``), used in file names and the report.
    :param spare: keep a warm replacement process ready.
    """

    def __init__(self, lanes: Lanes, name: str, *, spare: bool) -> None:
        self.lanes = lanes
        self.name = name
        self.spare_wanted = spare
        self.worker: _Worker | None = None
        self.spare: _Worker | None = None
        self.starts = 0
        self.kills = 0
        self._submitted: tuple[str, str, float] | None = None
        self._killed_by: str | None = None

    def _new_worker(self) -> _Worker:
        self.starts += 1
        return _Worker(self.lanes, f"{self.name}-{self.starts}")

    def start(self) -> None:
        """Have a ready worker (the spare if there is one), then a new spare warming up behind it."""
        if self.worker is None or not self.worker.alive:
            self.worker, self.spare = (self.spare or self._new_worker()), None
        self.worker.wait_ready()
        if self.spare_wanted and self.spare is None:
            self.spare = self._new_worker()  # started after the worker is ready: they do not compete for the CPU

    @property
    def current_run_at(self) -> str | None:
        """``run_at`` of the run in flight (None when idle)."""
        return self._submitted[1] if self._submitted else None

    def kill(self, reason: str) -> None:
        """SIGKILL the worker's process group - the task process dies mid-batch, nothing is cleaned up."""
        if self.worker is not None and self.worker.alive:
            self._killed_by = reason
            self.kills += 1
            os.killpg(self.worker.proc.pid, signal.SIGKILL)

    def close(self) -> None:
        for worker in (self.worker, self.spare):
            if worker is not None:
                worker.close()
        self.worker = self.spare = None

    def submit(self, dag_id: str, run_at: str, *, conf: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> None:
        """Start one DAG run (on a fresh worker if the last one died)."""
        self.start()
        assert self.worker is not None and self.worker.proc.stdin is not None
        self._killed_by = None
        self._submitted = (dag_id, run_at, time.monotonic())
        self.worker.proc.stdin.write(json.dumps({"dag_id": dag_id, "run_at": run_at, "conf": conf or {}, "env": env or {}}) + "\n")
        self.worker.proc.stdin.flush()

    def wait(self, timeout_s: float = RUN_TIMEOUT_S) -> RunResult:
        """The result of the submitted run; ``killed`` when the worker died under it."""
        assert self._submitted is not None and self.worker is not None, "nothing submitted"
        dag_id, run_at, started = self._submitted
        answer = self.worker.next(timeout_s)
        self._submitted = None
        seconds = round(time.monotonic() - started, 2)
        if answer is None or (answer.get("state") == "error" and "run_id" not in answer):
            code = self.worker.proc.poll()
            self.worker.kill()  # a dead, hung or broken worker is replaced, never reused
            if self._killed_by:
                return RunResult(self.name, dag_id, run_at, "killed", seconds, note=self._killed_by)
            return RunResult(self.name, dag_id, run_at, "error", seconds,
                             note=str(answer.get("error")) if answer else f"worker exited with {code}")
        return RunResult(self.name, dag_id, run_at, answer["state"], seconds, run_id=answer.get("run_id"),
                         tasks=answer.get("tasks", {}))


class Lanes:
    """The chaos run's task processes: a private dags folder, one metadata DB made once, and the lanes.

    Create it after the environment is set (the workers inherit it); :meth:`prepare` starts building the
    metadata DB in the background, :meth:`start` waits for it and starts every lane.

    :param work: directory for the dags folder, DBs and logs.
    :param dags: the project's dags folder (linked, not copied: the lanes run the very same DAG files).
    :param names: one lane per name.
    :param spares: names of the lanes that keep a warm replacement process.
    :param retry_delay_s: task retry delay inside a run (see the worker's docstring).
    :param template: an Airflow metadata DB to start from (e.g. the test session's); None = create one.
    """

    def __init__(
        self, work: Path, dags: Path, names: list[str], *, spares: set[str], retry_delay_s: float, template: Path | None = None
    ) -> None:
        self.work = work
        self.retry_delay_s = retry_delay_s
        self.folder = work / "dags"
        self.template = work / "airflow-template.db"
        if template is not None:
            _copy_sqlite(template, self.template)
        self.lanes = [Lane(self, name, spare=name in spares) for name in names]
        self._init: subprocess.Popen[bytes] | None = None
        self.folder.mkdir(parents=True, exist_ok=True)
        for dag_file in sorted(dags.glob("*.py")):
            (self.folder / dag_file.name).symlink_to(dag_file.resolve())
        (self.folder / f"{WARMUP_DAG_ID}.py").write_text(WARMUP_DAG)

    def prepare(self) -> None:
        """Create the Airflow metadata DB every worker starts from (in the background), unless one was given."""
        if self.template.exists():
            return
        env = {**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(self.folder),
               "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.template}"}
        with open(self.work / "airflow-db-init.log", "w") as log:
            self._init = subprocess.Popen(
                [sys.executable, "-c", "from airflow.utils import db; db.initdb()"], stdout=log, stderr=subprocess.STDOUT, env=env
            )

    def start(self) -> None:
        if self._init is None:
            self.prepare()
        if self._init is not None and self._init.wait(timeout=READY_TIMEOUT_S) != 0:
            raise RuntimeError(f"the Airflow metadata DB could not be created; see {self.work / 'airflow-db-init.log'}")
        errors: list[BaseException] = []

        def start(lane: Lane) -> None:
            try:
                lane.start()
            except BaseException as exc:  # re-raised below, in the caller's thread
                errors.append(exc)

        starting = [threading.Thread(target=start, args=(lane,), daemon=True) for lane in self.lanes]
        for thread in starting:
            thread.start()
        for thread in starting:
            thread.join()
        if errors:
            raise errors[0]

    def close(self) -> None:
        if self._init is not None and self._init.poll() is None:
            self._init.kill()
            self._init.wait()
        for lane in self.lanes:
            lane.close()

    def __getitem__(self, index: int) -> Lane:
        return self.lanes[index]
