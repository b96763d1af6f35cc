"""Notifications of a use case (config ``notifications:``) through the Amazon provider's notifiers.

Three events, each a JSON message to the SNS topic and/or the SQS queue of the config:

* ``failure``: a task failed for good (after its retries); task-level ``on_failure_callback``
  on every task: ``task_id``, ``reason`` (the exception);
* ``new_version``: training registered a new model version (not when a re-run finds its
  version already registered): ``model_package_arn``;
* ``deployment``: an endpoint stage passed its smoke test: ``endpoint_name``,
  ``model_package_arn``, ``endpoint_config_name``.

Every message also has ``event``, ``use_case``, ``dag_id``, ``run_id``, ``run_date`` (``null``
for runs without a logical date, e.g. asset-triggered ones) and ``url`` (the task in the run, in
the Airflow UI: ``[api] base_url``). The messages are Jinja templates rendered by the notifier
against the task's context and serialised with ``tojson``, so an exception text is data, never
template code. No secret is in a message: only names, ARNs, dates and the exception text.
"""

from __future__ import annotations

from typing import Any

from mlops_sagemaker.config import UseCase

EVENTS = ("failure", "new_version", "deployment")

_COMMON = (
    '"use_case": "{use_case}", "dag_id": dag.dag_id, "run_id": run_id, '
    '"run_date": (ds if ds is defined else none), "task_id": ti.task_id, "url": ti.log_url'
)
_FIELDS = {
    "failure": '"reason": (exception | string)',
    "new_version": '"model_package_arn": model_package_arn',
    "deployment": (
        "\"model_package_arn\": ti.xcom_pull(task_ids='version')['arn'], "
        '"endpoint_name": ti.xcom_pull(task_ids=ti.task_id)["endpoint_name"], '
        "\"endpoint_config_name\": ti.xcom_pull(task_ids=ti.task_id.rsplit('.', 1)[0] "
        "~ '.deploy')['requested_config']"
    ),
}


def message_template(config: UseCase, event: str) -> str:
    """The Jinja template of ``event``'s JSON message."""
    common = _COMMON.format(use_case=config.use_case)
    return f'{{{{ {{"event": "{event}", {common}, {_FIELDS[event]}}} | tojson }}}}'


def notifiers(config: UseCase, event: str) -> list[Any]:
    """The notifiers ``event`` goes to (empty when the use case does not notify it)."""
    settings = config.notifications
    if settings is None or event not in settings.events:
        return []
    from airflow.providers.amazon.aws.notifications.sns import SnsNotifier
    from airflow.providers.amazon.aws.notifications.sqs import SqsNotifier

    message, conn = message_template(config, event), config.connections.aws
    subject = f"[mlops] {config.use_case}: {event.replace('_', ' ')}"
    found: list[Any] = []
    if settings.sns_topic_arn:
        found.append(
            SnsNotifier(
                aws_conn_id=conn,
                target_arn=settings.sns_topic_arn,
                message=message,
                subject=subject,
            )
        )
    if settings.sqs_queue_url:
        found.append(
            SqsNotifier(aws_conn_id=conn, queue_url=settings.sqs_queue_url, message_body=message)
        )
    return found


__all__ = ["EVENTS", "message_template", "notifiers"]
