"""What a training run produced, read back from the local endpoint (used by the demo and tests)."""

from __future__ import annotations

import json
from typing import Any

from local_stack.stack import LocalStack


def training_summary(
    stack: LocalStack, use_case: str, group: str, ds: str, s3_prefix: str = "mlops"
) -> dict[str, Any]:
    """Rows extracted, tuning jobs and best objective, evaluation vs gate, registered version."""
    s3, sm = stack.client("s3"), stack.client("sagemaker")
    prefix = f"{s3_prefix}/{use_case}/training/{ds}"
    manifest = json.loads(
        s3.get_object(Bucket=stack.bucket, Key=f"{prefix}/extract/manifest.json")["Body"].read()
    )
    ds_nodash = ds.replace("-", "")
    tunings = [
        t
        for t in sm.list_hyper_parameter_tuning_jobs(MaxResults=100)[
            "HyperParameterTuningJobSummaries"
        ]
        if f"-{ds_nodash}-" in t["HyperParameterTuningJobName"]
    ]
    summary: dict[str, Any] = {"run_date": ds, "rows_extracted": manifest["row_count"]}
    if tunings:
        tuning = sm.describe_hyper_parameter_tuning_job(
            HyperParameterTuningJobName=tunings[0]["HyperParameterTuningJobName"]
        )
        best = tuning.get("BestTrainingJob", {})
        summary["tuning"] = {
            "name": tuning["HyperParameterTuningJobName"],
            "status": tuning["HyperParameterTuningJobStatus"],
            "training_jobs": tuning["TrainingJobStatusCounters"],
            "best_training_job": best.get("TrainingJobName"),
            "best_objective": best.get("FinalHyperParameterTuningJobObjectiveMetric"),
            "best_hyperparameters": best.get("TunedHyperParameters"),
        }
    try:
        body = s3.get_object(Bucket=stack.bucket, Key=f"{prefix}/evaluation/evaluation.json")
        evaluation = json.loads(body["Body"].read())
        metrics = evaluation["binary_classification_metrics"]
        summary["evaluation"] = {
            name: round(metrics[name]["value"], 4)
            for name in ("auc", "accuracy", "precision", "recall", "f1")
            if name in metrics
        }
        summary["evaluation_baseline"] = evaluation.get("baseline")
    except s3.exceptions.NoSuchKey:
        summary["evaluation"] = None
    versions = []
    try:
        packages = sm.list_model_packages(
            ModelPackageGroupName=group, SortBy="CreationTime", SortOrder="Descending"
        )["ModelPackageSummaryList"]
    except sm.exceptions.ClientError:
        packages = []
    for package in packages:
        described = sm.describe_model_package(ModelPackageName=package["ModelPackageArn"])
        if described.get("CustomerMetadataProperties", {}).get("run_date") == ds:
            versions.append(
                {
                    "arn": package["ModelPackageArn"],
                    "status": described["ModelApprovalStatus"],
                    "metadata": described.get("CustomerMetadataProperties", {}),
                }
            )
    summary["registered_versions"] = versions
    return summary


def batch_summary(stack: LocalStack, use_case: str, ds: str, s3_prefix: str = "mlops") -> dict:
    """Rows scored, the model version used, the checks' result, the drift report and where the
    predictions are, for a batch-inference run of ``ds`` (read back from the local endpoint)."""
    s3, sm = stack.client("s3"), stack.client("sagemaker")
    root = f"{s3_prefix}/{use_case}/batch_inference"

    def document(key: str) -> dict | None:
        try:
            return json.loads(s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read())
        except s3.exceptions.NoSuchKey:
            return None

    published = document(f"{root}/predictions/ds={ds}/_manifest.json")
    summary: dict[str, Any] = {
        "run_date": ds,
        "extracted": document(f"{root}/{ds}/extract/manifest.json"),
        "predictions": published,
        "predictions_uri": f"s3://{stack.bucket}/{root}/predictions/ds={ds}/",
        "drift": document(f"{root}/{ds}/drift/report.json"),
    }
    if published:
        described = sm.describe_model_package(ModelPackageName=published["model_package_arn"])
        summary["model_version"] = {
            "arn": described["ModelPackageArn"],
            "version": described.get("ModelPackageVersion"),
            "status": described["ModelApprovalStatus"],
            "approval": described.get("ApprovalDescription", ""),
            "trained_for": described.get("CustomerMetadataProperties", {}).get("run_date"),
        }
    return summary
