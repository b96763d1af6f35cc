"""An approval made outside Airflow starts the endpoint DAG, under a real scheduler and triggerer.

The local stack's registry emits SageMaker's "Model Package State Change" event on
``UpdateModelPackage``; moto's EventBridge routes it (the rule ``approval_events`` sets up) to
the SQS queue; the production-shaped Airflow (``local_stack.airflow_services``: scheduler,
triggerer, DAG processor, API server, PostgreSQL) runs the endpoint DAG's ``AssetWatcher`` with the Amazon provider's ``SqsSensorTrigger``; the Asset
event queues an ``asset_triggered`` run whose ``version`` task resolves the approved version.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from e2e_support import free_port, include_copy, rest, wait_for

from local_stack.airflow_services import AirflowServices
from local_stack.stack import LocalStack

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
    extra = {
        **env,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
    }
    with (
        tempfile.TemporaryDirectory(prefix="mlops-pg-") as pgdata,
        AirflowServices(stack, port=free_port(), extra_env=extra, pgdata=Path(pgdata)) as airflow,
    ):
        base = airflow.base_url
        token = wait_for("a token", lambda: rest(f"{base}/auth/token"), 60)["access_token"]
        dag = f"{base}/api/v2/dags/{ENDPOINT}"
        wait_for("the endpoint DAG", lambda: rest(dag, token=token), 300)
        assert rest(dag, "PATCH", {"is_paused": False}, token) is not None
        stack.client("sagemaker").update_model_package(
            ModelPackageArn=pending, ModelApprovalStatus="Approved", ApprovalDescription="Studio"
        )
        runs = wait_for(
            "an asset-triggered run",
            lambda: (rest(f"{dag}/dagRuns", token=token) or {}).get("dag_runs"),
            300,
        )
        (run,) = runs
        assert run["run_type"] == "asset_triggered"
        xcom = f"{dag}/dagRuns/{run['dag_run_id']}/taskInstances/version/xcomEntries/return_value?deserialize=true&stringify=false"
        value = wait_for(
            "the version task", lambda: (rest(xcom, token=token) or {}).get("value"), 300
        )
        assert (value["arn"], value["status"]) == (pending, "Approved")
