"""Start and stop the local stack as background processes and point Airflow at it.

Used by ``make demo`` (``local_stack.demo``), ``make ui`` (``local_stack.ui``) and the
end-to-end tests. The stack is two processes on loopback ports:

* the Presto stand-in (``PRESTO_PORT``, default 18080): catalog ``tpch``;
* the local AWS endpoint (``AWS_ENDPOINT_PORT``, default 4566): SageMaker from our runtime,
  S3/STS/CloudWatch/Logs from moto.

Airflow finds them only through connections set as environment variables
(``AIRFLOW_CONN_AWS_DEFAULT`` with ``endpoint_url``, ``AIRFLOW_CONN_PRESTO_DEFAULT``), with a
SQLite metadata database under ``.local/airflow``. The credentials are dummies.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
DUMMY_KEY = "local"  # the local endpoint accepts any key; these are not secrets


def _free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _wait_until(check, what: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}; see its log")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


@dataclass
class LocalStack:
    """The running stack: ports, folders and the environment Airflow needs to use it."""

    presto_port: int = int(os.environ.get("PRESTO_PORT", "18080"))
    aws_port: int = int(os.environ.get("AWS_ENDPOINT_PORT", "4566"))
    home: Path = field(default_factory=lambda: ROOT / ".local")
    bucket: str = "mlops-local"
    presto_schemas: str = "tiny"
    _procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def aws_url(self) -> str:
        """The local AWS endpoint URL (``endpoint_url`` of the Airflow AWS connection)."""
        return f"http://127.0.0.1:{self.aws_port}"

    @property
    def airflow_home(self) -> Path:
        """AIRFLOW_HOME of the demo/UI (SQLite metadata DB, logs)."""
        return self.home / "airflow"

    def airflow_env(self) -> dict[str, str]:
        """Environment for Airflow processes: connections to the stack, the project's folders."""
        aws_conn = {
            "conn_type": "aws",
            "login": DUMMY_KEY,
            "password": DUMMY_KEY,
            "extra": {
                "endpoint_url": self.aws_url,
                "region_name": REGION,
                "config_kwargs": {"retries": {"mode": "standard", "max_attempts": 10}},
            },
        }
        presto_conn = {
            "conn_type": "presto",
            "host": "127.0.0.1",
            "port": self.presto_port,
            "login": "airflow",
            "schema": "tiny",
            "extra": {"catalog": "tpch", "protocol": "http"},
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
        env.update(
            {
                "AIRFLOW_HOME": str(self.airflow_home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
                "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(aws_conn),
                "AIRFLOW_CONN_PRESTO_DEFAULT": json.dumps(presto_conn),
                "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT)]),
                "AWS_DEFAULT_REGION": REGION,
                "AWS_EC2_METADATA_DISABLED": "true",
                # `airflow standalone` starts its components as `airflow ...` from PATH.
                "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
            }
        )
        return env

    def client(self, service: str) -> Any:
        """A boto3 client for ``service`` on the local endpoint."""
        return boto3.client(
            service,
            endpoint_url=self.aws_url,
            region_name=REGION,
            aws_access_key_id=DUMMY_KEY,
            aws_secret_access_key=DUMMY_KEY,
        )

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", *args],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                start_new_session=True,
            )
        self._procs.append(proc)
        return proc

    def start(self) -> LocalStack:
        """Start both services, wait until they answer, create the bucket."""
        for port, what in ((self.presto_port, "PRESTO_PORT"), (self.aws_port, "AWS_ENDPOINT_PORT")):
            if not _free(port):
                raise RuntimeError(f"port {port} is in use: set {what} to a free port")
        workdir = self.home / "sagemaker"
        shutil.rmtree(workdir, ignore_errors=True)
        presto = self._spawn(
            "presto-standin",
            ["local_stack.presto_standin", "--port", str(self.presto_port),
             "--schemas", self.presto_schemas, "--eager", "tiny"],
        )  # fmt: skip
        aws = self._spawn(
            "aws-endpoint",
            ["local_stack.aws_endpoint", "--port", str(self.aws_port), "--workdir", str(workdir)],
        )
        _wait_until(
            lambda: (
                urllib.request.urlopen(f"{self.aws_url}/_local/health", timeout=2).status == 200
            ),
            "local AWS endpoint",
            60,
            aws,
        )
        presto_info = f"http://127.0.0.1:{self.presto_port}/v1/info"
        _wait_until(
            lambda: urllib.request.urlopen(presto_info, timeout=2).status == 200,
            "Presto stand-in",
            120,
            presto,
        )
        s3 = self.client("s3")
        s3.create_bucket(Bucket=self.bucket)
        return self

    def stop(self) -> None:
        """Terminate what ``start`` started."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._procs.clear()

    def __enter__(self) -> LocalStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def faults(self, spec: dict | None) -> dict:
        """Arm faults on the local endpoint (``None`` clears them); returns what is armed."""
        request = urllib.request.Request(
            f"{self.aws_url}/_local/faults",
            data=json.dumps(spec or {}).encode(),
            method="POST" if spec else "DELETE",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def airflow(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 1800,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """Run an ``airflow`` CLI command against the stack; output is captured."""
        return subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), *args],
            env={**self.airflow_env(), **(extra_env or {})},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def migrate_db(self) -> None:
        """Create/upgrade the SQLite metadata database under ``.local/airflow``."""
        self.airflow_home.mkdir(parents=True, exist_ok=True)
        self.airflow("db", "migrate")
