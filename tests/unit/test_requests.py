"""Requests and SQL the training DAG would send, for several run dates.

Every SageMaker request is validated against every rule of botocore's ``sagemaker`` service
model (``local_stack.sagemaker_runtime.validation``, the validator the local runtime uses), the
SQL is parsed as Presto SQL, and names are unique per date and within SageMaker's limits.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlglot

from local_stack.sagemaker_runtime import validation
from mlops_sagemaker import tasks
from mlops_sagemaker.config import load_use_case
from mlops_sagemaker.naming import MAX_NAME, MAX_TUNING_NAME
from mlops_sagemaker.payloads import ExtractManifest, StagedCode
from mlops_sagemaker.sagemaker_requests import RunInfo
from mlops_sagemaker.training_dag import build_training_dag

ROOT = Path(__file__).resolve().parents[2]
CONFIG = load_use_case(ROOT / "include/config/tpch_orders.yaml")
RUN_DATES = ["1993-01-01", "1996-02-29", "1996-12-31", "1997-01-01", "1998-08-02"]
IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"


def validate(operation: str, request: dict) -> None:
    found = validation.violations(operation, request)
    assert not found, validation.report(found)


def staged() -> StagedCode:
    code = "s3://mlops-local/mlops/tpch_orders/code/0123456789ab"
    return StagedCode(
        version="0123456789ab",
        scripts_uri=f"{code}/scripts/",
        sourcedir_uri=f"{code}/sourcedir.tar.gz",
        image_uri=IMAGE,
        region="us-east-1",
    )


def run_for(ds: str) -> RunInfo:
    start = datetime.fromisoformat(ds).replace(tzinfo=UTC)
    return RunInfo(
        ds=ds,
        data_interval_start=start.isoformat(),
        data_interval_end=(start + timedelta(days=1)).isoformat(),
        run_id=f"scheduled__{ds}T00:00:00+00:00",
    )


def plans_for(ds: str) -> dict[str, dict]:
    """All requests of one run, each built from the previous step's (simulated) describe output."""
    run, code = run_for(ds), staged()
    base = f"s3://mlops-local/mlops/tpch_orders/training/{ds}"
    manifest = ExtractManifest(
        data_uri=f"{base}/extract/data/",
        row_count=2300,
        parts=[{"key": "part-00000.parquet", "rows": 2300}],
        columns=[{"name": "orderkey", "presto_type": "bigint"}],
    )
    split = tasks.plan_split(CONFIG, run, code, manifest)
    split_result = {"Processing": split}
    tuning = tasks.plan_tuning(CONFIG, run, code, split_result)
    best = f"{tuning['HyperParameterTuningJobName']}-003-0a1b2c3d"
    model = tasks.best_model(
        {
            "Tuning": {
                "HyperParameterTuningJobName": tuning["HyperParameterTuningJobName"],
                "BestTrainingJob": {
                    "TrainingJobName": best,
                    "TunedHyperParameters": {"n_estimators": "80"},
                    "FinalHyperParameterTuningJobObjectiveMetric": {
                        "MetricName": "validation:auc",
                        "Value": 0.8,
                    },
                },
            }
        },
        lambda name: {
            "ModelArtifacts": {"S3ModelArtifacts": f"{base}/tuning/{name}/output/model.tar.gz"}
        },
    )
    evaluation = tasks.plan_evaluation(CONFIG, run, code, split_result, model)
    gate = tasks.quality_gate(
        CONFIG,
        {"binary_classification_metrics": {"auc": {"value": 0.8}}},
        None,
        f"{base}/evaluation/evaluation.json",
    )
    registration = tasks.plan_registration(
        CONFIG, run, code, model, gate, manifest, f"{base}/split/baseline/baseline.json",
        {"train": 1600, "validation": 350, "test": 350},
    )  # fmt: skip
    return {
        "split": split,
        "tuning": tuning,
        "evaluation": evaluation,
        "registration": registration,
    }


@pytest.mark.parametrize("ds", RUN_DATES)
def test_requests_are_valid_for_botocore(ds: str) -> None:
    plans = plans_for(ds)
    validate("CreateProcessingJob", plans["split"])
    validate("CreateHyperParameterTuningJob", plans["tuning"])
    validate("CreateProcessingJob", plans["evaluation"])
    validate("CreateModelPackage", plans["registration"]["extras"])
    validate("CreateModelPackageGroup", plans["registration"]["package_group"])
    # A versioned package takes its group's tags and cannot carry its own (botocore's docs).
    assert "Tags" not in plans["registration"]["extras"]
    assert {"Key": "mlops:use-case", "Value": "tpch_orders"} in plans["registration"][
        "package_group"
    ]["Tags"]


def test_validator_rejects_a_too_long_tuning_job_name_with_aws_wording() -> None:
    tuning = {**plans_for("1996-02-29")["tuning"], "HyperParameterTuningJobName": "a" * 33}
    with pytest.raises(validation.RequestRejected) as err:
        validation.check("CreateHyperParameterTuningJob", tuning)
    assert err.value.code == "ValidationException"
    value = "a" * 33
    assert err.value.message == (
        f"2 validation errors detected: Value '{value}' at 'hyperParameterTuningJobName' failed "
        "to satisfy constraint: Member must satisfy regular expression pattern: "
        f"[a-zA-Z0-9](-*[a-zA-Z0-9]){{0,31}}; Value '{value}' at 'hyperParameterTuningJobName' "
        "failed to satisfy constraint: Member must have length less than or equal to 32"
    )


def test_validator_rejects_a_bad_enum_with_aws_wording() -> None:
    request = {**plans_for("1996-02-29")["registration"]["extras"]}
    request["ModelApprovalStatus"] = "Pending"
    with pytest.raises(validation.RequestRejected) as err:
        validation.check("CreateModelPackage", request)
    assert err.value.message == (
        "1 validation error detected: Value 'Pending' at 'modelApprovalStatus' failed to satisfy "
        "constraint: Member must satisfy enum value set: [Approved, Rejected, "
        "PendingManualApproval]"
    )


def test_validator_paths_for_nested_lists_and_maps() -> None:
    request = {**plans_for("1996-02-29")["registration"]["extras"]}
    spec = request["InferenceSpecification"]
    container = {**spec["Containers"][0], "Image": "x" * 300}
    request["InferenceSpecification"] = {**spec, "Containers": [container]}
    request["CustomerMetadataProperties"] = {"bad key!": "v"}
    messages = [v.message() for v in validation.violations("CreateModelPackage", request)]
    assert any(
        "at 'inferenceSpecification.containers.1.member.image' failed to satisfy constraint: "
        "Member must have length less than or equal to 255" in m
        for m in messages
    ), messages
    assert any(
        m.startswith(
            "Value '{bad key!=v}' at 'customerMetadataProperties' failed to satisfy "
            "constraint: Map keys must satisfy constraint: [Member must have length"
        )
        for m in messages
    ), messages


def test_validator_translates_java_only_patterns() -> None:
    # Unicode classes (\\p{L}): what Python's re cannot compile.
    ok = {"ResourceArn": "arn:aws:sagemaker:us-east-1:123456789012:model/m",
          "Tags": [{"Key": "équipe", "Value": "données"}]}  # fmt: skip
    assert validation.violations("AddTags", ok) == []
    bad = {**ok, "Tags": [{"Key": "team", "Value": "a,b 😀"}]}
    (found,) = validation.violations("AddTags", bad)
    assert found.path == "tags.1.member.value"
    assert found.constraint.startswith("Member must satisfy regular expression pattern: ")
    # A Java surrogate-pair range is one range of supplementary code points.
    catalog = validation.java_pattern(r"[\u0020-\uD7FF\uE000-\uFFFD\uD800\uDC00-\uDBFF\uDFFF\t]*")
    assert catalog.fullmatch("data 😀\t") and not catalog.fullmatch("a\nb")


def test_validator_refuses_wrong_types_and_unknown_members_like_the_deserializer() -> None:
    with pytest.raises(validation.RequestRejected) as err:
        validation.violations("ListTrainingJobs", {"MaxResults": "10"})
    assert err.value.code == "SerializationException"
    with pytest.raises(validation.RequestRejected) as err:
        validation.violations("ListTrainingJobs", {"MaxResult": 10})
    assert err.value.code == "SerializationException"


@pytest.mark.parametrize("ds", RUN_DATES)
def test_names_fit_limits_and_paths_are_per_date(ds: str) -> None:
    plans = plans_for(ds)
    names = [
        plans["split"]["ProcessingJobName"],
        plans["tuning"]["HyperParameterTuningJobName"],
        plans["evaluation"]["ProcessingJobName"],
    ]
    assert all(ds.replace("-", "") in name for name in names)
    assert len(plans["tuning"]["HyperParameterTuningJobName"]) <= MAX_TUNING_NAME
    # AWS appends "-NNN-xxxxxxxx" to a tuning job's name for its training jobs.
    assert len(plans["tuning"]["HyperParameterTuningJobName"]) + 13 <= MAX_NAME
    assert all(len(name) <= MAX_NAME for name in names)
    for output in plans["split"]["ProcessingOutputConfig"]["Outputs"]:
        assert f"/training/{ds}/split/" in output["S3Output"]["S3Uri"]
    extras = plans["registration"]["extras"]
    assert extras["CustomerMetadataProperties"]["run_date"] == ds
    assert extras["ModelApprovalStatus"] == "PendingManualApproval"


def test_names_unique_across_dates() -> None:
    names = [
        plan[key]
        for ds in RUN_DATES
        for plan, key in (
            (plans_for(ds)["split"], "ProcessingJobName"),
            (plans_for(ds)["tuning"], "HyperParameterTuningJobName"),
            (plans_for(ds)["evaluation"], "ProcessingJobName"),
        )
    ]
    assert len(names) == len(set(names))


def test_same_inputs_same_names_new_data_new_names() -> None:
    assert plans_for("1996-02-29") == plans_for("1996-02-29")
    run, code = run_for("1996-02-29"), staged()
    manifest = ExtractManifest(data_uri="s3://b/k/", row_count=10, parts=[], columns=[])
    changed = dataclasses.replace(manifest, row_count=11)
    assert (
        tasks.plan_split(CONFIG, run, code, manifest)["ProcessingJobName"]
        != tasks.plan_split(CONFIG, run, code, changed)["ProcessingJobName"]
    )


def test_no_secret_shaped_values_in_requests() -> None:
    text = repr(plans_for("1996-02-29")).lower()
    for word in ("password", "secret", "aws_access_key", "token=", "presto://"):
        assert word not in text


@pytest.fixture(scope="module")
def dag():
    return build_training_dag(CONFIG, ROOT / "include")


def render(dag, task_id: str, ds: str) -> str:
    task = dag.get_task(task_id)
    start = datetime.fromisoformat(ds).replace(tzinfo=UTC)
    context = {
        "ds": ds,
        "data_interval_start": start,
        "data_interval_end": start + timedelta(days=1),
        "params": {},
    }
    return task.render_template(task.sql, context, dag.get_template_env())


@pytest.mark.parametrize("ds", RUN_DATES)
def test_rendered_sql_is_presto_sql_with_the_right_window(dag, ds: str) -> None:
    sql = render(dag, "extract", ds)
    sqlglot.parse_one(sql, read="presto")
    end = datetime.fromisoformat(ds).date() + timedelta(days=1)
    start = end - timedelta(days=CONFIG.need_training().lookback_days)
    assert f"o.orderdate >= DATE '{start.isoformat()}'" in sql
    assert f"o.orderdate < DATE '{end.isoformat()}'" in sql
    assert "tpch.tiny.orders" in sql
    assert "random" not in sql.lower()
    arrival = render(dag, "wait_for_data", ds)
    sqlglot.parse_one(arrival, read="presto")
    assert f"DATE '{ds}'" in arrival


def test_undefined_template_variable_is_an_error(dag) -> None:
    import jinja2

    with pytest.raises(jinja2.UndefinedError):
        dag.get_template_env().from_string("SELECT {{ no_such_value }}").render({})
