"""Task bodies of the training DAG: each plans one request or checks one result.

They run in the Airflow worker, call AWS only through the provider's hooks, and hand named
payloads (``payloads.py``) to the next task through XCom. Kept apart from the DAG wiring so that
they can be unit-tested.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from mlops_sagemaker.config import Schedule, UseCase
from mlops_sagemaker.failures import ClassifiedError
from mlops_sagemaker.model_artifact import ensure_model_with_code
from mlops_sagemaker.naming import code_key
from mlops_sagemaker.payloads import BestModel, ExtractManifest, GateResult, StagedCode
from mlops_sagemaker.sagemaker_requests import (
    CodeLocations,
    RunInfo,
    baseline_request,
    evaluation_request,
    model_package_group_request,
    registration_request,
    split_request,
    tuning_request,
)


class QualityGateFailed(ClassifiedError):
    """The evaluated model is below the threshold: it must not be registered (permanent)."""

    category = "quality-gate"


class RunDateOutOfRange(ClassifiedError):
    """A run's logical date is outside the config's schedule range (permanent)."""

    category = "config"


def check_run_date(config: UseCase, pipeline: str, logical_date: datetime | None) -> str:
    """The run date (``YYYY-MM-DD``) if within the ``pipeline`` section's
    ``schedule.start_date`` … ``end_date``.

    Manual runs and backfills for other dates fail loudly: the config's range is where the
    use case has data (for TPC-H 1992-01-01 … 1998-08-02); widen it to run elsewhere."""
    if logical_date is None:
        raise RunDateOutOfRange("This DAG needs a logical date (run date); the run has none.")
    day = logical_date.date()
    schedule: Schedule = getattr(config, pipeline).schedule
    start, end = schedule.start_date, schedule.end_date
    if day < start or (end is not None and day > end):
        allowed = f"{start} … {end}" if end else f"from {start}"
        raise RunDateOutOfRange(
            f"Run date {day} is outside the configured range {allowed} ({pipeline}.schedule."
            f"start_date/end_date of use case {config.use_case}): nothing was run. Pick a date "
            "in the range, or widen the range in the config."
        )
    return day.isoformat()


def run_info(context: Mapping[str, Any]) -> RunInfo:
    """The run's dates and id from an Airflow task context."""
    return RunInfo(
        ds=context["ds"],
        data_interval_start=context["data_interval_start"].isoformat(),
        data_interval_end=context["data_interval_end"].isoformat(),
        run_id=context["run_id"],
    )


def resolve_image(config: UseCase, region: str) -> str:
    """The scikit-learn container image for the region (or the config's override).

    Imports the SageMaker SDK here, at run time: it takes seconds to import.
    """
    if config.sagemaker.image_uri:
        return config.sagemaker.image_uri
    from sagemaker.core import image_uris

    return image_uris.retrieve(
        "sklearn",
        region=region,
        version=config.sagemaker.sklearn_framework_version,
        py_version=config.sagemaker.python_version,
        instance_type=config.sagemaker.training.instance_type,
    )


def stage_code(config: UseCase, step_code_dir: Path, aws_conn_id: str) -> StagedCode:
    """Upload the content-addressed step code once; return its locations, image and region."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from mlops_sagemaker.code_bundle import build_bundle

    bundle = build_bundle(step_code_dir)
    s3 = S3Hook(aws_conn_id=aws_conn_id)
    bucket, prefix, use_case = config.storage.bucket, config.storage.prefix, config.use_case
    objects = {f"scripts/{name}": data for name, data in bundle.files.items()}
    objects["sourcedir.tar.gz"] = bundle.tarball
    for name, data in objects.items():
        key = code_key(prefix, use_case, bundle.version, name)
        # Content-addressed: an existing key already holds exactly these bytes.
        if not s3.check_for_key(key, bucket_name=bucket):
            s3.load_bytes(data, key=key, bucket_name=bucket, replace=True)

    def uri(name: str) -> str:
        return f"s3://{bucket}/{code_key(prefix, use_case, bundle.version, name)}"

    region = s3.conn_region_name or "us-east-1"
    return StagedCode(
        version=bundle.version,
        scripts_uri=uri("scripts/"),
        sourcedir_uri=uri("sourcedir.tar.gz"),
        image_uri=resolve_image(config, region),
        region=region,
    )


def _code(staged: StagedCode) -> CodeLocations:
    return CodeLocations(
        version=staged.version, scripts_uri=staged.scripts_uri, sourcedir_uri=staged.sourcedir_uri
    )


def plan_split(
    config: UseCase, run: RunInfo, staged: StagedCode, manifest: ExtractManifest
) -> dict[str, Any]:
    """The split job's request; its name changes only when the extracted data changes."""
    return split_request(
        config, run, _code(staged), staged.image_uri, manifest.data_uri, manifest.data_fingerprint()
    )


def plan_baseline(
    config: UseCase, run: RunInfo, staged: StagedCode, split_result: Mapping[str, Any]
) -> dict[str, Any]:
    """The baseline job's request over a sharded split's outputs (``presto_unload``)."""
    return baseline_request(
        config,
        run,
        _code(staged),
        staged.image_uri,
        processing_outputs(split_result),
        split_result["Processing"]["ProcessingJobName"],
    )


def processing_outputs(result: Mapping[str, Any]) -> dict[str, str]:
    """Output name -> S3 URI from a processing operator's describe output."""
    outputs = result["Processing"]["ProcessingOutputConfig"]["Outputs"]
    return {o["OutputName"]: o["S3Output"]["S3Uri"] for o in outputs}


def plan_tuning(
    config: UseCase, run: RunInfo, staged: StagedCode, split_result: Mapping[str, Any]
) -> dict[str, Any]:
    """The tuning job's request, reading the split's outputs from its describe output."""
    return tuning_request(
        config,
        run,
        _code(staged),
        staged.image_uri,
        staged.region,
        processing_outputs(split_result),
        split_result["Processing"]["ProcessingJobName"],
    )


def best_model(tuning_result: Mapping[str, Any], describe_training_job: Any) -> BestModel:
    """The best training job's name, objective and model artifact (from its describe output)."""
    best = tuning_result["Tuning"]["BestTrainingJob"]
    described = describe_training_job(best["TrainingJobName"])
    return BestModel(
        training_job_name=best["TrainingJobName"],
        objective=best["FinalHyperParameterTuningJobObjectiveMetric"],
        hyperparameters=best["TunedHyperParameters"],
        model_data_url=described["ModelArtifacts"]["S3ModelArtifacts"],
        tuning_job_name=tuning_result["Tuning"]["HyperParameterTuningJobName"],
        training_jobs=tuning_result["Tuning"].get("TrainingJobStatusCounters", {}),
    )


def plan_evaluation(
    config: UseCase,
    run: RunInfo,
    staged: StagedCode,
    split_result: Mapping[str, Any],
    model: BestModel,
) -> dict[str, Any]:
    """The evaluation job's request for the best model on the test split."""
    return evaluation_request(
        config,
        run,
        _code(staged),
        staged.image_uri,
        model.model_data_url,
        processing_outputs(split_result)["test"],
    )


def evaluation_uri(evaluation_result: Mapping[str, Any]) -> str:
    """S3 URI of evaluation.json, from the evaluation job's describe output."""
    return processing_outputs(evaluation_result)["evaluation"].rstrip("/") + "/evaluation.json"


def quality_gate(
    config: UseCase, evaluation: Mapping[str, Any], threshold: float | None, evaluation_uri: str
) -> GateResult:
    """Compare the configured metric with the threshold; raise ``QualityGateFailed`` below it."""
    gate = config.need_training().evaluation
    metric = gate.metric
    limit = gate.threshold if threshold is None else float(threshold)
    try:
        value = float(evaluation["binary_classification_metrics"][metric]["value"])
    except (KeyError, TypeError, ValueError) as err:
        raise QualityGateFailed(f"evaluation.json has no usable {metric} value: {err!r}") from err
    baseline = evaluation.get("baseline", {})
    if value < limit:
        raise QualityGateFailed(
            f"{metric} {value:.2f} < threshold {limit:.2f}: model not registered "
            f"(majority-class baseline: {json.dumps(baseline, sort_keys=True)})"
        )
    return GateResult(
        metric=metric,
        value=value,
        threshold=limit,
        baseline=baseline,
        evaluation_uri=evaluation_uri,
    )


def plan_registration(
    config: UseCase,
    run: RunInfo,
    staged: StagedCode,
    model: BestModel,
    gate: GateResult,
    manifest: ExtractManifest,
    baseline_uri: str,
    split_counts: Mapping[str, Any],
    *,
    s3_client: Any = None,
) -> dict[str, Any]:
    """Keyword arguments of the register operator (templated from this XCom): the full
    CreateModelPackage request as ``extras``, and the group to create first.

    With network isolation the registered container serves the best model repacked with the
    step code (``model_artifact.ensure_model_with_code``, uploaded next to the model through
    ``s3_client``, a boto3 S3 client); without it ``s3_client`` is not used."""
    metadata = {
        "use_case": config.use_case,
        "run_date": run.ds,
        "data_interval_start": run.data_interval_start,
        "data_interval_end": run.data_interval_end,
        "dag_run_id": run.run_id,
        "tuning_job": model.tuning_job_name,
        "training_job": model.training_job_name,
        "rows_extracted": manifest.row_count,
        **{f"rows_{name}": count for name, count in split_counts.items()},
        "code_version": staged.version,
        f"test_{gate.metric}": f"{gate.value:.6f}",
        "gate_threshold": gate.threshold,
    }
    request = registration_request(
        config,
        run,
        _code(staged),
        staged.image_uri,
        staged.region,
        model.model_data_url,
        gate.evaluation_uri,
        baseline_uri,
        metadata,
        model_with_code_url=_model_with_code(config, staged, model, s3_client),
    )
    return {
        "image_uri": staged.image_uri,
        "model_url": request["InferenceSpecification"]["Containers"][0]["ModelDataUrl"],
        "package_group_name": request["ModelPackageGroupName"],
        "package_desc": request["ModelPackageDescription"],
        "extras": request,
        "package_group": model_package_group_request(config),
    }


def _model_with_code(
    config: UseCase, staged: StagedCode, model: BestModel, s3_client: Any
) -> str | None:
    """The repacked artifact an isolated model needs (see ``model_artifact``), else ``None``."""
    network = config.sagemaker.network
    if not network.enable_network_isolation:
        return None
    if s3_client is None:
        raise ClassifiedError(
            "Network isolation is on, so the model must be repacked with its code, but "
            "plan_registration got no s3_client: pass S3Hook(...).get_conn()",
            category="request",
        )
    return ensure_model_with_code(
        s3_client, model.model_data_url, staged.sourcedir_uri, kms_key_id=network.kms_key_id
    )
