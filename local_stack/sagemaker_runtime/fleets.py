"""The "instances" of an endpoint: one fleet per endpoint config deployed on an endpoint, one
variant per production variant, one or more model-server processes per variant.

A variant's ``DesiredInstanceCount`` (its config's ``InitialInstanceCount``, then
``UpdateEndpointWeightsAndCapacities`` or the local autoscaler) is what ``DescribeEndpoint``
reports; the variant runs that many model-server processes, bounded by the machine's cores
(``_serving.cpu_bound()``: more processes than cores would only slow each other down), and
spreads requests over them, least busy first.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from local_stack.sagemaker_runtime import _serving
from local_stack.sagemaker_runtime.api import SageMakerError, now
from local_stack.sagemaker_runtime.registry import serving_container

if TYPE_CHECKING:
    from local_stack.sagemaker_runtime.runtime import Runtime

log = logging.getLogger(__name__)

LOG_GROUP_PREFIX = "/aws/sagemaker/Endpoints"


class DeployFailed(Exception):
    """A deployment failed; the message is the FailureReason."""


class UnknownVariant(Exception):
    """``X-Amzn-SageMaker-Target-Variant`` names no variant of the endpoint's config."""


def variant_count(spec: dict[str, Any]) -> int:
    """The instance count a production variant spec asks for (serverless variants: 1)."""
    if "InitialInstanceCount" in spec:
        return int(spec["InitialInstanceCount"])
    return 1


@dataclass
class Variant:
    """A production variant: its model-server processes and its weights and counts."""

    runtime: Runtime
    endpoint: str
    name: str
    model_name: str
    model: _serving.PreparedModel
    instance_type: str | None
    current_weight: float
    desired_weight: float
    current_count: int
    desired_count: int
    startup_timeout: float = _serving.DEFAULT_STARTUP_TIMEOUT
    servers: list[_serving.ModelServer] = field(default_factory=list)
    resolved_at: Any = field(default_factory=now)
    _resize_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def image(self) -> str:
        return self.model.image

    def summary(self) -> dict[str, Any]:
        """The variant as ``DescribeEndpoint`` shows it."""
        digest = hashlib.sha256(self.image.encode()).hexdigest()
        repository = self.image.split("@", 1)[0].rsplit(":", 1)[0] if self.image else ""
        return {
            "VariantName": self.name,
            "DeployedImages": [
                {
                    "SpecifiedImage": self.image,
                    "ResolvedImage": f"{repository}@sha256:{digest}",
                    "ResolutionTime": self.resolved_at,
                }
            ],
            "CurrentWeight": float(self.current_weight),
            "DesiredWeight": float(self.desired_weight),
            "CurrentInstanceCount": int(self.current_count),
            "DesiredInstanceCount": int(self.desired_count),
        }

    # --- processes ---------------------------------------------------------------------------
    def _new_server(self) -> _serving.ModelServer:
        server = _serving.ModelServer(
            self.runtime,
            self.model,
            f"{self.endpoint}-{self.name}",
            f"{LOG_GROUP_PREFIX}/{self.endpoint}",
            f"{self.name}/local-{uuid.uuid4().hex[:12]}",
        )
        server.start(self.startup_timeout)
        return server

    def processes_for(self, count: int) -> int:
        """How many model-server processes ``count`` instances run on this machine."""
        return max(1, min(count, _serving.cpu_bound()))

    def start(self) -> None:
        """Start the processes of ``desired_count``; raises :class:`DeployFailed`."""
        try:
            self.resize(self.desired_count)
        except _serving.ServingError as err:
            self.stop(drain_timeout=0)
            raise DeployFailed(
                f"The primary container for production variant {self.name} did not pass "
                f"the ping health check. Please check CloudWatch logs for this endpoint. "
                f"({err})"
            ) from err

    def resize(self, count: int) -> None:
        """Run the processes ``count`` instances need: new ones start (and load the model)
        before they take requests; surplus ones finish their requests, then stop."""
        with self._resize_lock:
            wanted = self.processes_for(count)
            surplus: list[_serving.ModelServer] = []
            while len(self.servers) < wanted:
                self.servers = [*self.servers, self._new_server()]
            if len(self.servers) > wanted:
                surplus = self.servers[wanted:]
                self.servers = self.servers[:wanted]
        for server in surplus:
            server.stop(drain_timeout=30)

    def acquire(self) -> _serving.ModelServer | None:
        """Reserve the least busy process for one request (``None`` when all are stopping);
        the caller releases it."""
        servers = list(self.servers)
        random.shuffle(servers)  # equally busy processes share the load
        for server in sorted(servers, key=lambda s: s.in_flight):
            if server.try_acquire():
                return server
        return None

    def stop(self, drain_timeout: float = 30.0) -> None:
        with self._resize_lock:
            servers, self.servers = self.servers, []
        for server in servers:
            server.stop(drain_timeout=drain_timeout)


@dataclass
class Fleet:
    """The variants of one endpoint config deployed on an endpoint."""

    config_name: str
    variants: list[Variant]
    capture: dict[str, Any] | None = None  # the config's DataCaptureConfig

    def pick(self, target: str | None) -> Variant:
        """The variant a request goes to: ``target``, else one chosen by current weight."""
        if target:
            for variant in self.variants:
                if variant.name == target:
                    return variant
            raise UnknownVariant(target)
        weights = [max(0.0, v.current_weight) for v in self.variants]
        if sum(weights) <= 0:
            weights = [1.0] * len(self.variants)
        return random.choices(self.variants, weights=weights, k=1)[0]

    def variant(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)

    def stop(self, drain_timeout: float = 30.0) -> None:
        for variant in self.variants:
            variant.stop(drain_timeout=drain_timeout)


def _variant(runtime: Runtime, endpoint: str, spec: dict[str, Any]) -> Variant:
    name = spec["VariantName"]
    try:
        model = _serving.prepare_model(runtime, serving_container(runtime, spec["ModelName"]))
    except SageMakerError as err:
        raise DeployFailed(err.message) from err
    except _serving.ServingError as err:
        raise DeployFailed(
            f"Failed to download model data for production variant {name}: {err}"
        ) from err
    count = variant_count(spec)
    weight = float(spec.get("InitialVariantWeight", 1.0))
    timeout = spec.get("ContainerStartupHealthCheckTimeoutInSeconds")
    variant = Variant(
        runtime=runtime,
        endpoint=endpoint,
        name=name,
        model_name=spec["ModelName"],
        model=model,
        instance_type=spec.get("InstanceType"),
        current_weight=weight,
        desired_weight=weight,
        current_count=count,
        desired_count=count,
        startup_timeout=float(timeout) if timeout else _serving.DEFAULT_STARTUP_TIMEOUT,
    )
    variant.start()
    return variant


def start_fleet(runtime: Runtime, endpoint: str, config: dict[str, Any]) -> Fleet:
    """Start every production variant of ``config``; raises :class:`DeployFailed`."""
    specs = config["ProductionVariants"]
    variants: list[Variant] = []
    errors: list[BaseException] = []
    with ThreadPoolExecutor(len(specs), thread_name_prefix=f"deploy-{endpoint}") as pool:
        for future in [pool.submit(_variant, runtime, endpoint, spec) for spec in specs]:
            try:
                variants.append(future.result())
            except BaseException as err:
                errors.append(err)
    if errors:
        for variant in variants:
            variant.stop(drain_timeout=0)
        first = errors[0]
        if isinstance(first, DeployFailed):
            raise first
        raise DeployFailed(f"InternalFailure: {type(first).__name__}: {first}") from first
    return Fleet(config["EndpointConfigName"], variants, config.get("DataCaptureConfig"))
