"""Helpers every end-to-end module shares (the ``stack`` fixture is in ``conftest.py``)."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
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
        assert old in text, old
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


def policies_and_calls(calls: list[dict]) -> list[tuple[str, dict, list[dict]]]:
    """``(role, its rendered policy for the shipped config, the recorded calls it made)``."""
    from iam import render
    from mlops_sagemaker.config import load_use_case

    config = load_use_case(ROOT / CONFIG)
    policies = render.render_all(config, "us-east-1", "123456789012")
    return [
        (role, policies[template], [c for c in calls if c["principal"] == role])
        for role, template in (
            ("airflow", "airflow-role-policy"),
            ("execution-role", "sagemaker-execution-role-policy"),
        )
    ]
