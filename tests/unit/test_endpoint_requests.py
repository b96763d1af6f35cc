"""The endpoint DAG's requests, planned from the shipped config for every stage and setting.

SageMaker requests are checked by botocore's ``ParamValidator`` and every other rule of the
``sagemaker`` service model (``local_stack.sagemaker_runtime.validation``); CloudWatch and
Application Auto Scaling requests by ``ParamValidator`` with those services' models. Names are
stable for the same content and change with it.
"""

from __future__ import annotations

from pathlib import Path

import botocore.session
import pytest
import yaml
from botocore.validate import ParamValidator

from local_stack.sagemaker_runtime import validation
from mlops_sagemaker.config import ConfigError, load_use_case
from mlops_sagemaker.endpoint_requests import ALARM_SUFFIXES, deployment_config, update_request
from mlops_sagemaker.endpoint_tasks import DeploymentFailed, deployed, plan_stage
from mlops_sagemaker.model_registry import ModelVersion

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "include/config/tpch_orders.yaml"
PACKAGE = "arn:aws:sagemaker:us-east-1:123456789012:model-package/tpch-orders-late-delivery/7"
_SESSION = botocore.session.get_session()


def version(arn: str = PACKAGE) -> ModelVersion:
    return ModelVersion(
        arn=arn,
        group="tpch-orders-late-delivery",
        version=int(arn.rsplit("/", 1)[1]),
        status="Approved",
        run_date="1996-02-29",
        metrics={"auc": 0.8},
        created="",
        evaluation_uri="s3://b/e/evaluation.json",
        baseline_uri=None,
        description="",
    )


def config_with(tmp_path: Path, **endpoint):
    raw = yaml.safe_load(SHIPPED.read_text())
    raw["endpoint"].update(endpoint)
    path = tmp_path / "tpch_orders.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_use_case(path)


def check(service: str, operation: str, request: dict) -> None:
    shape = _SESSION.get_service_model(service).operation_model(operation).input_shape
    report = ParamValidator().validate(request, shape)
    assert not report.has_errors(), report.generate_report()
    if service == "sagemaker":
        found = validation.violations(operation, request)
        assert not found, validation.report(found)


@pytest.mark.parametrize("capture", [False, True])
def test_every_stage_plans_valid_requests(tmp_path, capture) -> None:
    config = config_with(tmp_path, data_capture={"enabled": capture, "sampling_percentage": 50})
    for stage in config.need_endpoint().stages:
        plan = plan_stage(config, stage, "tpch-ord-mdl-0123456789", version())
        check("sagemaker", "CreateEndpointConfig", plan.endpoint_config)
        check(
            "sagemaker",
            "UpdateEndpoint",
            update_request(
                plan.endpoint_name, plan.config_name, plan.deployment, retain_count=True
            ),
        )
        check(
            "sagemaker",
            "CreateEndpoint",
            {"EndpointName": plan.endpoint_name, "EndpointConfigName": plan.config_name},
        )
        for alarm in plan.alarms:
            check("cloudwatch", "PutMetricAlarm", alarm)
        check("application-autoscaling", "RegisterScalableTarget", plan.scalable_target)
        check("application-autoscaling", "PutScalingPolicy", plan.scaling_policy)
        assert ("DataCaptureConfig" in plan.endpoint_config) is capture
        assert plan.endpoint_name == f"tpch-ord-{stage.name}"
        assert [a["AlarmName"] for a in plan.alarms] == [plan.config_name + s for s in ALARM_SUFFIXES]  # fmt: skip


def test_config_names_are_content_addressed(tmp_path) -> None:
    config = config_with(tmp_path)
    staging, production = config.need_endpoint().stages
    a = plan_stage(config, staging, "tpch-ord-mdl-0123456789", version())
    assert a == plan_stage(config, staging, "tpch-ord-mdl-0123456789", version()), "stable"
    other_model = plan_stage(config, staging, "tpch-ord-mdl-abcdefabcd", version())
    other_stage = plan_stage(config, production, "tpch-ord-mdl-0123456789", version())
    assert len({a.config_name, other_model.config_name, other_stage.config_name}) == 3
    assert a.config_name.startswith("tpch-ord-staging-ec-") and len(a.config_name) <= 63


def test_traffic_shift_types_and_rollback_alarms() -> None:
    from mlops_sagemaker.endpoint_requests import ShiftSettings

    canary = deployment_config(ShiftSettings("CANARY", 25, 30, 60, 900), ["a-5xx", "a-latency"])
    routing = canary["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
    assert routing["CanarySize"] == {"Type": "CAPACITY_PERCENT", "Value": 25}
    assert canary["AutoRollbackConfiguration"]["Alarms"] == [{"AlarmName": "a-5xx"}, {"AlarmName": "a-latency"}]  # fmt: skip
    linear = deployment_config(ShiftSettings("LINEAR", 50, 30, 60, 900), [])
    assert "LinearStepSize" in linear["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
    assert "AutoRollbackConfiguration" not in linear
    for config in (canary, linear):
        check("sagemaker", "UpdateEndpoint", {"EndpointName": "e", "EndpointConfigName": "c", "DeploymentConfig": config})  # fmt: skip


def test_model_latency_alarm_is_in_microseconds(tmp_path) -> None:
    config = config_with(tmp_path, alarms={"model_latency_p99_ms": 250})
    plan = plan_stage(config, config.need_endpoint().stages[0], "m", version())
    latency = next(a for a in plan.alarms if a["MetricName"] == "ModelLatency")
    assert latency["Threshold"] == 250_000.0 and latency["ExtendedStatistic"] == "p99"
    assert {d["Name"] for d in latency["Dimensions"]} == {"EndpointName", "VariantName"}


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ({"stages": [{"name": "a"}, {"name": "a"}]}, "stage names must be distinct"),
        (
            {"stages": [{"name": "a", "autoscaling": {"min_instances": 3, "max_instances": 2}}]},
            "min_instances 3 > max_instances 2",
        ),
        ({"stages": [{"name": "a", "deployment": {"type": "BLUE"}}]}, "stages.0.deployment.type"),
        ({"model": {"selection": "as_of_run_date"}}, "as_of_run_date has no run date here"),
        ({"smoke_test": {"rows": 0}}, "smoke_test.rows"),
        (
            {"stages": [{"name": "a", "deployment": {"max_execution_timeout_seconds": 60}}]},
            "max_execution_timeout_seconds",
        ),
        ({"stagez": []}, "endpoint.stagez: Extra inputs are not permitted"),
    ],
)
def test_endpoint_config_errors_name_the_field(tmp_path, endpoint, message) -> None:
    with pytest.raises(ConfigError) as err:
        config_with(tmp_path, **endpoint)
    assert message in str(err.value)


def test_deployed_treats_a_silent_rollback_as_a_failure() -> None:
    serving = {"EndpointStatus": "InService", "EndpointConfigName": "new"}
    assert deployed(serving, "e", "new") is True
    assert deployed({**serving, "EndpointStatus": "Updating"}, "e", "new") is False
    rolled_back = {**serving, "EndpointConfigName": "old", "FailureReason": "alarm e-5xx"}
    with pytest.raises(DeploymentFailed) as err:
        deployed(rolled_back, "e", "new")
    assert "alarm e-5xx" in str(err.value) and "still serves old" in str(err.value)
    with pytest.raises(DeploymentFailed, match="UpdateRollbackFailed"):
        deployed({**rolled_back, "EndpointStatus": "UpdateRollbackFailed"}, "e", "new")
