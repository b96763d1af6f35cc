"""The local AWS endpoint: a WSGI dispatcher on one port.

Requests signed for the ``sagemaker`` service go to the local SageMaker runtime (JSON API by
``X-Amz-Target``; ``POST /endpoints/<name>/invocations`` for SageMaker Runtime). Everything else
(S3, STS, CloudWatch, CloudWatch Logs, Application Auto Scaling, ...) goes to moto's server app,
so boto3 clients need one ``endpoint_url`` for all services. ``/_local/...`` is the control path
for fault injection and health checks. Every signed request is also recorded as the IAM action
it needs and the principal that signed it (``recorder.py``; ``GET /_local/calls``).

With ``persist=True`` the endpoint keeps its state in ``<workdir>/state`` and reloads it on
start (``persistence.py`` says what, when and why so); ``clean=True`` empties the work folder
first.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from local_stack.aws_endpoint.persistence import (
    SIGNING_TO_BACKEND,
    StatePersistence,
    is_mutating_sagemaker_action,
)
from local_stack.aws_endpoint.recorder import CallRecorder
from local_stack.sagemaker_runtime import api, load_actions
from local_stack.sagemaker_runtime.runtime import Runtime

log = logging.getLogger(__name__)

_INVOCATIONS = re.compile(r"^/endpoints/(?P<name>[^/]+)/invocations$")


def _signing_service(environ: dict[str, Any]) -> str | None:
    # "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/sagemaker/aws4_request, ..."
    auth = environ.get("HTTP_AUTHORIZATION", "")
    match = re.search(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/aws4_request", auth)
    if match is None:  # a presigned URL: X-Amz-Credential=AKID%2F20260101%2F...%2Fs3%2Faws4_request
        query = environ.get("QUERY_STRING", "").replace("%2F", "/").replace("%2f", "/")
        match = re.search(r"X-Amz-Credential=[^/&]+/[^/]+/[^/]+/([^/&]+)/aws4_request", query)
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
        persist: bool = False,
        clean: bool = False,
        time_scale: float = 1.0,
    ) -> None:
        if (persist or clean) and workdir is None:
            raise ValueError("persist/clean need a workdir")
        self.host = host
        self._persist = persist
        self._clean = clean
        self.persistence: StatePersistence | None = None
        self._log_requests = log_requests
        self._requested_port = port
        self._workdir = workdir
        self._max_parallel = max_parallel_containers
        self._time_scale = time_scale
        self._moto = DomainDispatcherApplication(create_backend_app)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.runtime: Runtime | None = None
        self.recorder: CallRecorder | None = None

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
        elif self._clean:
            shutil.rmtree(workdir, ignore_errors=True)
        self.runtime = Runtime(
            workdir,
            self.url,
            max_parallel_containers=self._max_parallel,
            time_scale=self._time_scale,
        )
        self.recorder = CallRecorder(self.runtime.region, self.runtime.account_id)
        if self._persist:  # reload before the first request can see an empty endpoint
            self.persistence = StatePersistence(workdir, self.runtime)
            self.persistence.load()
            self.persistence.start()
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="local-aws-endpoint", daemon=True
        )
        self._thread.start()
        log.info("local AWS endpoint on %s (work dir %s)", self.url, workdir)
        return self

    def stop(self) -> None:
        """Stop serving, save the state (jobs still running are saved as running), stop the
        runtime's jobs and endpoints, remove a temporary work dir."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self.persistence is not None:
            self.persistence.stop()
        if self.runtime is not None:
            self.runtime.shutdown()
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
        if self.recorder is not None:
            self.recorder.record(environ)
        service = _signing_service(environ)
        if service == "sagemaker":
            return self._sagemaker(Request(environ))(environ, start_response)
        if self.persistence is None:
            return self._moto(environ, start_response)
        return self._moto_persisted(environ, start_response, service)

    def _moto_persisted(self, environ: dict[str, Any], start_response: Any, service: str | None):
        """moto, one request at a time (its state is pickled between requests); an S3 write is
        saved before its answer goes out, other services' changes within a second."""
        assert self.persistence is not None
        with self.persistence.moto_lock:
            body = self._moto(environ, start_response)
        method = environ.get("REQUEST_METHOD", "GET")
        backend = SIGNING_TO_BACKEND.get(service or "")
        if method in ("GET", "HEAD", "OPTIONS") or (service is not None and backend is None):
            return body  # reads, and services whose state is not kept (STS, IAM, ...)
        if backend == "s3":
            self.persistence.save_moto("s3")
        else:
            self.persistence.mark_dirty(backend)
        return body

    def _sagemaker(self, request: Request) -> Response:
        assert self.runtime is not None
        target = request.headers.get("X-Amz-Target")
        if target:
            status, body = api.dispatch(self.runtime, target, request.get_data())
            if self.persistence is not None and is_mutating_sagemaker_action(
                target.split(".", 1)[-1]
            ):
                self.persistence.save_sagemaker()  # before the client hears it was done
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
        if request.path == "/_local/sagemaker/calls":  # what clients sent (api.recorded_calls)
            if request.method == "DELETE":
                api.clear_calls(self.runtime)
            calls = api.recorded_calls(self.runtime, request.args.get("action"))
            return Response(json.dumps(calls), content_type="application/json")
        if request.path == "/_local/calls":  # every signed request as an IAM action (recorder.py)
            assert self.recorder is not None
            if request.method == "DELETE":
                self.recorder.clear()
            calls = self.recorder.calls(request.args.get("principal"))
            return Response(json.dumps(calls), content_type="application/json")
        if request.path == "/_local/state":  # where the state is kept, what saving costs
            return Response(json.dumps(self._state_report()), content_type="application/json")
        if request.path == "/_local/faults":
            if request.method == "POST":
                faults.configure(request.get_json(force=True))
            elif request.method == "DELETE":
                faults.clear()
            return Response(json.dumps(faults.snapshot()), content_type="application/json")
        return Response(json.dumps({"error": f"unknown control path {request.path}"}), status=404)

    def _state_report(self) -> dict[str, Any]:
        if self.persistence is None:
            return {"persist": False}
        parts = {}
        for part, seconds in dict(self.persistence.timings).items():
            ordered = sorted(seconds)
            parts[part] = {
                "saves": len(ordered),
                "mean_ms": round(1000 * sum(ordered) / len(ordered), 3),
                "p95_ms": round(1000 * ordered[int(0.95 * (len(ordered) - 1))], 3),
                "max_ms": round(1000 * ordered[-1], 3),
            }
        return {"persist": True, "dir": str(self.persistence.root), "saves": parts}
