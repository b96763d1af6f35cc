"""docker-compose.yaml is wired the way a working Airflow 3 deployment needs.

No Docker engine runs in CI, so the file is never started here (the README says so). What is
checked is what breaks an Airflow 3 stack at run time although ``docker compose config``
accepts it: every Airflow service must share ONE secret set (the API server verifies the JWTs
the scheduler signs for task workers with ``[api_auth] jwt_secret``; every component decrypts
connections with ``[core] fernet_key``; ``[api] secret_key`` must match across API servers),
the same configuration and volumes (task logs written by the scheduler's workers are read by
the API server), start after the init service has completed, and have a healthcheck. The
secrets are read through Airflow's ``_CMD`` variants, which this test runs through the pinned
Airflow's own configuration parser.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yaml"
INIT_SCRIPT = ROOT / "docker" / "airflow-init.sh"
INIT = "airflow-init"
COMPONENTS = {"api-server", "scheduler", "dag-processor", "triggerer"}  # Airflow 3 components
SECRETS = {  # env var -> (config section, option), all registered as sensitive by Airflow
    "AIRFLOW__CORE__FERNET_KEY_CMD": ("core", "fernet_key"),
    "AIRFLOW__API__SECRET_KEY_CMD": ("api", "secret_key"),
    "AIRFLOW__API_AUTH__JWT_SECRET_CMD": ("api_auth", "jwt_secret"),
}
SHARED_CONFIG = (
    "AIRFLOW__CORE__EXECUTOR",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CORE__AUTH_MANAGER",
)


def load() -> dict[str, Any]:
    """docker-compose.yaml with its anchors and ``<<`` merges resolved (PyYAML does both)."""
    return yaml.safe_load(COMPOSE.read_text())


def airflow_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run an Airflow component (not the init job)."""
    return {
        name: spec
        for name, spec in compose["services"].items()
        if name.startswith("airflow-") and name != INIT
    }


def _component(spec: dict[str, Any]) -> str:
    command = spec.get("command")
    return command if isinstance(command, str) else " ".join(command or [])


def wiring_problems(compose: dict[str, Any]) -> list[str]:
    """Everything that would break the stack at run time, one sentence each."""
    problems: list[str] = []
    services = airflow_services(compose)
    init = compose["services"].get(INIT)
    if init is None:
        return [f"no {INIT} service"]
    missing = COMPONENTS - {_component(s) for s in services.values()}
    if missing:
        problems.append(f"no service runs {sorted(missing)}")
    reference = init.get("environment", {})
    for var in (*SECRETS, *SHARED_CONFIG):
        if var not in reference:
            problems.append(f"{INIT} lacks {var}")
    for name, spec in services.items():
        env = spec.get("environment", {})
        for var in (*SECRETS, *SHARED_CONFIG):
            if env.get(var) != reference.get(var):
                problems.append(f"{name}: {var} differs from {INIT}'s")
        if set(spec.get("volumes", [])) != set(init.get("volumes", [])) - {_init_script_mount()}:
            problems.append(f"{name}: volumes differ from {INIT}'s")
        if (spec.get("depends_on") or {}).get(INIT, {}).get("condition") != (
            "service_completed_successfully"
        ):
            problems.append(f"{name}: does not wait for {INIT} to complete")
        if not (spec.get("healthcheck") or {}).get("test"):
            problems.append(f"{name}: no healthcheck")
    return problems


def _init_script_mount() -> str:
    return "./docker/airflow-init.sh:/opt/airflow/docker/airflow-init.sh:ro"


def test_every_airflow_service_shares_secrets_config_volumes_and_waits_for_init() -> None:
    compose = load()
    assert wiring_problems(compose) == []
    assert set(airflow_services(compose)) >= {
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
    }


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda c: c["services"]["airflow-scheduler"]["environment"].update(
                {"AIRFLOW__API_AUTH__JWT_SECRET_CMD": "cat /other/jwt"}
            ),
            "airflow-scheduler: AIRFLOW__API_AUTH__JWT_SECRET_CMD differs",
        ),
        (
            lambda c: c["services"]["airflow-triggerer"]["volumes"].pop(),
            "airflow-triggerer: volumes differ",
        ),
        (
            lambda c: c["services"]["airflow-apiserver"].pop("depends_on"),
            "airflow-apiserver: does not wait",
        ),
        (
            lambda c: c["services"]["airflow-dag-processor"].pop("healthcheck"),
            "airflow-dag-processor: no healthcheck",
        ),
    ],
)
def test_the_wiring_check_catches_a_broken_service(mutate, expected: str) -> None:
    """Negative controls: each rule of ``wiring_problems`` can fail."""
    compose = copy.deepcopy(load())
    # Each service must own its dicts/lists so that one mutation touches one service only.
    for name, spec in compose["services"].items():
        compose["services"][name] = copy.deepcopy(spec)
    mutate(compose)
    assert any(p.startswith(expected) for p in wiring_problems(compose)), wiring_problems(compose)


def test_secrets_come_from_the_shared_volume_the_init_service_fills() -> None:
    compose = load()
    init = compose["services"][INIT]
    secrets_mounts = [v for v in init["volumes"] if v.startswith("airflow-secrets:")]
    assert len(secrets_mounts) == 1
    mount_path = secrets_mounts[0].split(":")[1]
    script = INIT_SCRIPT.read_text()
    generated = set(re.findall(r"^generate (\w+) ", script, re.M))
    assert f"secrets={mount_path}" in script
    for var in SECRETS:
        command = init["environment"][var]
        assert command.startswith(f"cat {mount_path}/"), command
        assert command.rsplit("/", 1)[1] in generated, f"{command}: the init script never writes it"
    assert "airflow-secrets" in compose["volumes"]
    assert "airflow-logs" in compose["volumes"]
    assert "airflow-logs:/opt/airflow/logs" in init["volumes"]
    assert init["command"] == ["/opt/airflow/docker/airflow-init.sh"]
    assert _init_script_mount() in init["volumes"]


def test_generated_secrets_are_accepted_by_airflows_cmd_options(tmp_path, monkeypatch) -> None:
    """Generate the secrets with the init script's own expressions, point the compose file's
    ``_CMD`` commands at them, and read them back through the pinned Airflow's config."""
    from airflow.configuration import conf
    from cryptography.fernet import Fernet

    script = INIT_SCRIPT.read_text()
    env = load()["services"][INIT]["environment"]
    for name, expression in re.findall(r"^generate (\w+) '(.+)'$", script, re.M):
        namespace: dict[str, Any] = {}
        exec(f"import sys\nvalue = {expression}", namespace)  # the script's python -c
        (tmp_path / name).write_text(namespace["value"])
    for var, (section, option) in SECRETS.items():
        command = env[var].replace("/opt/airflow/secrets", str(tmp_path))
        monkeypatch.setenv(var, command)
        expected = (tmp_path / command.rsplit("/", 1)[1]).read_text()
        assert len(expected) >= 32
        assert conf.get(section, option) == expected
    Fernet(conf.get("core", "fernet_key"))  # raises on a malformed key


def test_init_migrates_and_creates_the_connections_the_use_cases_name() -> None:
    script = INIT_SCRIPT.read_text()
    assert re.search(r"^airflow db migrate$", script, re.M)
    created = set(re.findall(r"^add_connection (\w+) '", script, re.M))
    for path in (ROOT / "include" / "config").glob("*.yaml"):
        connections = yaml.safe_load(path.read_text())["connections"]
        assert {connections["aws"], connections["presto"]} <= created, path.name
    compose = load()
    execution_api = compose["services"][INIT]["environment"][
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL"
    ]
    host, port = re.match(r"http://([\w-]+):(\d+)/execution/$", execution_api).groups()
    assert _component(compose["services"][host]) == "api-server"
    assert any(p.endswith(f":{port}") for p in compose["services"][host]["ports"])


def test_init_imports_the_use_cases_pools_from_the_package(tmp_path) -> None:
    """The init script's pools command runs (the same module, on the shipped configs) and
    gives each use case its pool, counting deferred tasks."""
    script = INIT_SCRIPT.read_text()
    assert re.search(r"^airflow pools import /tmp/pools\.json$", script, re.M)
    assert "python -m mlops_sagemaker.pools /opt/airflow/include/config" in script
    out = subprocess.run(
        [sys.executable, "-m", "mlops_sagemaker.pools", str(ROOT / "include" / "config")],
        env={**os.environ, "PYTHONPATH": str(ROOT / "plugins")},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(out.stdout) == {
        "mlops_tpch_orders": {
            "slots": 4,
            "description": "SageMaker jobs of tpch_orders running at once",
            "include_deferred": True,
        }
    }
