"""Render the IAM policy templates of this folder for one use-case config.

Templates (plain IAM JSON with ``${Name}`` placeholders):

* ``airflow-role-policy.json``: what the DAG's tasks call (the role of the Airflow workers and
  triggerer, i.e. of the ``aws_default`` connection);
* ``sagemaker-execution-role-policy.json``: what SageMaker does with the jobs' ``RoleArn``;
* ``sagemaker-execution-role-trust.json``: who may assume that role (SageMaker, this account).

Placeholders: ``Partition``, ``Region``, ``AccountId`` (default: the account of the config's
``role_arn``), ``Bucket``, ``Prefix``, ``UseCase``, ``JobNamePrefix`` (``short_name``: every job
name starts with it, see ``mlops_sagemaker.naming``), ``ModelPackageGroup``,
``ExecutionRoleArn``, ``KmsKeyArn``, ``VolumeKmsKeyArn`` and ``ImageRepositoryArn`` (the ECR
repository of the configured scikit-learn image). SageMaker lower-cases resource names in ARNs,
so the job prefix and group are lower-cased. Statements that only matter for an option that is
off are dropped: any statement using an empty ``KmsKeyArn``/``VolumeKmsKeyArn``, and the
``Vpc*`` statements when the config has no subnets.

    python -m iam.render --config include/config/tpch_orders.yaml --region eu-west-1 --out build/iam
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TEMPLATES = {
    "airflow-role-policy": HERE / "airflow-role-policy.json",
    # Attached to the same Airflow role when the use case has an endpoint section.
    "airflow-endpoint-policy": HERE / "airflow-endpoint-policy.json",
    "sagemaker-execution-role-policy": HERE / "sagemaker-execution-role-policy.json",
    "sagemaker-execution-role-trust": HERE / "sagemaker-execution-role-trust.json",
    # Deployment guardrails read the rollback alarms with the execution role ("Auto-Rollback
    # Configuration and Monitoring", SageMaker developer guide).
    "sagemaker-execution-role-endpoint-policy": HERE
    / "sagemaker-execution-role-endpoint-policy.json",
}
_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")
_ROLE_ARN = re.compile(r"^arn:(?P<partition>[\w-]+):iam::(?P<account>\d{12}):role/[\w+=,.@/-]+$")
_KEY_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_QUEUE_URL = re.compile(r"^https?://[^/]+/(?P<account>\d{12})/(?P<name>[\w-]{1,80})$")
_IMAGE = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[\w-]+)\.[\w.]+/(?P<repo>[^:@]+)")


def kms_key_arn(key: str, partition: str, region: str, account: str) -> str:
    """The key ARN IAM evaluates for a config's KMS key (an ARN or a bare key id). An alias
    is refused: KMS authorizes a key's use on the key's ARN, never on an alias ARN."""
    if not key or (key.startswith(f"arn:{partition}:kms:") and ":key/" in key):
        return key
    if _KEY_ID.match(key):
        return f"arn:{partition}:kms:{region}:{account}:key/{key}"
    raise ValueError(f"KMS key {key!r}: give the key ARN or key id in the config, not an alias")


def image_repository_arn(image_uri: str, partition: str) -> str:
    """``arn:...:ecr:<region>:<registry account>:repository/<repo>`` of an ECR image URI."""
    match = _IMAGE.match(image_uri)
    if match is None:
        raise ValueError(f"{image_uri!r} is not an ECR image URI")
    region, account, repo = match.group("region", "account", "repo")
    return f"arn:{partition}:ecr:{region}:{account}:repository/{repo}"


def queue_arn(url: str | None, partition: str, region: str) -> str:
    """The SQS queue ARN of a queue URL (``https://sqs.<region>.amazonaws.com/<account>/<name>``)."""
    if not url:
        return ""
    match = _QUEUE_URL.match(url)
    if match is None:
        raise ValueError(f"{url!r} is not an SQS queue URL (https://<host>/<account>/<name>)")
    return f"arn:{partition}:sqs:{region}:{match.group('account')}:{match.group('name')}"


def parameters(
    config: Any, region: str, image_uri: str, account_id: str | None = None
) -> dict[str, str]:
    """The placeholder values for ``config`` (a ``mlops_sagemaker.config.UseCase``)."""
    settings = config.sagemaker
    role = _ROLE_ARN.match(settings.role_arn)
    if role is None:
        raise ValueError(f"role_arn {settings.role_arn!r} is not an IAM role ARN")
    partition, account = role.group("partition"), account_id or role.group("account")
    network, notes = settings.network, config.notifications
    return {
        "Partition": partition,
        "Region": region,
        "AccountId": account,
        "Bucket": config.storage.bucket,
        "Prefix": config.storage.prefix.strip("/"),
        "UseCase": config.use_case,
        "JobNamePrefix": config.short_name.lower(),
        "ModelPackageGroup": config.model_package_group.lower(),
        "ExecutionRoleArn": settings.role_arn,
        "KmsKeyArn": kms_key_arn(network.kms_key_id, partition, region, account),
        "VolumeKmsKeyArn": kms_key_arn(network.volume_kms_key_id, partition, region, account),
        "ImageRepositoryArn": image_repository_arn(image_uri, partition),
        "ApprovalQueueArn": queue_arn(
            config.endpoint.approval_events_queue_url if config.endpoint else None,
            partition,
            region,
        ),
        "NotificationTopicArn": (notes.sns_topic_arn or "") if notes else "",
        "NotificationQueueArn": queue_arn(
            notes.sqs_queue_url if notes else None, partition, region
        ),
        "_Vpc": "yes" if network.vpc.subnets else "",
    }


def _substitute(value: Any, params: dict[str, str]) -> Any:
    if isinstance(value, str):

        def one(match: re.Match[str]) -> str:
            if match.group(1) not in params:
                raise KeyError(f"unknown placeholder ${{{match.group(1)}}}")
            return params[match.group(1)]

        return _PLACEHOLDER.sub(one, value)
    if isinstance(value, list):
        return [_substitute(v, params) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, params) for k, v in value.items()}
    return value


def _applies(statement: dict[str, Any], params: dict[str, str]) -> bool:
    used = set(_PLACEHOLDER.findall(json.dumps(statement)))
    optional = {
        "KmsKeyArn", "VolumeKmsKeyArn", "ApprovalQueueArn", "NotificationTopicArn",
        "NotificationQueueArn",
    }  # fmt: skip
    if any(not params.get(name) for name in used & optional):
        return False
    return not statement.get("Sid", "").startswith("Vpc") or bool(params.get("_Vpc"))


def render(template: str, params: dict[str, str]) -> dict[str, Any]:
    """The policy document ``template`` (a key of ``TEMPLATES``) with ``params`` filled in."""
    document = json.loads(TEMPLATES[template].read_text())
    statements = [s for s in document["Statement"] if _applies(s, params)]
    return {**document, "Statement": _substitute(statements, params)}


def render_all(config: Any, region: str, account_id: str | None = None) -> dict[str, Any]:
    """Every template rendered for ``config``; resolves the image (imports the SageMaker SDK)."""
    from mlops_sagemaker.tasks import resolve_image

    params = parameters(config, region, resolve_image(config, region), account_id)
    names = [n for n in TEMPLATES if config.endpoint is not None or "endpoint" not in n]
    return {name: render(name, params) for name in names}


def main(argv: list[str] | None = None) -> None:
    """Command line: write ``<out>/<template>.json`` for one use-case config."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="a use-case YAML")
    parser.add_argument("--region", required=True)
    parser.add_argument("--account-id", help="default: the account of the config's role_arn")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    # The package lives in plugins/ (Airflow puts that folder on sys.path; a shell does not).
    sys.path.insert(0, str(HERE.parent / "plugins"))
    from mlops_sagemaker.config import load_use_case

    args.out.mkdir(parents=True, exist_ok=True)
    for name, document in render_all(
        load_use_case(args.config), args.region, args.account_id
    ).items():
        (args.out / f"{name}.json").write_text(json.dumps(document, indent=2) + "\n")
        print(args.out / f"{name}.json")


if __name__ == "__main__":
    main()
