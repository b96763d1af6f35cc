"""With network isolation the tuning request ships the code as the ``code`` input channel.

An isolated training container cannot download ``sagemaker_submit_directory`` from S3, so the
SageMaker Python SDK (v2 ``estimator.py``, ``_prepare_for_training``) adds the channel ``code``
holding ``sourcedir.tar.gz`` and points the hyperparameter at
``/opt/ml/input/data/code/sourcedir.tar.gz``. Without isolation nothing changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import botocore.session
from botocore.validate import ParamValidator

from mlops_sagemaker.config import load_use_case
from mlops_sagemaker.sagemaker_requests import (
    CodeLocations,
    RunInfo,
    split_request,
    tuning_request,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIG = load_use_case(ROOT / "include/config/tpch_orders.yaml")
MODEL = botocore.session.get_session().get_service_model("sagemaker")
IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
CODE_ROOT = "s3://mlops-local/mlops/tpch_orders/code/0123456789ab"
CODE = CodeLocations("0123456789ab", f"{CODE_ROOT}/scripts/", f"{CODE_ROOT}/sourcedir.tar.gz")
RUN = RunInfo("1996-02-29", "1996-02-28T00:00:00+00:00", "1996-02-29T00:00:00+00:00", "manual")
SPLIT = {
    name: f"s3://mlops-local/mlops/tpch_orders/training/1996-02-29/split/{name}/"
    for name in ("train", "validation", "test", "baseline")
}


def _config(isolated: bool):
    network = CONFIG.sagemaker.network.model_copy(update={"enable_network_isolation": isolated})
    sagemaker = CONFIG.sagemaker.model_copy(update={"network": network})
    return CONFIG.model_copy(update={"sagemaker": sagemaker})


def _tuning(isolated: bool) -> dict:
    request = tuning_request(_config(isolated), RUN, CODE, IMAGE, "us-east-1", SPLIT, "split-job")
    report = ParamValidator().validate(
        request, MODEL.operation_model("CreateHyperParameterTuningJob").input_shape
    )
    assert not report.has_errors(), report.generate_report()
    return request


def test_isolated_tuning_gets_the_code_channel_and_the_channel_path() -> None:
    definition = _tuning(isolated=True)["TrainingJobDefinition"]
    assert definition["EnableNetworkIsolation"] is True
    channels = {c["ChannelName"]: c for c in definition["InputDataConfig"]}
    assert list(channels) == ["train", "validation", "code"]
    assert channels["code"] == {
        "ChannelName": "code",
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "S3Prefix",
                "S3Uri": f"{CODE_ROOT}/sourcedir.tar.gz",
                "S3DataDistributionType": "FullyReplicated",
            }
        },
        "CompressionType": "None",
    }
    static = definition["StaticHyperParameters"]
    assert json.loads(static["sagemaker_submit_directory"]) == (
        "/opt/ml/input/data/code/sourcedir.tar.gz"
    )
    assert json.loads(static["sagemaker_program"]) == "train.py"
    assert not any("s3://" in value for value in static.values())


def test_without_isolation_the_code_stays_an_s3_hyperparameter() -> None:
    definition = _tuning(isolated=False)["TrainingJobDefinition"]
    assert definition["EnableNetworkIsolation"] is False
    assert [c["ChannelName"] for c in definition["InputDataConfig"]] == ["train", "validation"]
    static = definition["StaticHyperParameters"]
    assert json.loads(static["sagemaker_submit_directory"]) == f"{CODE_ROOT}/sourcedir.tar.gz"


def test_isolation_changes_the_tuning_job_name() -> None:
    """A switched isolation setting is a different request: a new job, not a reused one."""
    on, off = _tuning(isolated=True), _tuning(isolated=False)
    assert on["HyperParameterTuningJobName"] != off["HyperParameterTuningJobName"]


def test_processing_jobs_get_the_code_as_a_processing_input_either_way() -> None:
    """Processing needs no change: the scripts already arrive as a ``ProcessingInput``, which
    SageMaker downloads before the container starts."""
    split = split_request(_config(True), RUN, CODE, IMAGE, "s3://mlops-local/x/data/", "rows")
    assert split["NetworkConfig"]["EnableNetworkIsolation"] is True
    code = [i for i in split["ProcessingInputs"] if i["InputName"] == "code"]
    assert code[0]["S3Input"]["S3Uri"] == CODE.scripts_uri
    assert code[0]["S3Input"]["LocalPath"] == "/opt/ml/processing/input/code"
    assert split["AppSpecification"]["ContainerEntrypoint"][1].startswith(
        "/opt/ml/processing/input/code/"
    )
