"""Helpers every end-to-end module shares (the ``stack`` fixture is in ``conftest.py``)."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from local_stack.stack import LocalStack

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "include/config/tpch_orders.yaml"


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def include_copy(
    tmp_path: Path, replacements: dict[str, str] | None = None, sql: dict[str, str] | None = None
) -> dict[str, str]:
    """An include/ copy with text replacements in the config and replaced SQL files; returns
    the environment pointing the DAG files at it."""
    include = tmp_path / "include"
    shutil.copytree(ROOT / "include", include)
    path = include / "config" / "tpch_orders.yaml"
    text = path.read_text()
    for old, new in (replacements or {}).items():
        # exactly once: a replacement meant for one section must not silently edit another
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in the config"
        text = text.replace(old, new)
    path.write_text(text)
    for name, body in (sql or {}).items():
        (include / "sql" / "tpch_orders" / name).write_text(body)
    return {"MLOPS_INCLUDE_DIR": str(include)}


def task_states(stack: LocalStack, dag_id: str, ds: str) -> dict[str, tuple[int, str]]:
    """``task_id -> (try_number, state)`` of ``dag_id``'s run for ``ds``."""
    with sqlite3.connect(stack.airflow_home / "airflow.db") as db:
        rows = db.execute(
            "SELECT ti.task_id, ti.try_number, ti.state FROM task_instance ti "
            "JOIN dag_run r ON r.dag_id = ti.dag_id AND r.run_id = ti.run_id "
            "WHERE ti.dag_id = ? AND date(r.logical_date) = ?",
            (dag_id, ds),
        ).fetchall()
    return {task: (number, state) for task, number, state in rows}


def recorded_calls(stack: LocalStack) -> list[dict]:
    """The AWS calls the local endpoint recorded as IAM actions (``GET /_local/calls``)."""
    with urllib.request.urlopen(f"{stack.aws_url}/_local/calls") as answer:
        return json.load(answer)


ENDPOINT_POLICIES = {
    "airflow": "airflow-endpoint-policy",
    "execution-role": "sagemaker-execution-role-endpoint-policy",
}


def rendered_policies() -> dict[str, dict]:
    """Every policy template rendered for the shipped config."""
    from iam import render
    from mlops_sagemaker.config import load_use_case

    return render.render_all(load_use_case(ROOT / CONFIG), "us-east-1", "123456789012")


def policies_and_calls(
    calls: list[dict], with_endpoint: bool = False
) -> list[tuple[str, dict, list[dict]]]:
    """``(role, its rendered policy for the shipped config, the recorded calls it made)``;
    ``with_endpoint`` adds the endpoint DAG's policy of each role to its statements."""
    policies = rendered_policies()
    out = []
    for role, template in (
        ("airflow", "airflow-role-policy"),
        ("execution-role", "sagemaker-execution-role-policy"),
    ):
        policy = policies[template]
        if with_endpoint:
            extra = policies[ENDPOINT_POLICIES[role]]["Statement"]
            policy = {**policy, "Statement": [*policy["Statement"], *extra]}
        out.append((role, policy, [c for c in calls if c["principal"] == role]))
    return out


def wait_for(what: str, check, timeout: float, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the DAG run ended before {what}")
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def api_server(stack: LocalStack, port: int, log: Path) -> subprocess.Popen:
    env = {
        **stack.airflow_env(),
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
    }
    with open(log, "wb") as out:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "airflow"), "api-server", "--port", str(port)],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def rest(url: str, method: str = "GET", body: dict | None = None, token: str | None = None):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {token}"} if token else {}),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read() or b"null")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def dags_test(
    stack: LocalStack, dag_id: str, ds: str, conf: dict | None = None, env: dict | None = None
) -> tuple[int, str]:
    """``airflow dags test dag_id ds --conf conf``: (exit code, output)."""
    result = stack.airflow(
        "dags", "test", dag_id, ds, "--conf", json.dumps(conf or {}), check=False, extra_env=env
    )
    return result.returncode, result.stdout + result.stderr


def versions(stack: LocalStack, group: str) -> list[dict]:
    """Every version of ``group``, described, oldest first."""
    sm = stack.client("sagemaker")
    listed = sm.list_model_packages(ModelPackageGroupName=group, SortBy="CreationTime")
    return [
        sm.describe_model_package(ModelPackageName=s["ModelPackageArn"])
        for s in listed["ModelPackageSummaryList"]
    ]


def reregister(stack: LocalStack, arn: str, run_date: str, status: str, **replace: dict) -> str:
    """A new version of ``arn``'s artifact registered as if trained for ``run_date`` (what a
    retrain would register, without paying for another tuning job); ``replace`` swaps whole
    request members (e.g. ``InferenceSpecification``, ``ModelMetrics``)."""
    sm = stack.client("sagemaker")
    source = sm.describe_model_package(ModelPackageName=arn)
    properties = {**source["CustomerMetadataProperties"], "run_date": run_date}
    properties["registration_key"] = f"test-{run_date}"
    request = {
        "ModelPackageGroupName": source["ModelPackageGroupName"],
        "ModelPackageDescription": f"re-registered for {run_date}",
        "ModelApprovalStatus": status,
        "InferenceSpecification": source["InferenceSpecification"],
        "ModelMetrics": source["ModelMetrics"],
        "DriftCheckBaselines": source["DriftCheckBaselines"],
        "CustomerMetadataProperties": properties,
        **replace,
    }
    return sm.create_model_package(**request)["ModelPackageArn"]
