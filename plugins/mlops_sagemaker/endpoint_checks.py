"""After a deployment: the smoke test, the rollback it triggers, cleanup and teardown.

* **Smoke test**: the version's ``evaluation.json`` keeps test rows with the probabilities the
  evaluation job computed (``test_sample``, written by ``evaluate.py``). The endpoint gets them
  once as one CSV request and once row by row (the latencies); every probability must match
  within the configured tolerance (1e-9 by default: same model, same image, so the same floats).
* **Rollback**: a failed smoke test switches the endpoint back to the config it served before
  and waits until it serves it again.
* **Cleanup**: endpoint configs (with their alarms) and models of the use case that no endpoint
  uses, beyond the newest ``keep``, are deleted.
* **Teardown**: a stage's scaling, endpoint and alarms are removed (idempotent).
"""

from __future__ import annotations

import json
import logging
import re
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from mlops_sagemaker import endpoint_requests as req
from mlops_sagemaker.endpoint_tasks import (
    Deployment,
    DeploymentFailed,
    SmokeResult,
    SmokeTestFailed,
    StagePlan,
    apply_scaling,
    deployed,
    deregister_scaling,
    describe_endpoint,
    switch_config,
)
from mlops_sagemaker.model_registry import ModelVersion

log = logging.getLogger(__name__)

# A rollback moves all traffic at once and keeps no old fleet: it is the way back, not a test.
ROLLBACK_DEPLOYMENT = {
    "BlueGreenUpdatePolicy": {
        "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
        "TerminationWaitInSeconds": 0,
    }
}


# --------------------------------------------------------------------------- smoke test


def smoke_sample(read: Callable[[str], str], version: ModelVersion, rows: int) -> dict[str, Any]:
    """The first ``rows`` rows of the version's ``test_sample`` (from its evaluation.json)."""
    if not version.evaluation_uri:
        raise SmokeTestFailed(f"{version.label()} has no registered evaluation (ModelMetrics)")
    sample = json.loads(read(version.evaluation_uri)).get("test_sample") or {}
    if not sample.get("rows"):
        raise SmokeTestFailed(
            f"{version.label()}'s evaluation {version.evaluation_uri} has no test_sample (it "
            "was evaluated by an older evaluate.py): retrain, or set "
            "endpoint.smoke_test.rows after re-evaluating it"
        )
    return {
        "keys": (sample.get("keys") or [])[:rows],
        "rows": sample["rows"][:rows],
        "probabilities": sample["probabilities"][:rows],
    }


def _csv(rows: list[list[float]]) -> str:
    # repr keeps every float exact, so the model sees the numbers the evaluation saw.
    return "".join(",".join(repr(float(v)) for v in row) + "\n" for row in rows)


def _invoke(runtime: Any, endpoint: str, body: str) -> tuple[list[float], str, float]:
    started = time.perf_counter()
    try:
        answer = runtime.invoke_endpoint(
            EndpointName=endpoint, ContentType="text/csv", Accept="text/csv", Body=body
        )
    except Exception as err:
        raise SmokeTestFailed(f"Invoking {endpoint} failed: {err}") from err
    elapsed_ms = (time.perf_counter() - started) * 1000
    text = answer["Body"].read().decode("utf-8")
    probabilities = [float(line.split(",")[1]) for line in text.splitlines() if line.strip()]
    return probabilities, answer.get("InvokedProductionVariant", ""), elapsed_ms


def _compare(got: list[float], sample: dict[str, Any], tolerance: float, how: str) -> float:
    expected = sample["probabilities"]
    if len(got) != len(expected):
        raise SmokeTestFailed(f"{how}: {len(got)} predictions for {len(expected)} rows")
    worst = 0.0
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        diff = abs(g - e)
        worst = max(worst, diff)
        if diff > tolerance:
            key = sample["keys"][i] if i < len(sample["keys"]) else i
            raise SmokeTestFailed(
                f"{how}: row {i} (key {key}) has probability {g!r} on the endpoint but {e!r} in "
                f"the evaluation of the same version (|diff| {diff:.3g} > tolerance {tolerance})"
            )
    return worst


def smoke_test(
    runtime: Any, endpoint: str, sample: dict[str, Any], tolerance: float
) -> SmokeResult:
    """Send the sample as one request and row by row; every probability must match."""
    batch, variant, _ = _invoke(runtime, endpoint, _csv(sample["rows"]))
    worst = _compare(batch, sample, tolerance, f"{len(sample['rows'])}-row request")
    singles, latencies, variants = [], [], {variant}
    for row in sample["rows"]:
        got, variant, elapsed = _invoke(runtime, endpoint, _csv([row]))
        singles += got
        latencies.append(elapsed)
        variants.add(variant)
    worst = max(worst, _compare(singles, sample, tolerance, "single-row requests"))
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return SmokeResult(
        endpoint_name=endpoint,
        rows=len(sample["rows"]),
        max_abs_diff=worst,
        p50_ms=round(statistics.median(ordered), 3),
        p99_ms=round(p99, 3),
        variants=sorted(v for v in variants if v),
    )


# --------------------------------------------------------------------------- rollback


def wait_for(conn: Any, endpoint: str, config_name: str, *, poll: float, timeout: float) -> None:
    """Poll until ``endpoint`` serves ``config_name`` (raises DeploymentFailed otherwise)."""
    deadline = time.monotonic() + timeout
    while not deployed(describe_endpoint(conn, endpoint), endpoint, config_name):
        if time.monotonic() > deadline:
            raise DeploymentFailed(f"{endpoint} did not serve {config_name} within {timeout:.0f}s")
        time.sleep(poll)


def roll_back(
    conn: Any,
    autoscaling: Any,
    deployment: Deployment,
    plan: StagePlan,
    *,
    poll: float,
    timeout: float,
) -> str:
    """Switch the endpoint back to the config it served before ``deployment``; returns what
    happened, for the failure message."""
    previous, endpoint = deployment.previous_config, deployment.endpoint_name
    if not previous or previous == deployment.requested_config:
        return (
            f"there is no previous config to roll back to: {endpoint} keeps serving "
            f"{deployment.requested_config} (deploy another version or run the teardown DAG)"
        )
    log.warning("Rolling %s back to %s", endpoint, previous)
    switch_config(
        conn, autoscaling, endpoint, deployment.requested_config, previous, ROLLBACK_DEPLOYMENT
    )
    wait_for(conn, endpoint, previous, poll=poll, timeout=timeout)
    apply_scaling(autoscaling, plan)
    return f"{endpoint} was rolled back and serves {previous} again"


# --------------------------------------------------------------------------- cleanup


def _paged(call: Callable[..., dict], key: str, **kwargs: Any) -> Iterator[dict]:
    token = None
    while True:
        page = call(**kwargs, **({"NextToken": token} if token else {}))
        yield from page.get(key, [])
        token = page.get("NextToken")
        if not token:
            return


def configs_in_use(conn: Any) -> set[str]:
    """Endpoint configs any endpoint of the account serves or is deploying."""
    used = set()
    for summary in _paged(conn.list_endpoints, "Endpoints", MaxResults=100):
        described = describe_endpoint(conn, summary["EndpointName"])
        if described:
            used.add(described["EndpointConfigName"])
            pending = (described.get("PendingDeploymentSummary") or {}).get("EndpointConfigName")
            if pending:
                used.add(pending)
    return used


def _ours(conn: Any, short_name: str) -> tuple[list[str], list[str]]:
    configs = re.compile(rf"^{re.escape(short_name)}-[a-z0-9]+-ec-[0-9a-f]{{10}}$")
    models = re.compile(rf"^{re.escape(short_name)}-mdl-[0-9a-f]{{10}}$")
    newest = {"SortBy": "CreationTime", "SortOrder": "Descending", "MaxResults": 100}
    listed_configs = _paged(conn.list_endpoint_configs, "EndpointConfigs", **newest)
    listed_models = _paged(conn.list_models, "Models", **newest)
    return (
        [c["EndpointConfigName"] for c in listed_configs if configs.match(c["EndpointConfigName"])],
        [m["ModelName"] for m in listed_models if models.match(m["ModelName"])],
    )


def _models_of(conn: Any, config_names: Iterator[str] | list[str] | set[str]) -> set[str]:
    models = set()
    for name in config_names:
        described = conn.describe_endpoint_config(EndpointConfigName=name)
        models.update(v["ModelName"] for v in described["ProductionVariants"])
    return models


def _busy_models(conn: Any) -> set[str]:
    jobs = _paged(conn.list_transform_jobs, "TransformJobSummaries", StatusEquals="InProgress")
    return {
        conn.describe_transform_job(TransformJobName=j["TransformJobName"])["ModelName"]
        for j in jobs
    }


def cleanup(conn: Any, cloudwatch: Any, short_name: str, keep: int) -> dict[str, list[str]]:
    """Delete the use case's endpoint configs (and their alarms) and models that nothing uses,
    keeping the newest ``keep`` unused ones of each (a way back for a manual rollback)."""
    in_use = configs_in_use(conn)
    configs, models = _ours(conn, short_name)
    unused = [c for c in configs if c not in in_use]
    kept, doomed = unused[:keep], unused[keep:]
    needed = _models_of(conn, in_use & set(configs) | set(kept)) | _busy_models(conn)
    unused_models = [m for m in models if m not in needed]
    doomed_models = unused_models[keep:]
    for name in doomed:
        conn.delete_endpoint_config(EndpointConfigName=name)
    alarms = [f"{name}{suffix}" for name in doomed for suffix in req.ALARM_SUFFIXES]
    for start in range(0, len(alarms), 100):  # DeleteAlarms takes up to 100 names
        cloudwatch.delete_alarms(AlarmNames=alarms[start : start + 100])
    for name in doomed_models:
        conn.delete_model(ModelName=name)
    return {"endpoint_configs": doomed, "alarms": alarms, "models": doomed_models}


# --------------------------------------------------------------------------- teardown


def teardown(
    conn: Any, autoscaling: Any, cloudwatch: Any, endpoint: str, *, poll: float, timeout: float
) -> dict[str, Any]:
    """Remove ``endpoint``'s scaling, the endpoint and its config's alarms (idempotent)."""
    scaling = deregister_scaling(autoscaling, endpoint)
    described = describe_endpoint(conn, endpoint)
    if described is None:
        return {"endpoint": endpoint, "deleted": False, "scaling_removed": scaling}
    if described["EndpointStatus"] != "Deleting":
        conn.delete_endpoint(EndpointName=endpoint)
    deadline = time.monotonic() + timeout
    while describe_endpoint(conn, endpoint) is not None:
        if time.monotonic() > deadline:
            raise DeploymentFailed(f"{endpoint} is still being deleted after {timeout:.0f}s")
        time.sleep(poll)
    config_name = described["EndpointConfigName"]
    cloudwatch.delete_alarms(AlarmNames=[f"{config_name}{s}" for s in req.ALARM_SUFFIXES])
    return {
        "endpoint": endpoint,
        "deleted": True,
        "scaling_removed": scaling,
        "config": config_name,
    }


__all__ = [
    "ROLLBACK_DEPLOYMENT",
    "cleanup",
    "configs_in_use",
    "roll_back",
    "smoke_sample",
    "smoke_test",
    "teardown",
    "wait_for",
]
