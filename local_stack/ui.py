"""``make ui``: the local stack plus ``airflow standalone``, to click through the DAGs.

The Airflow UI and API listen on ``AIRFLOW_PORT`` (default 8080): the api-server's port, its
base URL and the execution API URL the task workers call (``[core]
execution_api_server_url``, which otherwise defaults to ``http://localhost:8080/execution/``,
Airflow 3.3's ``config_templates/config.yml``) all follow it. ``airflow standalone`` prints the
login it generated (also in ``$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated``).
Trigger ``mlops_tpch_orders_training`` with a logical date in TPC-H's range (1992-01-01 ..
1998-08-02), e.g. 1996-02-29, and set ``sagemaker_check_interval_seconds`` to 2 in the trigger
form for snappy local runs.

Ctrl-C (SIGINT) or SIGTERM stops everything it started: Airflow and each service run in a
process group of their own, and each group is ended (``LocalStack.stop``). The AWS endpoint's
state is kept for the next start (``LOCAL_STACK_CLEAN=1`` or ``make clean`` forgets it).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from local_stack.stack import LocalStack


def airflow_ui_env(stack: LocalStack, port: str) -> dict[str, str]:
    """Airflow's environment for ``standalone`` on ``port``."""
    base_url = f"http://localhost:{port}"
    return {
        **stack.airflow_env(),
        "AIRFLOW__API__PORT": port,
        "AIRFLOW__API__BASE_URL": base_url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    }


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
        with stack:
            stack.migrate_db()
            print(
                f"Presto stand-in on 127.0.0.1:{stack.presto_port}, local AWS endpoint on "
                f"{stack.aws_url}; Airflow UI on http://localhost:{port} (Ctrl-C stops "
                "everything)",
                flush=True,
            )
            airflow = stack.spawn(
                [str(Path(sys.executable).parent / "airflow"), "standalone"],
                airflow_ui_env(stack, port),
            )
            return airflow.wait()
    except KeyboardInterrupt:  # `with` has stopped the stack
        return 0


if __name__ == "__main__":
    sys.exit(main())
