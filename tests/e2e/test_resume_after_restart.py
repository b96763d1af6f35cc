"""The training DAG survives a crash of the local AWS endpoint between runs.

A run registers a model version; the endpoint is then killed with SIGKILL (no chance to save
anything more) and started again on its work folder. A re-run for the same date must find the
same jobs and the same model version (0 new SageMaker jobs, no second Asset event), as it would
on AWS, where nothing is lost when a client restarts. Before the endpoint kept its state, the
restart lost the jobs, the objects and the registry, and the re-run started everything again.
Kept small for CI: ``tpch.tiny``, two tuning jobs.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest
from test_training_dag import GROUP, ROOT, asset_event_arns, free_port, job_counts, run_dag

from local_stack.stack import LocalStack
from local_stack.summary import training_summary

DS = "1996-02-29"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("restart-stack")
    with LocalStack(
        presto_port=free_port(), aws_port=free_port(), home=Path(home), clean=True
    ) as running:
        running.migrate_db()
        yield running


def two_job_include(tmp_path: Path) -> dict[str, str]:
    include = tmp_path / "include"
    shutil.copytree(ROOT / "include", include)
    config = include / "config" / "tpch_orders.yaml"
    text = config.read_text()
    assert "  max_jobs: 4" in text
    config.write_text(text.replace("  max_jobs: 4", "  max_jobs: 2"))
    return {"MLOPS_INCLUDE_DIR": str(include)}


def test_rerun_after_an_endpoint_crash_reuses_every_job_and_the_version(stack, tmp_path) -> None:
    env = two_job_include(tmp_path)
    code, log = run_dag(stack, DS, env=env)
    assert code == 0, log[-5000:]
    (version,) = training_summary(stack, "tpch_orders", GROUP, DS)["registered_versions"]
    before = job_counts(stack)
    assert before["tuning"] == 1 and before["training"] == 2

    stack.restart_aws(signal.SIGKILL)

    assert job_counts(stack) == before, "the restart lost jobs"
    code, log = run_dag(stack, DS, env=env)
    assert code == 0, log[-5000:]
    assert "already completed for this input; reusing it" in log
    assert job_counts(stack) == before, "the re-run started new SageMaker jobs"
    again = training_summary(stack, "tpch_orders", GROUP, DS)
    assert [v["arn"] for v in again["registered_versions"]] == [version["arn"]]
    assert again["tuning"]["status"] == "Completed"
    assert asset_event_arns(stack) == [version["arn"]], "a re-run emitted a second Asset event"
