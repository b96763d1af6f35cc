"""``make ui`` (``python -m local_stack.ui``) on non-default ports: a task of the training DAG
triggered through Airflow's REST API runs (API server, scheduler, DAG processor and triggerer on
PostgreSQL), and SIGTERM ends every process the launcher started, PostgreSQL included.

Before the fix the UI followed ``AIRFLOW_PORT`` but the workers still called the execution API
on 8080 (every task failed with ``httpx.ConnectError``), and SIGTERM left the Presto stand-in and
the AWS endpoint running.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from e2e_support import free_port

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "mlops_tpch_orders_training"
FIRST_TASKS = ("check_run_date", "wait_for_data")


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def call(url: str, method: str = "GET", body: dict | None = None, token: str | None = None):
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {token}"} if token else {}),
        },
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)


def wait_for(what: str, check, timeout: float, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"make ui exited while waiting for {what}:\n" + tail(log)
        try:
            result = check()
        except (OSError, urllib.error.HTTPError, KeyError):
            result = None
        if result:
            return result
        time.sleep(1)
    raise AssertionError(f"{what} not reached in {timeout:.0f} s:\n{tail(log)}")


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:] if log.exists() else ""


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's reaping is pending


def test_make_ui_runs_a_task_on_other_ports_and_sigterm_stops_everything(tmp_path) -> None:
    ports = {name: free_port() for name in ("airflow", "presto", "aws", "worker_log", "trig_log")}
    home = tmp_path / "local"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LOCAL_STACK_HOME": str(home),
        "AIRFLOW_PORT": str(ports["airflow"]),
        "PRESTO_PORT": str(ports["presto"]),
        "AWS_ENDPOINT_PORT": str(ports["aws"]),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(ports["worker_log"]),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(ports["trig_log"]),
    }
    log = tmp_path / "make-ui.log"
    with open(log, "wb") as out:
        ui = subprocess.Popen(
            [sys.executable, "-m", "local_stack.ui"], cwd=ROOT, env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    base = f"http://localhost:{ports['airflow']}"
    try:
        wait_for("the API", lambda: call(f"{base}/api/v2/monitor/health"), 300, ui, log)
        passwords = home / "airflow" / "simple_auth_manager_passwords.json.generated"
        password = wait_for("the admin password", lambda: json.loads(passwords.read_text())[
            "admin"], 60, ui, log)  # fmt: skip
        token = call(f"{base}/auth/token", "POST", {"username": "admin", "password": password})[
            "access_token"
        ]
        dag_url = f"{base}/api/v2/dags/{DAG_ID}"
        wait_for("the DAG", lambda: call(dag_url, token=token), 240, ui, log)
        call(dag_url, "PATCH", {"is_paused": False}, token)
        run = call(
            f"{dag_url}/dagRuns",
            "POST",
            {
                "logical_date": "1996-02-29T00:00:00Z",
                "conf": {"sagemaker_check_interval_seconds": 1},
            },
            token,
        )

        def first_tasks_succeeded() -> bool:
            instances = call(f"{dag_url}/dagRuns/{run['dag_run_id']}/taskInstances", token=token)
            states = {t["task_id"]: t["state"] for t in instances["task_instances"]}
            assert not {t: s for t, s in states.items() if s in ("failed", "upstream_failed")}
            return all(states.get(t) == "success" for t in FIRST_TASKS)

        wait_for("the first tasks' success", first_tasks_succeeded, 300, ui, log)
        started = descendants(ui.pid)
        assert len(started) >= 4, "expected the services and Airflow's four components"
    finally:
        ui.send_signal(signal.SIGTERM)
        code = ui.wait(timeout=120)
    assert code == 0, tail(log)
    deadline = time.monotonic() + 5  # a SIGKILLed process takes a moment to go
    while (left := sorted(pid for pid in started if alive(pid))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, "alive after SIGTERM: " + "; ".join(
        Path(f"/proc/{pid}/cmdline").read_text(errors="replace").replace("\0", " ") for pid in left
    )
    assert not [name for name, port in ports.items() if listening(port)]
    # PostgreSQL runs detached (pg_ctl); a clean stop removes its pid file.
    assert (home / "postgres" / "PG_VERSION").exists(), "make ui ran on PostgreSQL"
    assert not (home / "postgres" / "postmaster.pid").exists(), "PostgreSQL still running"
