"""Notification messages: rendered by the Amazon provider's notifiers in the DAG's Jinja
environment (StrictUndefined), they must be valid JSON carrying what a reader acts on."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import jinja2.sandbox
import pytest
import yaml

from mlops_sagemaker import notifications
from mlops_sagemaker.config import ConfigError, UseCase, load_use_case

ROOT = Path(__file__).resolve().parents[2]
TOPIC = "arn:aws:sns:us-east-1:123456789012:mlops-events"
QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/mlops-events"


def config_with(tmp_path: Path, section: dict | None) -> UseCase:
    raw = yaml.safe_load((ROOT / "include/config/tpch_orders.yaml").read_text())
    if section is not None:
        raw["notifications"] = section
    path = tmp_path / "tpch_orders.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_use_case(path)


class FakeTI:
    task_id = "staging.smoke"
    log_url = "http://airflow:8080/dags/d/runs/r/tasks/staging.smoke?try_number=1"
    xcoms = {
        "version": {"arn": "arn:aws:sagemaker:us-east-1:123456789012:model-package/g/3"},
        "staging.smoke": {"endpoint_name": "tpch-ord-staging"},
        "staging.deploy": {"requested_config": "tpch-ord-staging-ec-abc"},
    }

    def xcom_pull(self, task_ids: str):
        return self.xcoms[task_ids]


def render(template: str, **context) -> dict:
    env = jinja2.sandbox.SandboxedEnvironment(undefined=jinja2.StrictUndefined)
    return json.loads(env.from_string(template).render(**context))


def context(**more) -> dict:
    return {"dag": type("D", (), {"dag_id": "mlops_tpch_orders_endpoint"})(), "run_id": "r",
            "ti": FakeTI(), **more}  # fmt: skip


def test_failure_message_carries_the_reason_as_data(tmp_path: Path) -> None:
    config = config_with(tmp_path, {"sqs_queue_url": QUEUE})
    reason = ValueError('bad "quote" and {{ not a template }}')
    message = render(
        notifications.message_template(config, "failure"),
        **context(ds="1996-03-01", exception=reason),
    )
    assert message["event"] == "failure" and message["use_case"] == "tpch_orders"
    assert message["reason"] == 'bad "quote" and {{ not a template }}'
    assert (message["run_date"], message["task_id"]) == ("1996-03-01", "staging.smoke")
    assert message["url"] == FakeTI.log_url


def test_a_run_without_logical_date_has_a_null_run_date(tmp_path: Path) -> None:
    config = config_with(tmp_path, {"sqs_queue_url": QUEUE})
    arn = "arn:aws:sagemaker:us-east-1:123456789012:model-package/g/7"
    message = render(
        notifications.message_template(config, "new_version"), **context(model_package_arn=arn)
    )
    assert message["run_date"] is None and message["model_package_arn"] == arn


def test_deployment_message_names_endpoint_config_and_version(tmp_path: Path) -> None:
    config = config_with(tmp_path, {"sns_topic_arn": TOPIC})
    message = render(notifications.message_template(config, "deployment"), **context(ds="x"))
    assert message["endpoint_name"] == "tpch-ord-staging"
    assert message["endpoint_config_name"] == "tpch-ord-staging-ec-abc"
    assert message["model_package_arn"].endswith("/g/3")


def test_notifiers_follow_the_config(tmp_path: Path) -> None:
    assert notifications.notifiers(config_with(tmp_path, None), "failure") == []
    both = config_with(
        tmp_path, {"sns_topic_arn": TOPIC, "sqs_queue_url": QUEUE, "events": ["failure"]}
    )
    kinds = [type(n).__name__ for n in notifications.notifiers(both, "failure")]
    assert kinds == ["SnsNotifier", "SqsNotifier"]
    assert notifications.notifiers(both, "deployment") == []


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ({"events": ["failure"]}, "set sns_topic_arn and/or sqs_queue_url"),
        ({"sqs_queue_url": QUEUE, "events": ["oops"]}, "notifications.events"),
        ({"sns_topic_arn": "my-topic"}, "notifications.sns_topic_arn"),
    ],
)
def test_bad_notifications_name_the_field(tmp_path: Path, section: dict, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_with(tmp_path, section)
    assert words in str(err.value)
