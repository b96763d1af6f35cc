"""An approval made outside Airflow starts the endpoint DAG, under a real scheduler and triggerer.

The local stack's registry emits SageMaker's "Model Package State Change" event on
``UpdateModelPackage``; moto's EventBridge routes it (the rule ``approval_events`` sets up) to
the SQS queue; ``airflow standalone`` (scheduler, triggerer, DAG processor, API server) runs the
endpoint DAG's ``AssetWatcher`` with the Amazon provider's ``SqsSensorTrigger``; the Asset
event queues an ``asset_triggered`` run whose ``version`` task resolves the approved version.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from e2e_support import free_port, include_copy, rest, wait_for

from local_stack.stack import LocalStack
from local_stack.ui import airflow_ui_env

ENDPOINT = "mlops_tpch_orders_endpoint"
GROUP = "tpch-orders-late-delivery"
QUEUE_LINE = "  # approval_events_queue_url: https://sqs.<region>.amazonaws.com/<account>/<queue>"


def _version(stack: LocalStack, status: str) -> str:
    sm, bucket = stack.client("sagemaker"), stack.bucket
    stack.client("s3").put_object(Bucket=bucket, Key="models/model.tar.gz", Body=b"unused")
    sm.create_model_package_group(ModelPackageGroupName=GROUP)  # the module's stack is new
    image = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.4-2-cpu-py3"
    return sm.create_model_package(
        ModelPackageGroupName=GROUP,
        ModelApprovalStatus=status,
        InferenceSpecification={
            "Containers": [{"Image": image, "ModelDataUrl": f"s3://{bucket}/models/model.tar.gz"}],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["text/csv"],
        },
    )["ModelPackageArn"]


def test_a_boto3_approval_triggers_an_endpoint_run(stack: LocalStack, tmp_path: Path) -> None:
    from mlops_sagemaker.approval_events import ensure_approval_events

    url = ensure_approval_events(
        stack.client("events"), stack.client("sqs"), short_name="tpch-ord", group=GROUP, tags={}
    )
    env = include_copy(
        tmp_path, {QUEUE_LINE: f"  approval_events_queue_url: {url}\n  poll_interval_seconds: 2"}
    )
    pending = _version(stack, "PendingManualApproval")
    port = free_port()
    log = tmp_path / "standalone.log"
    with open(log, "wb") as out:
        airflow = subprocess.Popen(
            [str(Path(sys.executable).parent / "airflow"), "standalone"],
            env={
                **airflow_ui_env(stack, str(port)),
                **env,
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            },
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    base = f"http://localhost:{port}"
    try:
        wait_for("the API server", lambda: rest(f"{base}/api/v2/monitor/health"), 300, airflow)
        token = wait_for("a token", lambda: rest(f"{base}/auth/token"), 60)["access_token"]
        dag = f"{base}/api/v2/dags/{ENDPOINT}"
        wait_for("the endpoint DAG", lambda: rest(dag, token=token), 300, airflow)
        assert rest(dag, "PATCH", {"is_paused": False}, token) is not None
        stack.client("sagemaker").update_model_package(
            ModelPackageArn=pending, ModelApprovalStatus="Approved", ApprovalDescription="Studio"
        )
        runs = wait_for(
            "an asset-triggered run",
            lambda: (rest(f"{dag}/dagRuns", token=token) or {}).get("dag_runs"),
            300,
            airflow,
        )
        (run,) = runs
        assert run["run_type"] == "asset_triggered"
        xcom = f"{dag}/dagRuns/{run['dag_run_id']}/taskInstances/version/xcomEntries/return_value?deserialize=true&stringify=false"
        value = wait_for(
            "the version task", lambda: (rest(xcom, token=token) or {}).get("value"), 300, airflow
        )
        assert (value["arn"], value["status"]) == (pending, "Approved")
    except AssertionError as err:
        tail = log.read_text(errors="replace")[-4000:]
        raise AssertionError(f"{err}\n--- airflow standalone ---\n{tail}") from err
    finally:
        os.killpg(airflow.pid, signal.SIGTERM)
        airflow.wait(timeout=60)
