"""The local AWS endpoint: a WSGI dispatcher on one port.

Requests signed for the ``sagemaker`` service go to the local SageMaker runtime (JSON API by
``X-Amz-Target``; ``POST /endpoints/<name>/invocations`` for SageMaker Runtime). Everything else
(S3, STS, CloudWatch, CloudWatch Logs, Application Auto Scaling, ...) goes to moto's server app,
so boto3 clients need one ``endpoint_url`` for all services. ``/_local/...`` is the control path
for fault injection and health checks.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from local_stack.sagemaker_runtime import api, load_actions
from local_stack.sagemaker_runtime.runtime import Runtime

log = logging.getLogger(__name__)

_INVOCATIONS = re.compile(r"^/endpoints/(?P<name>[^/]+)/invocations$")


def _signing_service(environ: dict[str, Any]) -> str | None:
    # "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/sagemaker/aws4_request, ..."
    auth = environ.get("HTTP_AUTHORIZATION", "")
    match = re.search(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/aws4_request", auth)
    return match.group(1) if match else None


class LocalAwsEndpoint:
    """The local AWS endpoint server; ``start()`` runs it in a background thread."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 4566,
        workdir: Path | None = None,
        max_parallel_containers: int | None = None,
        log_requests: bool = False,
    ) -> None:
        self.host = host
        self._log_requests = log_requests
        self._requested_port = port
        self._workdir = workdir
        self._max_parallel = max_parallel_containers
        self._moto = DomainDispatcherApplication(create_backend_app)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.runtime: Runtime | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when started with port 0)."""
        if self._server is None:
            raise RuntimeError("endpoint not started")
        return self._server.server_port

    @property
    def url(self) -> str:
        """``http://host:port``: what goes into ``endpoint_url``."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalAwsEndpoint:
        """Bind the port, create the runtime and serve in a daemon thread."""
        load_actions()
        if not self._log_requests:
            # One access-log line per boto3 call drowns test and benchmark output.
            logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = make_server(self.host, self._requested_port, self._wsgi, threaded=True)
        workdir = self._workdir
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="local-sagemaker-")
            workdir = Path(self._tmp.name)
        self.runtime = Runtime(workdir, self.url, max_parallel_containers=self._max_parallel)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="local-aws-endpoint", daemon=True
        )
        self._thread.start()
        log.info("local AWS endpoint on %s (work dir %s)", self.url, workdir)
        return self

    def stop(self) -> None:
        """Stop serving, stop the runtime's jobs and endpoints, remove a temporary work dir."""
        if self.runtime is not None:
            self.runtime.shutdown()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> LocalAwsEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- WSGI -------------------------------------------------------------------------------
    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_local/"):
            return self._control(Request(environ))(environ, start_response)
        if _signing_service(environ) == "sagemaker":
            return self._sagemaker(Request(environ))(environ, start_response)
        return self._moto(environ, start_response)

    def _sagemaker(self, request: Request) -> Response:
        assert self.runtime is not None
        target = request.headers.get("X-Amz-Target")
        if target:
            status, body = api.dispatch(self.runtime, target, request.get_data())
            return Response(body, status=status, content_type="application/x-amz-json-1.1")
        match = _INVOCATIONS.match(request.path)
        if match and request.method == "POST":
            from local_stack.sagemaker_runtime import endpoints

            return endpoints.invocation_response(self.runtime, match.group("name"), request)
        err = api.SageMakerError(
            "UnknownOperationException",
            f"The local SageMaker runtime does not implement {request.method} {request.path}.",
        )
        return Response(err.body(), status=err.status, content_type="application/json")

    def _control(self, request: Request) -> Response:
        assert self.runtime is not None
        faults = self.runtime.faults
        if request.path == "/_local/health":
            return Response(json.dumps({"status": "ok"}), content_type="application/json")
        if request.path == "/_local/timings":  # per-job overheads, for benchmarks
            from local_stack.sagemaker_runtime.jobs import job_timings

            return Response(json.dumps(job_timings(self.runtime)), content_type="application/json")
        if request.path == "/_local/faults":
            if request.method == "POST":
                faults.configure(request.get_json(force=True))
            elif request.method == "DELETE":
                faults.clear()
            return Response(json.dumps(faults.snapshot()), content_type="application/json")
        return Response(json.dumps({"error": f"unknown control path {request.path}"}), status=404)
