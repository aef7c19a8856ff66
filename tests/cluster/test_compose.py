"""docker-compose.yaml and the Dockerfile, checked without a Docker engine (there is none on the build machines).

The file is read as Compose reads it: YAML anchors and merge keys, then variable interpolation with
Compose's rules (``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``, ``$$`` for a literal ``$``), so a
missing secret is shown to stop the stack with its message, and the resolved connections are the ones
``make cluster`` uses.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from omni_erp.cluster.config import CELERY_APP, CONNECTION_TYPES, LEDGER_DATABASE, SHARED_AIRFLOW_SETTINGS

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"

SECRETS = {
    "POSTGRES_PASSWORD": "pg-pass-1",
    "REDIS_PASSWORD": "redis-pass-1",
    "AIRFLOW_FERNET_KEY": "fernet-key-1",
    "AIRFLOW_JWT_SECRET": "jwt-secret-0123456789-0123456789-01",
    "AIRFLOW_SIMPLE_AUTH_USERS": "admin:admin",
    "AIRFLOW_CONN_ERP_DEFAULT": '{"conn_type": "http", "host": "https://erp.example", "password": "erp-token-1"}',
    "AIRFLOW_CONN_OMNI_DEFAULT": '{"conn_type": "http", "host": "http://omni.example", "login": "u", "password": "omni-pass-1"}',
    "AIRFLOW_CONN_OMNI_INBOX": '{"conn_type": "generic", "password": "inbox-key-1"}',
}
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-worker", "airflow-triggerer")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|_KEY$|^AIRFLOW_CONN_|AUTH")

_VAR = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


class MissingVariable(Exception):
    """What ``docker compose`` reports for ``${VAR:?message}`` when VAR is unset or empty."""


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation, applied to every string of a loaded compose document."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg")
        current = env.get(name)
        unset = current is None or (current == "" and op is not None and op.startswith(":"))
        if op in (":?", "?") and unset:
            raise MissingVariable(f"required variable {name} is missing a value: {arg}")
        if op in (":-", "-") and unset:
            return arg
        return current or ""

    return _VAR.sub(one, value)


def references(value: Any) -> list[tuple[str, str | None, str | None]]:
    """Every ``${NAME<op><arg>}`` Compose itself resolves in the document (not the ``$$`` ones)."""
    found: list[tuple[str, str | None, str | None]] = []
    if isinstance(value, dict):
        for v in value.values():
            found += references(v)
    elif isinstance(value, list):
        for v in value:
            found += references(v)
    elif isinstance(value, str):
        for m in _VAR.finditer(value):
            if m.group(0) != "$$":
                found.append((m.group("name") or m.group("bare"), m.group("op"), m.group("arg")))
    return found


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def resolved(raw) -> dict[str, Any]:
    return interpolate(raw, dict(SECRETS))


def test_the_interpolation_follows_composes_rules():
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("a${SET}b$$c${UNSET:-d}${EMPTY:-e}${EMPTY-f}", env) == "avb$cde"
    with pytest.raises(MissingVariable, match="UNSET is missing a value: say so"):
        interpolate("${UNSET:?say so}", env)
    with pytest.raises(MissingVariable, match="EMPTY"):
        interpolate("${EMPTY:?no}", env)
    assert interpolate("$${UNSET:?only the container's shell sees this}", env) == "${UNSET:?only the container's shell sees this}"


def test_the_stack_has_the_celery_services_with_their_commands(resolved):
    services = resolved["services"]
    commands = {name: services[name].get("command") for name in AIRFLOW_SERVICES}
    assert commands == {
        "airflow-apiserver": "api-server",
        "airflow-scheduler": "scheduler",
        "airflow-dag-processor": "dag-processor",
        "airflow-worker": "celery worker",
        "airflow-triggerer": "triggerer",
    }
    assert {"postgres", "redis", "airflow-init"} <= set(services)
    assert services["flower"]["command"] == "celery flower" and services["flower"]["profiles"] == ["flower"]
    assert services["sandboxes"]["profiles"] == ["sandbox"]
    assert "omni_erp.sandbox" in " ".join(services["sandboxes"]["entrypoint"])
    init = " ".join(services["airflow-init"]["command"])
    assert "omni_erp.cluster.config ensure-ledger-db" in init
    assert services["airflow-init"]["environment"]["_AIRFLOW_DB_MIGRATE"] == "true"
    for name in AIRFLOW_SERVICES:
        assert services[name]["build"] == "." and services[name]["image"].startswith("omni-erp-airflow:3.3.2")
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["airflow-worker"]["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"
    assert services["airflow-worker"]["environment"]["DUMB_INIT_SETSID"] == "0"


def test_every_airflow_service_has_the_settings_make_cluster_uses(resolved):
    for name in (*AIRFLOW_SERVICES, "airflow-init", "flower"):
        env = resolved["services"][name]["environment"]
        assert {k: env.get(k) for k in SHARED_AIRFLOW_SETTINGS} == SHARED_AIRFLOW_SETTINGS, name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
        assert env["AIRFLOW__CELERY__BROKER_URL"] == f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"postgresql+psycopg2://airflow:{SECRETS['POSTGRES_PASSWORD']}@postgres/airflow"
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == SECRETS["AIRFLOW_JWT_SECRET"]
        assert env["AIRFLOW__CORE__FERNET_KEY"] == SECRETS["AIRFLOW_FERNET_KEY"]


def test_the_connections_are_the_ones_the_dags_use(resolved):
    env = resolved["services"]["airflow-worker"]["environment"]
    conns = {k.removeprefix("AIRFLOW_CONN_").lower(): json.loads(v) for k, v in env.items() if k.startswith("AIRFLOW_CONN_")}
    assert {k: v["conn_type"] for k, v in conns.items()} == CONNECTION_TYPES
    ledger = conns["omni_erp_ledger"]
    assert (ledger["host"], ledger["schema"], ledger["password"]) == ("postgres", LEDGER_DATABASE, SECRETS["POSTGRES_PASSWORD"])
    assert conns["erp_default"]["password"] == "erp-token-1"  # passed through from .env, untouched


@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_a_missing_secret_stops_the_stack_naming_it(raw, secret):
    env = {k: v for k, v in SECRETS.items() if k != secret}
    with pytest.raises(MissingVariable, match=rf"required variable {secret} is missing a value: set {secret}"):
        interpolate(raw, env)
    with pytest.raises(MissingVariable, match=secret):
        interpolate(raw, {**env, secret: ""})  # an empty value is as missing as none


def test_no_secret_has_a_default(raw):
    secret_refs = [(name, op, arg) for name, op, arg in references(raw) if SECRET_NAME.search(name)]
    assert {name for name, _, _ in secret_refs} >= set(SECRETS)
    with_default = [(name, arg) for name, op, arg in secret_refs if op in (":-", "-") and arg]
    assert with_default == []
    # The sandbox profile's own tokens are passed through empty and required by its shell at start-up.
    sandbox = raw["services"]["sandboxes"]
    for name in ("SANDBOX_ERP_TOKEN", "SANDBOX_OMNI_USER", "SANDBOX_OMNI_PASSWORD"):
        assert sandbox["environment"][name] == f"${{{name}:-}}"
        assert f'"$${{{name}:?set {name}' in sandbox["entrypoint"][-1]
    assert "change-me" not in COMPOSE.read_text() and "inbox-demo-key" not in COMPOSE.read_text()


def test_published_ports_bind_to_loopback_unless_configured(raw, resolved):
    published = {name: s["ports"] for name, s in resolved["services"].items() if s.get("ports")}
    assert set(published) == {"airflow-apiserver", "flower"}
    for ports in published.values():
        for port in ports:
            assert port.startswith("127.0.0.1:"), port
    moved = interpolate(raw, {**SECRETS, "AIRFLOW_BIND_ADDRESS": "10.0.0.5", "AIRFLOW_API_PORT": "9000"})
    assert moved["services"]["airflow-apiserver"]["ports"] == ["10.0.0.5:9000:8080"]
    for name in ("postgres", "redis", "sandboxes"):
        assert "ports" not in resolved["services"][name]


def test_every_long_running_service_has_a_health_check(resolved):
    services = resolved["services"]
    for name, service in services.items():
        if name in ("airflow-init", "airflow-cli"):
            continue
        assert service.get("healthcheck", {}).get("test"), name
    assert services["airflow-apiserver"]["healthcheck"]["test"][-1] == "http://localhost:8080/api/v2/monitor/health"
    assert services["airflow-scheduler"]["healthcheck"]["test"][-1] == "http://localhost:8974/health"
    assert f"celery --app {CELERY_APP} inspect ping" in services["airflow-worker"]["healthcheck"]["test"][1]
    assert "TriggererJob" in services["airflow-triggerer"]["healthcheck"]["test"][1]
    assert "DagProcessorJob" in services["airflow-dag-processor"]["healthcheck"]["test"][1]
    assert services["redis"]["command"] == ["redis-server", "--requirepass", SECRETS["REDIS_PASSWORD"]]
    assert services["redis"]["environment"]["REDISCLI_AUTH"] == SECRETS["REDIS_PASSWORD"]  # so the ping authenticates


def test_mounts_are_the_repositorys_folders(resolved):
    volumes = resolved["services"]["airflow-worker"]["volumes"]
    targets = {v.split(":")[1]: v.split(":")[0] for v in volumes}
    assert targets == {"/opt/airflow/dags": "./dags", "/opt/airflow/plugins": "./plugins",
                       "/opt/airflow/logs": "./logs", "/opt/airflow/config": "./config"}
    for folder in ("dags", "plugins"):
        assert (REPO / folder).is_dir()
    assert resolved["services"]["postgres"]["volumes"] == ["postgres-db-volume:/var/lib/postgresql/data"]


def test_the_image_is_built_from_the_lock_with_the_celery_provider():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert dockerfile.splitlines()[[i for i, line in enumerate(dockerfile.splitlines()) if line.startswith("FROM")][0]] == (
        "FROM apache/airflow:3.3.2-python3.11"
    )
    assert '"apache-airflow==${AIRFLOW_VERSION}" -r /opt/omni_erp/requirements.txt' in dockerfile
    assert "--no-deps /opt/omni_erp" in dockerfile
    lock = (REPO / "requirements.txt").read_text()
    for pin in ("apache-airflow-providers-celery==3.26.0", "celery==", "kombu==", "redis=="):
        assert re.search(rf"^{re.escape(pin)}", lock, re.M), pin


def test_make_cluster_runs_the_settings_and_connections_the_compose_file_ships(tmp_path, resolved):
    """The stack make cluster measures and the compose file agree on executor, Celery settings and connections."""
    from omni_erp.cluster.stack import CeleryCluster

    stack = CeleryCluster(tmp_path / "c", workers=2).airflow_stack("postgresql+psycopg://omni@127.0.0.1:5/omni", "redis://:pw@127.0.0.1:6/0")
    compose_env = resolved["services"]["airflow-worker"]["environment"]
    for key, value in SHARED_AIRFLOW_SETTINGS.items():
        assert stack.env[key].lower() == value.lower() == compose_env[key].lower(), key
    local = {k.removeprefix("AIRFLOW_CONN_").lower(): json.loads(v)["conn_type"] for k, v in stack.env.items() if k.startswith("AIRFLOW_CONN_")}
    shipped = {k.removeprefix("AIRFLOW_CONN_").lower(): json.loads(v)["conn_type"] for k, v in compose_env.items() if k.startswith("AIRFLOW_CONN_")}
    assert local == shipped == CONNECTION_TYPES
    assert json.loads(stack.env["AIRFLOW_CONN_OMNI_ERP_LEDGER"])["schema"] == LEDGER_DATABASE
    assert stack.env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert stack.env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql")
    workers = [c for c in stack._components if c.name.startswith("celery-worker-")]
    assert [c.args[:2] for c in workers] == [("celery", "worker")] * 2
