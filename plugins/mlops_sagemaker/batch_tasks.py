"""Task bodies of the batch-inference DAG (the wiring is in ``batch_dag.py``).

They run in the Airflow worker, take AWS clients as arguments so that they can be tested against
the local stack, and hand named payloads to the next task.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlops_sagemaker.config import UseCase
from mlops_sagemaker.failures import ClassifiedError
from mlops_sagemaker.inference_requests import model_request, transform_request
from mlops_sagemaker.model_registry import (
    ModelChoice,
    ModelVersion,
    NoModelVersion,
    auto_approve,
    describe_version,
)
from mlops_sagemaker.naming import RunPaths
from mlops_sagemaker.payloads import ExtractManifest, Payload
from mlops_sagemaker.sagemaker_requests import RunInfo, run_paths, tags

if TYPE_CHECKING:
    from mlops_sagemaker.drift import DriftReport

log = logging.getLogger(__name__)


class BatchInputError(ClassifiedError):
    """The batch query's columns do not match the dataset's key + features (permanent)."""

    category = "data"


def paths(config: UseCase, ds: str) -> RunPaths:
    """The S3 layout of the batch run for ``ds``."""
    return run_paths(config, ds, "batch_inference")


def predictions_root(config: UseCase) -> str:
    """``s3://`` root of the predictions table: one ``ds=YYYY-MM-DD/`` partition per run."""
    storage = config.storage
    return f"s3://{storage.bucket}/{storage.prefix}/{config.use_case}/batch_inference/predictions/"


def check_input_columns(config: UseCase, manifest: ExtractManifest) -> None:
    """The extraction must hold the key column then the features in dataset order: the
    transform drops the first column and sends the rest to the model in that order."""
    expected = [config.dataset.key_column, *config.dataset.feature_columns]
    got = manifest.column_names
    if got != expected:
        raise BatchInputError(
            f"The batch query returns columns {got}; expected exactly {expected} (the key "
            f"column, then dataset.feature_columns in order). Fix "
            f"{config.sql_dir}/{config.need_batch().query}."
        )


def approve_automatically(conn: Any, config: UseCase, choice: ModelChoice, run_id: str) -> str:
    """``auto`` mode: approve the pending candidate when its registered metric passes the gate;
    returns what was decided (for the log and the XCom)."""
    if choice.pending is None:
        return "no pending version newer than the approved one: nothing to approve"
    gate = config.approval_gate()
    approved, reason = auto_approve(
        conn,
        choice.pending,
        metric=gate.metric,
        threshold=gate.threshold,
        approver=f"Airflow auto-approval ({run_id})",
    )
    verdict = "approved" if approved else "left pending"
    return f"version {choice.pending.version} {verdict}: {reason}"


def version_to_use(conn: Any, choice: ModelChoice) -> ModelVersion:
    """The version to score with after the approval step: the candidate if it is Approved by
    now, else the approved one; ``NoModelVersion`` when neither is usable."""
    if choice.pending is not None:
        current = describe_version(conn, choice.pending.arn)
        if current.status == "Approved":
            return current
        if choice.approved is None:
            raise NoModelVersion(
                f"No Approved model version to score with in group {current.group} (selection "
                f"{choice.selection}): the candidate, version {current.version}, is "
                f"{current.status} and no earlier version is Approved. Approve it in the "
                "registry or lower the gate, then clear this task."
            )
    if choice.approved is None:
        raise NoModelVersion(f"No Approved model version (selection {choice.selection}).")
    return choice.approved


def plan_model(config: UseCase, version: ModelVersion) -> dict[str, Any]:
    """CreateModel request for ``version`` (content-addressed name, reused across run dates)."""
    return model_request(
        short_name=config.short_name,
        use_case=config.use_case,
        model_package_arn=version.arn,
        role_arn=config.sagemaker.role_arn,
        network=config.sagemaker.network,
        base_tags=config.sagemaker.tags,
    )


def plan_transform(
    config: UseCase, run: RunInfo, model_name: str, manifest: ExtractManifest
) -> dict[str, Any]:
    """CreateTransformJob request over the run's extracted CSV parts."""
    resources = config.need_batch().transform
    network = config.sagemaker.network
    ds = run.ds
    return transform_request(
        short_name=config.short_name,
        ds=ds,
        model_name=model_name,
        input_uri=manifest.data_uri,
        output_uri=paths(config, ds).uri("transform", ""),
        data_fingerprint=manifest.data_fingerprint(),
        instance_type=resources.instance_type,
        instance_count=resources.instance_count,
        max_payload_mb=resources.max_payload_mb,
        max_concurrent_transforms=resources.max_concurrent_transforms,
        invocations_timeout_seconds=resources.invocations_timeout_seconds,
        invocations_max_retries=resources.invocations_max_retries,
        kms_key_id=network.kms_key_id,
        volume_kms_key_id=network.volume_kms_key_id,
        tags=tags(config, run, "transform"),
    )


@dataclass(frozen=True)
class DriftOutcome(Payload):
    """What the drift step found: the worst level, per-feature PSI and where the report is."""

    level: str
    psi: dict[str, float]
    report_uri: str
    note: str = ""
    warnings: tuple[str, ...] = ()  # features at warn level or above


def _s3_parts(s3: Any, manifest: ExtractManifest) -> Any:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from mlops_sagemaker.extract import part_uris, read_part  # pyarrow: not at parse time

    document = manifest.as_xcom()
    for uri in part_uris(document):  # one part in memory at a time
        bucket, key = S3Hook.parse_s3_url(uri)
        yield read_part(s3.get_object(Bucket=bucket, Key=key)["Body"].read(), document)


def measure_drift(
    s3: Any, config: UseCase, ds: str, version: ModelVersion, manifest: ExtractManifest
) -> tuple[DriftOutcome, DriftReport | None]:
    """PSI of every feature of the batch against the version's training baseline; writes the
    report JSON under the run's ``drift/`` prefix. A version without a usable baseline gives
    level ``unknown`` (logged), never a failure: drift must not stop scoring."""
    from mlops_sagemaker.drift import DriftAccumulator, DriftBaselineError, DriftInputError

    settings = config.need_batch().drift
    target = paths(config, ds)
    report_uri = target.uri("drift", "report.json")
    if not version.baseline_uri:
        note = f"version {version.version} has no DriftCheckBaselines: drift not measured"
        return DriftOutcome("unknown", {}, "", note), None
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    bucket, key = S3Hook.parse_s3_url(version.baseline_uri)
    baseline = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    try:
        accumulator = DriftAccumulator(baseline, config.dataset.feature_columns)
        for table in _s3_parts(s3, manifest):
            accumulator.add(table)
        report = accumulator.report(
            settings.warn,
            settings.retrain,
            baseline_uri=version.baseline_uri,
            model_package_arn=version.arn,
        )
    except (DriftBaselineError, DriftInputError) as err:
        return DriftOutcome("unknown", {}, "", str(err)), None
    document = {**report.as_json(), "ds": ds}
    s3.put_object(
        Bucket=target.bucket,
        Key=target.key("drift", "report.json"),
        Body=json.dumps(document, indent=2, sort_keys=True).encode(),
        ContentType="application/json",
    )
    psi = {f.feature: round(f.psi, 6) for f in report.features}
    warnings = tuple(sorted(f.feature for f in report.features if f.level != "ok"))
    return DriftOutcome(report.level, psi, report_uri, warnings=warnings), report
