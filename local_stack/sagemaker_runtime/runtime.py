"""State and execution engine of the local SageMaker runtime.

The runtime keeps resources in memory (saved to and reloaded from its work folder by
``local_stack.aws_endpoint.persistence`` when the endpoint persists its state), runs
jobs asynchronously in threads, and bounds how many "containers" (script processes) run at once
by the machine's cores. Job scripts run with the current interpreter standing in for the image.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from local_stack.sagemaker_runtime.faults import FaultInjector

# The credentials of everything the runtime does on a job's behalf (its own S3/Logs/CloudWatch
# clients and the job processes' environment): on AWS that is the job's execution role, so a
# distinct access key id lets the endpoint's call recorder attribute these calls to that role
# (local_stack/aws_endpoint/recorder.py). The local endpoint accepts any key: not a secret.
EXECUTION_ROLE_ACCESS_KEY_ID = "local-execution-role"
EXECUTION_ROLE_SECRET_KEY = "local"
# What SageMaker and Application Auto Scaling do as the service itself (publishing endpoint
# metrics, scaling variants): no role of ours signs those calls on AWS, so the recorder keeps
# them apart from the execution role's.
SERVICE_ACCESS_KEY_ID = "local-sagemaker-service"


class Runtime:
    """Everything the action handlers share: stores, locks, S3 access, job threads, faults."""

    def __init__(
        self,
        workdir: Path,
        endpoint_url: str,
        region: str = "us-east-1",
        account_id: str = "123456789012",
        max_parallel_containers: int | None = None,
        time_scale: float = 1.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.endpoint_url = endpoint_url
        self.region = region
        self.account_id = account_id
        self.lock = threading.RLock()
        self.faults = FaultInjector()
        # Multiplies the service's own clocks (metric periods, autoscaling evaluation periods
        # and cooldowns) so that tests see minutes of AWS behaviour in seconds.
        self.time_scale = float(time_scale)
        self._stores: dict[str, dict[str, dict[str, Any]]] = {}
        self._slots = threading.BoundedSemaphore(max_parallel_containers or os.cpu_count() or 2)
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._clients: dict[tuple[str, str], Any] = {}
        self._client_lock = threading.Lock()
        self._shutdown_hooks: list[Callable[[], None]] = []

    # --- resources -------------------------------------------------------------------------
    def store(self, kind: str) -> dict[str, dict[str, Any]]:
        """The dict of resources of one kind (e.g. ``"TrainingJob"``), keyed by name.

        Hold ``self.lock`` while reading-then-writing it."""
        with self.lock:
            return self._stores.setdefault(kind, {})

    def export_stores(self, skip: frozenset[str] = frozenset()) -> dict[str, dict[str, Any]]:
        """A consistent shallow copy of every store (records copied one level deep), taken
        under ``self.lock``, for ``local_stack.aws_endpoint.persistence`` to serialise."""
        with self.lock:
            return {
                kind: {name: dict(record) for name, record in records.items()}
                for kind, records in self._stores.items()
                if kind not in skip
            }

    def import_stores(self, stores: dict[str, dict[str, dict[str, Any]]]) -> None:
        """Replace the stores with ``stores`` (a restart that reloads its saved state)."""
        with self.lock:
            self._stores = {kind: dict(records) for kind, records in stores.items()}

    def arn(self, resource: str, name: str) -> str:
        """An ARN the way SageMaker spells it (resource names are lower-cased in ARNs)."""
        return f"arn:aws:sagemaker:{self.region}:{self.account_id}:{resource}/{name.lower()}"

    # --- AWS clients for the rest of the local endpoint (moto) -------------------------------
    def client(self, service: str, as_service: bool = False) -> Any:
        """A boto3 client for ``service`` on this same local endpoint (S3, logs, ...), signed
        as the execution role, or as SageMaker itself with ``as_service``.

        Clients are created once per service under a lock (creating clients from several
        threads at once through boto3's default session is not thread-safe) and shared:
        using a botocore client from several threads is safe."""
        key = SERVICE_ACCESS_KEY_ID if as_service else EXECUTION_ROLE_ACCESS_KEY_ID
        with self._client_lock:
            client = self._clients.get((service, key))
            if client is None:
                client = boto3.session.Session().client(
                    service,
                    endpoint_url=self.endpoint_url,
                    region_name=self.region,
                    aws_access_key_id=key,
                    aws_secret_access_key=EXECUTION_ROLE_SECRET_KEY,
                    config=Config(
                        retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=50
                    ),
                )
                self._clients[(service, key)] = client
            return client

    # --- execution ---------------------------------------------------------------------------
    def run_async(self, name: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` in a daemon thread (one per job); exceptions are the job's to record."""
        thread = threading.Thread(target=fn, name=f"job-{name}", daemon=True)
        with self.lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def every(self, name: str, seconds: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` every ``seconds`` in a daemon thread until shutdown; an exception is
        logged and the next round still runs."""

        def loop() -> None:
            while not self._stopping.wait(seconds):
                try:
                    fn()
                except Exception:
                    logging.getLogger(__name__).exception("periodic task %s failed", name)

        self.run_async(name, loop)

    @contextlib.contextmanager
    def container_slot(self) -> Iterator[None]:
        """Hold one of the machine's container slots while a script process runs."""
        with self._slots:
            yield

    @property
    def stopping(self) -> threading.Event:
        """Set when the endpoint shuts down; long-running loops should check it."""
        return self._stopping

    def on_shutdown(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` in ``shutdown()`` (e.g. stop the endpoints' model server processes)."""
        with self.lock:
            self._shutdown_hooks.append(hook)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Ask running jobs to stop, run the shutdown hooks and wait briefly for the threads."""
        self._stopping.set()
        with self.lock:
            hooks = list(self._shutdown_hooks)
        for hook in hooks:
            try:
                hook()
            except Exception:  # one failing hook must not keep the others from running
                logging.getLogger(__name__).exception("runtime shutdown hook failed")
        for thread in list(self._threads):
            thread.join(timeout)
