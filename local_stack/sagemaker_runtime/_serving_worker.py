"""The process side of model serving: a fork server ("zygote") and the model server processes.

``python -m local_stack.sagemaker_runtime._serving_worker`` is the zygote: it imports the
scientific stack and the ``sagemaker-inference`` toolkit once, then reads JSON lines on stdin
(one per model server to start), forks, and answers ``{"id": ..., "pid": ...}`` on stdout. A
forked model server starts in a fraction of a second instead of paying the imports again. When
stdin closes (the runtime process is gone or shuts down) the zygote kills its children and
exits; a child whose zygote disappears exits too.

A model server (what a SageMaker serving container does) loads the model through
:class:`local_stack.toolkits.InferenceSession` (the toolkit's ``Transformer`` driving
``model_fn``/``input_fn``/``predict_fn``/``output_fn``), writes ``<log>.ready`` with
``{"port": n}`` or ``{"error": message}`` and answers ``GET /ping`` and ``POST /invocations``
on a loopback port. Its stdout/stderr go to the log file the runtime ships to CloudWatch Logs.
Each model lives in its own process, so two models' ``inference.py`` modules never mix.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# Imported by the zygote ahead of any model server.
PRELOAD = (
    "numpy",
    "pandas",
    "joblib",
    "sklearn",
    "sklearn.ensemble",
    "sklearn.linear_model",
    "sagemaker_inference.transformer",
    "sagemaker_inference.default_inference_handler",
    "local_stack.toolkits",
)
# One BLAS/OpenMP thread per model process: the runtime runs several processes on few cores,
# and forking is only safe before such thread pools exist.
SINGLE_THREADED = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


# --- model server ------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    session: Any = None
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no access log: the model's own output is what belongs in the logs

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/ping":
            self._answer(200, "text/plain", b"")
        else:
            self._answer(404, "text/plain", b"not found")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path != "/invocations":
            self._answer(404, "text/plain", b"not found")
            return
        content_type = self.headers.get("Content-Type") or "application/json"
        accept = self.headers.get("Accept")
        try:
            result = self.session.invoke(body, content_type, accept)
            status, answer_type, answer = result.status, result.content_type, result.body
        except Exception as exc:  # a guard: the toolkit already maps script errors
            traceback.print_exc()
            status, answer_type, answer = 500, "text/plain", f"{type(exc).__name__}: {exc}".encode()
        if status >= 400:
            text = answer[:2000].decode(errors="replace")
            print(f"invocation failed with status {status}: {text}", file=sys.stderr, flush=True)
        self._answer(status, answer_type, answer)


def _write_ready(path: str, message: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(message, handle)
    os.replace(tmp, path)


def serve_model(spec: dict[str, Any], zygote_pid: int) -> None:
    """Body of one model server process (never returns)."""
    ready = spec["log_path"] + ".ready"
    try:
        from local_stack.toolkits import InferenceSession

        session = InferenceSession(
            Path(spec["model_dir"]),
            Path(spec["code_dir"]),
            program=spec["program"],
            env=spec["env"],
        )
    except Exception as exc:
        traceback.print_exc()
        _write_ready(ready, {"error": f"{type(exc).__name__}: {exc}"})
        os._exit(1)
    print(f"model loaded: {spec['program']} from {spec['code_dir']}", flush=True)
    handler = type("Handler", (_Handler,), {"session": session})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="serve", daemon=True).start()
    _write_ready(ready, {"port": server.server_address[1]})
    while os.getppid() == zygote_pid:  # the zygote is gone when the runtime is gone
        time.sleep(0.5)
    os._exit(0)


# --- zygote ------------------------------------------------------------------------------------
def _fork_server(spec: dict[str, Any], control: list[int]) -> int:
    zygote_pid = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    # child
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        for fd in control:
            with contextlib.suppress(OSError):
                os.close(fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        log = os.open(spec["log_path"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
        serve_model(spec, zygote_pid)
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(1)


def zygote_main() -> None:
    """Preload, then fork a model server per request line until stdin closes."""
    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except Exception as exc:  # a missing optional library only costs start-up time
            print(f"zygote: could not preload {module}: {exc}", file=sys.stderr, flush=True)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    control_in = sys.stdin.buffer
    control_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything printed by accident must not corrupt the control channel
    children: set[int] = set()
    control_out.write(b'{"ready": true}\n')
    for raw in iter(control_in.readline, b""):
        request: Any = None
        try:
            request = json.loads(raw)
            pid = _fork_server(request["spec"], [0, control_out.fileno()])
            children.add(pid)
            answer = {"id": request["id"], "pid": pid}
        except Exception as exc:
            answer = {"id": request.get("id") if isinstance(request, dict) else None}
            answer["error"] = f"{type(exc).__name__}: {exc}"
        control_out.write(json.dumps(answer).encode() + b"\n")
    for pid in children:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


if __name__ == "__main__":
    zygote_main()
