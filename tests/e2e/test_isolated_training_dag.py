"""The training DAG with ``sagemaker.network.enable_network_isolation: true``, end to end.

The local runtime gives isolated jobs no endpoint, no credentials and (where the kernel allows)
no network, so this run only succeeds if every job gets what it needs through its inputs: the
processing jobs their scripts as a ``ProcessingInput``, the training jobs their code as the
``code`` channel. Kept small for CI: ``tpch.tiny``, two tuning jobs.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest

from local_stack.stack import LocalStack
from local_stack.summary import training_summary

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "mlops_tpch_orders_training"
GROUP = "tpch-orders-late-delivery"
DS = "1996-02-29"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _isolated_include(tmp_path: Path) -> Path:
    """An include/ copy whose config turns isolation on and tunes two jobs."""
    include = tmp_path / "include"
    shutil.copytree(ROOT / "include", include)
    config = include / "config" / "tpch_orders.yaml"
    text = config.read_text()
    assert "  schema: tiny" in text
    for old, new in (
        ("    enable_network_isolation: false", "    enable_network_isolation: true"),
        ("  max_jobs: 4", "  max_jobs: 2"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    config.write_text(text)
    return include


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("isolated-stack")
    with LocalStack(presto_port=_free_port(), aws_port=_free_port(), home=Path(home)) as running:
        running.migrate_db()
        yield running


def test_isolated_training_dag_registers_a_model(stack, tmp_path) -> None:
    include = _isolated_include(tmp_path)
    result = stack.airflow(
        "dags", "test", DAG_ID, DS, "--conf", json.dumps({"sagemaker_check_interval_seconds": 1}),
        check=False, extra_env={"MLOPS_INCLUDE_DIR": str(include)},
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]

    sm = stack.client("sagemaker")
    processing = sm.list_processing_jobs(MaxResults=100)["ProcessingJobSummaries"]
    assert len(processing) == 2  # split and evaluation
    for job in processing:
        described = sm.describe_processing_job(ProcessingJobName=job["ProcessingJobName"])
        assert described["NetworkConfig"]["EnableNetworkIsolation"] is True

    summary = training_summary(stack, "tpch_orders", GROUP, DS)
    assert summary["tuning"]["status"] == "Completed"
    assert summary["tuning"]["training_jobs"]["Completed"] == 2
    children = sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"]
    assert len(children) == 2
    for child in children:
        described = sm.describe_training_job(TrainingJobName=child["TrainingJobName"])
        assert described["EnableNetworkIsolation"] is True
        channels = {c["ChannelName"]: c for c in described["InputDataConfig"]}
        assert set(channels) == {"train", "validation", "code"}
        code_uri = channels["code"]["DataSource"]["S3DataSource"]["S3Uri"]
        assert code_uri.endswith("/sourcedir.tar.gz")
        assert json.loads(described["HyperParameters"]["sagemaker_submit_directory"]) == (
            "/opt/ml/input/data/code/sourcedir.tar.gz"
        )

    (version,) = summary["registered_versions"]
    assert version["status"] == "PendingManualApproval"
    assert version["metadata"]["run_date"] == DS
