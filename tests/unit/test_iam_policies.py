"""The IAM policy templates in iam/: valid IAM, scoped to the use case, rendered per option.

Whether they grant exactly what the DAGs call is checked against the calls the local endpoint
records in tests/e2e/test_training_dag.py; here: parliament (duo-labs/parliament, whose
``iam_definition.json`` is the AWS Service Authorization Reference as data) finds no unknown
action, no resource an action cannot be scoped to and no malformed condition; placeholders are
all filled; the KMS/VPC statements appear only with their option; the evaluator used by the e2e
test denies what IAM would deny; the endpoint's recorder maps requests to the right IAM actions.
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import parliament
import pytest

from iam import evaluate, render
from local_stack.aws_endpoint import LocalAwsEndpoint
from local_stack.sagemaker_runtime.runtime import EXECUTION_ROLE_ACCESS_KEY_ID
from mlops_sagemaker.config import Notifications, load_use_case

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "include" / "config" / "tpch_orders.yaml"
IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.4-2-cpu-py3"
KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
VOLUME_KEY_ID = "abcd1234-ab12-cd34-ef56-abcdef123456"


def config(all_options: bool = False):
    """The shipped use case, or a copy with KMS keys and a VPC switched on."""
    use_case = load_use_case(CONFIG)
    if not all_options:
        return use_case
    network = use_case.sagemaker.network.model_copy(
        update={
            "kms_key_id": KEY,
            "volume_kms_key_id": VOLUME_KEY_ID,
            "vpc": use_case.sagemaker.network.vpc.model_copy(
                update={"subnets": ["subnet-0123456789abcdef0"], "security_group_ids": ["sg-1"]}
            ),
        }
    )
    sagemaker = use_case.sagemaker.model_copy(update={"network": network})
    queue = "https://sqs.us-east-1.amazonaws.com/123456789012/tpch-ord-approvals"
    endpoint = use_case.endpoint.model_copy(update={"approval_events_queue_url": queue})
    notes = Notifications(
        sns_topic_arn="arn:aws:sns:us-east-1:123456789012:tpch-ord-events",
        sqs_queue_url="https://sqs.us-east-1.amazonaws.com/123456789012/tpch-ord-events",
    )
    return use_case.model_copy(
        update={"sagemaker": sagemaker, "endpoint": endpoint, "notifications": notes}
    )


def rendered(all_options: bool = False) -> dict[str, dict]:
    params = render.parameters(config(all_options), "us-east-1", IMAGE)
    return {name: render.render(name, params) for name in render.TEMPLATES}


@pytest.mark.parametrize("all_options", [False, True])
def test_parliament_finds_nothing_wrong(all_options: bool) -> None:
    """The identity policies (parliament audits those; the trust policy is a resource policy)."""
    documents = rendered(all_options)
    for name in (
        "airflow-role-policy",
        "airflow-endpoint-policy",
        "sagemaker-execution-role-policy",
    ):
        document = documents[name]
        findings = parliament.analyze_policy_string(json.dumps(document)).findings
        assert [(f.issue, f.detail) for f in findings] == [], name


def test_the_approval_queue_statement_only_with_a_queue() -> None:
    def sids(all_options: bool) -> list[str]:
        return [s["Sid"] for s in rendered(all_options)["airflow-endpoint-policy"]["Statement"]]

    assert "ApprovalEventsQueueForTheTriggerer" not in sids(False)
    statement = rendered(True)["airflow-endpoint-policy"]["Statement"][-1]
    assert statement["Resource"] == "arn:aws:sqs:us-east-1:123456789012:tpch-ord-approvals"


def test_notification_statements_only_with_their_targets() -> None:
    def grants(all_options: bool) -> dict[str, tuple[str, str]]:
        statements = rendered(all_options)["airflow-role-policy"]["Statement"]
        return {
            s["Sid"]: (s["Action"], s["Resource"])
            for s in statements
            if s["Sid"].startswith("Notifications")
        }

    assert grants(False) == {}
    assert grants(True) == {
        "NotificationsToTheUseCasesTopic": (
            "sns:Publish", "arn:aws:sns:us-east-1:123456789012:tpch-ord-events"),
        "NotificationsToTheUseCasesQueue": (
            "sqs:SendMessage", "arn:aws:sqs:us-east-1:123456789012:tpch-ord-events"),
    }  # fmt: skip


def test_every_placeholder_is_filled_and_names_are_scoped() -> None:
    for name, document in rendered(all_options=True).items():
        text = json.dumps(document)
        assert "${" not in text, name
    airflow = rendered()["airflow-role-policy"]
    resources = [r for s in airflow["Statement"] for r in evaluate._as_list(s["Resource"])]
    assert "arn:aws:sagemaker:us-east-1:123456789012:processing-job/tpch-ord-*" in resources
    assert "arn:aws:s3:::mlops-local/mlops/tpch_orders/*" in resources
    assert "arn:aws:iam::123456789012:role/SageMakerExecutionRole" in resources
    # "*" only for actions without resource-level permissions (List*, Describe* of EC2, ...):
    # parliament's RESOURCE_STAR finding above fails any other.
    assert any(s["Resource"] == "*" for s in airflow["Statement"])


def test_optional_statements_appear_only_with_their_option() -> None:
    def sids(documents: dict[str, dict]) -> set[str]:
        return {s["Sid"] for d in documents.values() for s in d["Statement"]}

    off, on = sids(rendered()), sids(rendered(all_options=True))
    optional = {"KmsForJobOutputsAndTheRepackedModel", "KmsOutputEncryption", "KmsVolumeEncryption"}
    optional |= {"VpcNetworkInterfaces", "VpcDescribeHasNoResourceLevelPermissions"}
    optional |= {"ApprovalEventsQueueForTheTriggerer"}
    optional |= {"NotificationsToTheUseCasesTopic", "NotificationsToTheUseCasesQueue"}
    assert optional.isdisjoint(off)
    assert on - off == optional
    execution = rendered(all_options=True)["sagemaker-execution-role-policy"]
    grant = next(s for s in execution["Statement"] if s["Sid"] == "KmsVolumeEncryption")
    assert grant["Resource"] == f"arn:aws:kms:us-east-1:123456789012:key/{VOLUME_KEY_ID}"
    with pytest.raises(ValueError, match="alias"):
        render.kms_key_arn("alias/ml", "aws", "us-east-1", "123456789012")


def test_not_exercised_allow_list_only_names_granted_actions() -> None:
    """A stale allow-list entry would hide nothing but mislead readers: every entry must be an
    action its role's policy grants (with every option on)."""
    documents = rendered(all_options=True)
    for role, templates in (
        ("airflow", ("airflow-role-policy", "airflow-endpoint-policy")),
        ("execution-role", ("sagemaker-execution-role-policy",)),
    ):
        statements = [s for t in templates for s in documents[t]["Statement"]]
        actions = {a for s in statements for a in evaluate._as_list(s["Action"])}
        grants = {
            f"{s.get('Sid')}: {a}" for s in statements for a in evaluate._as_list(s["Action"])
        }
        assert set(evaluate.NOT_EXERCISED_LOCALLY[role]) <= actions | grants, role


def test_evaluator_denies_what_iam_would_deny() -> None:
    airflow = rendered()["airflow-role-policy"]
    prefix = "arn:aws:sagemaker:us-east-1:123456789012"

    def call(action: str, resource: str, **context: str) -> dict:
        return {"action": action, "resource": resource, "context": context}

    allowed = call("sagemaker:CreateProcessingJob", f"{prefix}:processing-job/tpch-ord-1-prep-1")
    assert evaluate.denied(airflow, [allowed]) == []
    other_use_case = call("sagemaker:CreateProcessingJob", f"{prefix}:processing-job/other-1")
    other_prefix = call("s3:GetObject", "arn:aws:s3:::mlops-local/other/x")
    passed_to_ec2 = call(
        "iam:PassRole",
        "arn:aws:iam::123456789012:role/SageMakerExecutionRole",
        **{"iam:PassedToService": "ec2.amazonaws.com"},
    )
    list_elsewhere = call("s3:ListBucket", "arn:aws:s3:::mlops-local", **{"s3:prefix": "other/"})
    tags_later = call(
        "sagemaker:AddTags",
        f"{prefix}:processing-job/tpch-ord-1",
        **{"sagemaker:TaggingAction": "AddTags"},
    )
    for bad in (other_use_case, other_prefix, passed_to_ec2, list_elsewhere, tags_later):
        assert evaluate.denied(airflow, [bad]) != [], bad
    assert "PassTheExecutionRoleToSageMakerOnly: iam:PassRole" in evaluate.unused(
        airflow, [allowed], "airflow"
    )


def test_recorder_maps_requests_to_iam_actions_and_principals() -> None:
    """Real boto3 calls against the endpoint; each comes back as the IAM action it needs."""
    with LocalAwsEndpoint(port=0) as endpoint:
        common = {"endpoint_url": endpoint.url, "region_name": "us-east-1"}
        harness = {**common, "aws_access_key_id": "local", "aws_secret_access_key": "x"}
        s3 = boto3.client("s3", **harness)
        s3.create_bucket(Bucket="bkt")
        s3.put_object(Bucket="bkt", Key="p/a b.txt", Body=b"x")
        s3.head_object(Bucket="bkt", Key="p/a b.txt")
        s3.list_objects_v2(Bucket="bkt", Prefix="p/")
        s3.delete_objects(Bucket="bkt", Delete={"Objects": [{"Key": "p/a b.txt"}]})
        role = {**common, "aws_access_key_id": EXECUTION_ROLE_ACCESS_KEY_ID}
        sm = boto3.client("sagemaker", **role, aws_secret_access_key="x")
        with pytest.raises(sm.exceptions.ClientError):
            sm.describe_processing_job(ProcessingJobName="Job-A")
        calls = endpoint.recorder.calls()
    got = [(c["principal"], c["operation"], c["action"], c["resource"]) for c in calls]
    assert got == [
        ("other", "CreateBucket", "s3:CreateBucket", "arn:aws:s3:::bkt"),
        ("other", "PutObject", "s3:PutObject", "arn:aws:s3:::bkt/p/a b.txt"),
        ("other", "HeadObject", "s3:GetObject", "arn:aws:s3:::bkt/p/a b.txt"),
        ("other", "ListObjectsV2", "s3:ListBucket", "arn:aws:s3:::bkt"),
        ("other", "DeleteObjects", "s3:DeleteObject", "arn:aws:s3:::bkt/p/a b.txt"),
        (
            "execution-role",
            "DescribeProcessingJob",
            "sagemaker:DescribeProcessingJob",
            "arn:aws:sagemaker:us-east-1:123456789012:processing-job/job-a",
        ),
    ]
    assert calls[3]["context"] == {"s3:prefix": "p/"}


def test_recorder_scopes_notifications_to_their_topic_and_queue() -> None:
    with LocalAwsEndpoint(port=0) as endpoint:
        common = {"endpoint_url": endpoint.url, "region_name": "us-east-1"}
        keys = {"aws_access_key_id": "local", "aws_secret_access_key": "x"}
        sns, sqs = boto3.client("sns", **common, **keys), boto3.client("sqs", **common, **keys)
        topic = sns.create_topic(Name="events")["TopicArn"]
        queue = sqs.create_queue(QueueName="events")["QueueUrl"]
        endpoint.recorder.clear()
        sns.publish(TopicArn=topic, Message="m")
        sqs.send_message(QueueUrl=queue, MessageBody="m")
        got = [(c["action"], c["resource"]) for c in endpoint.recorder.calls()]
    assert got == [
        ("sns:Publish", topic),
        ("sqs:SendMessage", "arn:aws:sqs:us-east-1:123456789012:events"),
    ]


def test_recorder_scopes_deletes_and_scaling_calls_to_their_resources() -> None:
    """Deletes of endpoint resources name them; scalable-target actions are evaluated on a
    ``scalable-target`` ARN (never ``*``), one per target; describes stay ``*``."""
    with LocalAwsEndpoint(port=0) as endpoint:
        common = {"endpoint_url": endpoint.url, "region_name": "us-east-1"}
        keys = {"aws_access_key_id": "local", "aws_secret_access_key": "x"}
        sm = boto3.client("sagemaker", **common, **keys)
        scaling = boto3.client("application-autoscaling", **common, **keys)
        for delete, name in (
            (sm.delete_endpoint, {"EndpointName": "Ep-A"}),
            (sm.delete_endpoint_config, {"EndpointConfigName": "Cfg-A"}),
            (sm.delete_model, {"ModelName": "Model-A"}),
        ):
            with pytest.raises(sm.exceptions.ClientError):
                delete(**name)
        for variant in ("a", "b"):
            scaling.register_scalable_target(
                ServiceNamespace="sagemaker",
                ResourceId=f"endpoint/ep/variant/{variant}",
                ScalableDimension="sagemaker:variant:DesiredInstanceCount",
                MinCapacity=1,
                MaxCapacity=2,
            )
        scaling.describe_scalable_targets(ServiceNamespace="sagemaker")
        calls = endpoint.recorder.calls()
    where = "us-east-1:123456789012"
    assert [c["resource"] for c in calls[:3]] == [
        f"arn:aws:sagemaker:{where}:endpoint/ep-a",
        f"arn:aws:sagemaker:{where}:endpoint-config/cfg-a",
        f"arn:aws:sagemaker:{where}:model/model-a",
    ]
    first, second, described = calls[3:]
    prefix = f"arn:aws:application-autoscaling:{where}:scalable-target/"
    assert first["resource"].startswith(prefix) and second["resource"].startswith(prefix)
    assert first["resource"] != second["resource"]
    assert described["resource"] == "*"


def test_parliament_catches_a_list_action_scoped_to_a_resource() -> None:
    """Negative control: ListProcessingJobs has no resource-level permissions, so scoping it
    to the use case's jobs grants nothing; parliament reports it from the AWS reference data."""
    document = rendered()["airflow-role-policy"]
    jobs = next(s for s in document["Statement"] if s["Sid"] == "SageMakerJobsOfTheUseCase")
    jobs["Action"] = [*jobs["Action"], "sagemaker:ListProcessingJobs"]
    issues = {f.issue for f in parliament.analyze_policy_string(json.dumps(document)).findings}
    assert "RESOURCE_MISMATCH" in issues
