"""``make ui``: the local stack plus ``airflow standalone``, to click through the DAGs.

The Airflow UI listens on ``AIRFLOW_PORT`` (default 8080); ``airflow standalone`` prints the
login it generated. Ctrl-C stops Airflow and the stack. Trigger ``mlops_tpch_orders_training``
with a logical date in TPC-H's range (1992-01-01 .. 1998-08-02), e.g. 1996-02-29, and set
``sagemaker_check_interval_seconds`` to 2 in the trigger form for snappy local runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from local_stack.stack import LocalStack


def main() -> int:
    """Start the stack and Airflow; block until interrupted."""
    port = os.environ.get("AIRFLOW_PORT", "8080")
    with LocalStack() as stack:
        stack.migrate_db()
        env = {
            **stack.airflow_env(),
            "AIRFLOW__API__PORT": port,
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        }
        print(
            f"Presto stand-in on 127.0.0.1:{stack.presto_port}, local AWS endpoint on "
            f"{stack.aws_url}; Airflow UI on http://127.0.0.1:{port} (Ctrl-C stops everything)",
            flush=True,
        )
        airflow = subprocess.Popen(
            [str(Path(sys.executable).parent / "airflow"), "standalone"], env=env
        )
        try:
            return airflow.wait()
        except KeyboardInterrupt:
            airflow.terminate()
            airflow.wait(timeout=30)
            return 0


if __name__ == "__main__":
    sys.exit(main())
