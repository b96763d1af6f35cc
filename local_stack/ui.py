"""``make ui``: the local stack plus a production-shaped Airflow, to click through the DAGs.

Airflow runs as in production (``local_stack.airflow_services``): API server, scheduler, DAG
processor and triggerer as separate processes, ``LocalExecutor``, PostgreSQL as the metadata
database (data under ``.local/postgres``, kept across starts). The UI and API listen on
``AIRFLOW_PORT`` (default 8080): the API server's port, its base URL and the execution API URL
the task workers call (``[core] execution_api_server_url``, which otherwise defaults to
``http://localhost:8080/execution/``, Airflow 3.3's ``config_templates/config.yml``) all
follow it. Log in as ``admin``: the API server writes the generated password to
``$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated`` (printed path). Trigger
``mlops_tpch_orders_training`` with a logical date in TPC-H's range (1992-01-01 ..
1998-08-02), e.g. 1996-02-29, and set ``sagemaker_check_interval_seconds`` to 2 in the trigger
form for snappy local runs.

Ctrl-C (SIGINT) or SIGTERM stops everything it started: each Airflow component and each service
runs in a process group of its own, and each group is ended; PostgreSQL is stopped with
``pg_ctl stop``. The AWS endpoint's state is kept for the next start (``LOCAL_STACK_CLEAN=1`` or
``make clean`` forgets it).
"""

from __future__ import annotations

import os
import signal
import sys

from local_stack.airflow_services import AirflowServices
from local_stack.stack import LocalStack


def _interrupt(signum: int, frame: object) -> None:
    """SIGINT and SIGTERM unwind ``main`` (KeyboardInterrupt); later signals are ignored so
    that they cannot cut the stack's shutdown short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main() -> int:
    """Start the stack and Airflow; block until Airflow exits or a signal arrives."""
    port = os.environ.get("AIRFLOW_PORT", "8080")
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    stack = LocalStack()
    try:
        with stack, AirflowServices(stack, port=int(port)) as airflow:
            passwords = stack.airflow_home / "simple_auth_manager_passwords.json.generated"
            print(
                f"Presto stand-in on 127.0.0.1:{stack.presto_port}, local AWS endpoint on "
                f"{stack.aws_url}; Airflow UI on {airflow.base_url} (user admin, password in "
                f"{passwords}; logs in {airflow.logs}). Ctrl-C stops everything.",
                flush=True,
            )
            return airflow.wait()
    except KeyboardInterrupt:  # `with` has stopped Airflow, PostgreSQL and the stack
        return 0


if __name__ == "__main__":
    sys.exit(main())
