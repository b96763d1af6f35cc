"""Test-session environment: an isolated AIRFLOW_HOME, no examples, no real AWS credentials."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Set before anything imports Airflow or boto3.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="airflow-test-home-")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
for _var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
    os.environ.pop(_var, None)
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

for _path in (ROOT / "plugins", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


# The longest modules (minutes each, measured in CI) start first: with `-n 2 --dist loadfile`
# a long module left for last would run alone while the other worker idles.
LONGEST_FIRST = (
    "e2e/test_scheduler.py",
    "e2e/test_ui_browser.py",
    "e2e/test_endpoint_dag.py",
    "e2e/test_recorded_requests.py",
    "e2e/test_failure_modes.py",
    "e2e/test_training_unload.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the collected tests by module length (``LONGEST_FIRST``), keeping the order of
    the tests inside each module (they share the module's stack and run in file order)."""

    def rank(item: pytest.Item) -> int:
        path = item.path.as_posix()
        return next(
            (i for i, m in enumerate(LONGEST_FIRST) if path.endswith(m)), len(LONGEST_FIRST)
        )

    items.sort(key=rank)  # a stable sort


@pytest.fixture
def aws_default_at(monkeypatch):
    """``aws_default_at(endpoint_url)``: point the Airflow connection ``aws_default`` at a local
    endpoint (S3 via moto, or the local AWS endpoint), as the DAG's connection would."""

    def point(endpoint_url: str, region: str = "us-east-1") -> None:
        extra = {"endpoint_url": endpoint_url, "region_name": region}
        conn = {"conn_type": "aws", "login": "testing", "password": "testing", "extra": extra}
        monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(conn))

    return point


@pytest.fixture
def presto_conn(presto, monkeypatch) -> dict:
    """``presto_default`` pointing at the module's ``presto`` stand-in fixture (tpch.tiny)."""
    conn = {
        "conn_type": "presto",
        "host": "127.0.0.1",
        "port": presto.port,
        "login": "airflow",
        "schema": "tiny",
        "extra": {"catalog": "tpch"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_PRESTO_DEFAULT", json.dumps(conn))
    return conn
